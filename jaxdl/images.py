"""Image grids (PNG files, TensorBoard images) and reference images for figures.

Written with Pillow only: no matplotlib, so figures can be produced on any
worker without a display or a plotting stack.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def to_uint8(images: Any) -> np.ndarray:
  """float in [0, 1] (clipped) or uint8 -> uint8, same shape."""
  x = np.asarray(images)
  if x.dtype == np.uint8:
    return x
  return np.round(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def make_grid(images: Any, ncols: int | None = None, padding: int = 2,
              pad_value: int = 0) -> np.ndarray:
  """Tiles [N, H, W, C] (or [N, H, W]) images into one uint8 [H', W', C] image.

  `ncols` defaults to ceil(sqrt(N)), so 64 images make an 8x8 grid. Cells are
  separated (and framed) by `padding` pixels of `pad_value`; empty cells of the
  last row stay `pad_value`. C is 1 or 3 (grey or RGB).
  """
  x = to_uint8(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C] or [N, H, W], got shape {x.shape}")
  n, h, w, c = x.shape
  if n == 0:
    raise ValueError("no images to tile")
  ncols = int(ncols) if ncols else int(math.ceil(math.sqrt(n)))
  ncols = max(1, min(ncols, n))
  nrows = int(math.ceil(n / ncols))
  height = nrows * h + (nrows + 1) * padding
  width = ncols * w + (ncols + 1) * padding
  grid = np.full((height, width, c), pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y0 = padding + r * (h + padding)
    x0 = padding + col * (w + padding)
    grid[y0:y0 + h, x0:x0 + w] = x[i]
  return grid


def save_grid_png(path: str, images: Any, ncols: int | None = None,
                  padding: int = 2) -> tuple[int, int]:
  """Writes `make_grid(images, ncols)` to `path` as PNG; returns (height, width)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = make_grid(images, ncols=ncols, padding=padding)
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  tmp = path + ".tmp"
  img.save(tmp, format="PNG")
  os.replace(tmp, path)  # readers never see a half-written file
  return grid.shape[0], grid.shape[1]


def normalize_each(images: Any) -> np.ndarray:
  """Per-image min-max scaling to [0, 1] (for weight filters, which are signed)."""
  x = np.asarray(images, np.float32)
  axes = tuple(range(1, x.ndim))
  lo = x.min(axis=axes, keepdims=True)
  hi = x.max(axis=axes, keepdims=True)
  return (x - lo) / np.maximum(hi - lo, 1e-8)


def reference_images(config: Any, split: str = "test"
                     ) -> tuple[np.ndarray, np.ndarray] | None:
  """(float32 [N, H, W, C] in [0, 1], int32 labels) of `config.dataset`, or None.

  Tasks whose `on_evaluate` needs real images (reconstruction grids, the FID
  reference and classifier) load them through the project's dataset sources
  from `config.dataset` / `config.data_dir`; None when the config names no
  image dataset.
  """
  name = config.get("dataset", None) if hasattr(config, "get") else None
  if not name:
    return None
  from jaxdl.data import image_options, sources  # pylint: disable=g-import-not-at-top
  train, test, _ = sources.load_image_dataset(name, config.get("data_dir", ""),
                                              **image_options(config))
  src = train if split == "train" else test
  x, y = src.arrays
  x = np.asarray(x)
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  return x.astype(np.float32), np.asarray(y, np.int32)
