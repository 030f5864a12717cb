"""The MNIST MLP: Flatten, Dense 128 ReLU, Dropout 0.2, Dense 10."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from jaxdl.models.base import Model, from_flax


class MLP(nn.Module):
  hidden: Sequence[int] = (128,)
  dropout: float = 0.2
  num_classes: int = 10
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype("float32")


def make_mlp(hidden=(128,), dropout=0.2, num_classes=10, dtype="float32") -> Model:
  return from_flax(MLP(tuple(hidden), dropout, num_classes, dtype), name="mlp")


MODELS = {"mlp": make_mlp}

EXAMPLES = {"mlp": ("mnist_mlp", {})}
