"""In-memory array sources and the small helpers every dataset reader shares."""

from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np


class ArraySource:
  """A split held in memory as two arrays: uint8 [N, H, W, C] and int32 [N].

  The arrays are made read-only: loaders share one cached copy per process,
  so a caller writing into a batch view must not corrupt later loads.
  Subclasses hold other kinds of inputs by overriding `_check_inputs`.
  """

  def __init__(self, inputs: np.ndarray, labels: np.ndarray, name: str = ""):
    inputs = self._check_inputs(inputs)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(inputs):
      raise ValueError(f"labels must be [N={len(inputs)}], got "
                       f"{list(labels.shape)}")
    labels = labels.astype(np.int32, copy=False)
    inputs, labels = inputs.view(), labels.view()  # caller's flags untouched
    inputs.flags.writeable = labels.flags.writeable = False
    self.arrays = (inputs, labels)
    self.name = name

  @staticmethod
  def _check_inputs(inputs) -> np.ndarray:
    inputs = np.asarray(inputs)
    if inputs.dtype != np.uint8 or inputs.ndim != 4:
      raise ValueError(f"inputs must be uint8 [N, H, W, C], got "
                       f"{inputs.dtype}{list(inputs.shape)}")
    return inputs

  def __len__(self) -> int:
    return len(self.arrays[1])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = operator.index(index)  # one example; slices are not examples
    inputs, labels = self.arrays
    return {"inputs": inputs[i], "label": labels[i]}

  def __reduce__(self):
    # Rebuild through __init__ so copies in grain workers stay read-only.
    return (type(self), (*self.arrays, self.name))

  def __repr__(self) -> str:
    # Deterministic (no id()): grain's checkpoints record the source's repr.
    x = self.arrays[0]
    return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, "
            f"inputs={x.dtype}{list(x.shape[1:])})")


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _info(name: str, input_shape: Sequence[int], class_names: Sequence[str],
          num_classes: int = 10) -> dict[str, Any]:
  return {"num_classes": num_classes, "input_shape": tuple(int(s) for s in input_shape),
          "name": name, "class_names": list(class_names)}


