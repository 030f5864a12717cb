"""Image grids (PNG files, TensorBoard images).

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
  grid = make_grid(images, ncols=ncols, padding=padding)
  save_png(path, grid)
  return grid.shape[0], grid.shape[1]


def save_png(path: str, image: Any) -> None:
  """One uint8 (or [0, 1] float) [H, W, C] or [H, W] image as a PNG, atomically."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = to_uint8(image)
  grid = grid[..., None] if grid.ndim == 2 else grid
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  tmp = path + ".tmp"
  img.save(tmp, format="PNG")
  os.replace(tmp, path)  # readers never see a half-written file


def normalize_each(images: Any) -> np.ndarray:
  """Per-image min-max scaling to [0, 1] (for weight filters, which are signed)."""
  x = np.asarray(images, np.float32)
  axes = tuple(range(1, x.ndim))
  lo = x.min(axis=axes, keepdims=True)
  hi = x.max(axis=axes, keepdims=True)
  return (x - lo) / np.maximum(hi - lo, 1e-8)
