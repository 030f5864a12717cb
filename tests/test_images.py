"""PNG grids: sizes, contents, and that Pillow reads them back."""

import numpy as np
import pytest
from PIL import Image

from jaxdl import images


def test_float_grey_grid_png(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.random((64, 28, 28, 1)).astype(np.float32)
  path = str(tmp_path / "sub" / "grid.png")
  h, w = images.save_grid_png(path, x)
  assert (h, w) == (8 * 28 + 9 * 2, 8 * 28 + 9 * 2) == (242, 242)
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == "PNG" and im.mode == "L" and im.size == (w, h)
    a = np.asarray(im)
  # Cell (row 1, col 2) holds image 10, rounded to uint8; the padding is 0.
  np.testing.assert_array_equal(a[2 + 30:2 + 30 + 28, 2 + 60:2 + 60 + 28],
                                np.round(x[10, ..., 0] * 255).astype(np.uint8))
  assert a[0].max() == 0 and a[:, 1].max() == 0


def test_uint8_rgb_grid_with_ncols(tmp_path):
  x = np.zeros((7, 10, 12, 3), np.uint8)
  x[6] = 200
  path = str(tmp_path / "rgb.png")
  h, w = images.save_grid_png(path, x, ncols=3)
  assert (h, w) == (3 * 10 + 4 * 2, 3 * 12 + 4 * 2)
  with Image.open(path) as im:
    assert im.mode == "RGB" and im.size == (w, h)
    a = np.asarray(im)
  assert (a[2 + 2 * 12:2 + 2 * 12 + 10, 2:2 + 12] == 200).all()  # image 6 at row 2, col 0
  assert a[2 + 2 * 12:, 2 + 14:].max() == 0  # the empty cells of the last row


def test_make_grid_values_and_errors():
  g = images.make_grid(np.ones((3, 4, 4)), padding=0)
  assert g.shape == (8, 8, 1) and g.dtype == np.uint8
  assert g[:4, :8].min() == 255 and g[4:, 4:].max() == 0
  with pytest.raises(ValueError):
    images.make_grid(np.zeros((2, 3)))
  np.testing.assert_array_equal(images.to_uint8(np.array([-1.0, 0.5, 2.0])), [0, 128, 255])
  f = images.normalize_each(np.array([[1.0, 3.0], [-2.0, -2.0]]))
  np.testing.assert_allclose(f, [[0.0, 1.0], [0.0, 0.0]])
