"""The CIFAR CNN (Conv 32, MaxPool, Conv 64, MaxPool, Conv 64, Flatten, Dense 64,
Dense 10) and a small CIFAR ResNet with batch norm.

`conv_impl` 'auto' (the default) routes `nn.Conv` and max-pooling through
`jaxdl.ops` on CPU (im2col + one matrix product with a matrix-product
backward, and reshape-max pooling): same layers, same parameters, a faster
lowering on XLA:CPU; other platforms get flax's layers. 'fast' forces the
`jaxdl.ops` path everywhere, 'xla' flax's (`jaxdl.ops.platform`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.models.base import Model, from_flax
from jaxdl.ops import layers


def _ops(conv_impl: str):
  """(Conv class, max_pool) for the chosen lowering."""
  conv, _, max_pool = layers.select(conv_impl, "--config.model.kwargs.conv_impl")
  return conv, max_pool


class CNN(nn.Module):
  features: Sequence[int] = (32, 64, 64)
  dense: int = 64
  num_classes: int = 10
  padding: str = "VALID"
  conv_impl: str = "auto"
  dtype: str | None = None  # None: the compute dtype of the inputs/params

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    conv, max_pool = _ops(self.conv_impl)
    x = x if self.dtype is None else x.astype(self.dtype)
    for i, f in enumerate(self.features):
      x = nn.relu(conv(f, (3, 3), padding=self.padding, dtype=self.dtype)(x))
      if i < len(self.features) - 1:
        x = max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class ResidualBlock(nn.Module):
  features: int
  strides: int = 1
  conv_impl: str = "auto"
  dtype: str | None = None  # None: the compute dtype of the inputs/params

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv, _ = _ops(self.conv_impl)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, dtype=self.dtype,
                             use_fast_variance=False)  # two-pass: no cancellation
    y = conv(self.features, (3, 3), strides=self.strides, use_bias=False, dtype=self.dtype)(x)
    y = nn.relu(norm()(y))
    y = conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = conv(self.features, (1, 1), strides=self.strides, use_bias=False,
               dtype=self.dtype)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR ResNet (He et al. 2016, section 4.2): 6n+2 layers."""
  blocks_per_stage: int = 3
  width: int = 16
  num_classes: int = 10
  conv_impl: str = "auto"
  dtype: str | None = None  # None: the compute dtype of the inputs/params

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv, _ = _ops(self.conv_impl)
    x = conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x if self.dtype is None else x.astype(self.dtype))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             dtype=self.dtype, use_fast_variance=False)(x))
    for stage in range(3):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(self.width * 2**stage, strides, self.conv_impl,
                          self.dtype)(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def make_cnn(features=(32, 64, 64), dense=64, num_classes=10, padding="VALID",
             conv_impl="auto", dtype=None) -> Model:
  """The Keras CIFAR-10 tutorial CNN; `padding='SAME'` fits small (8x8) images."""
  return from_flax(CNN(tuple(features), dense, num_classes, padding, conv_impl, dtype),
                   name="cnn")


def make_resnet(blocks_per_stage=3, width=16, num_classes=10, conv_impl="auto",
                dtype=None) -> Model:
  return from_flax(ResNet(blocks_per_stage, width, num_classes, conv_impl, dtype),
                   name="resnet")


MODELS = {"cnn": make_cnn, "resnet": make_resnet}

EXAMPLES = {"cnn": ("cifar_cnn", {}),
            "resnet": ("cifar_cnn", {"model.name": "resnet",
                                     "model.kwargs": {"blocks_per_stage": 1}})}
