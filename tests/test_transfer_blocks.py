"""batches_per_transfer: K steps' batches sent at once, the same run for any K."""

import jax
import numpy as np
import pytest

from conftest import digits_mlp_config
from jaxdl import parallel
from jaxdl.configs import ConfigError
from jaxdl.data import pipeline, sources
from jaxdl.train import loop


def _digits():
  return sources.load_image_dataset("digits", "")[0]


def test_block_iterator_yields_the_plain_batches_and_counts_batches():
  src = _digits()
  plain = pipeline.train_iterator(src, global_batch_size=32, seed=3, num_batches=11)
  blocks = pipeline.train_iterator(src, global_batch_size=32, seed=3, num_batches=11,
                                   batches_per_transfer=4)
  assert isinstance(blocks, pipeline.BlockIterator)
  for b in range(11):
    want = next(plain)
    j, offset, block = blocks.next_block()
    assert (j, offset) == divmod(b, 4)
    assert block["inputs"].shape == (4,) + want["inputs"].shape
    got = pipeline.normalize({k: v[offset] for k, v in block.items()})
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
    blocks.advance()
    assert blocks.get_state() == plain.get_state() == {"next_index": b + 1}
  # Restoring a position inside a block reads that block again.
  blocks.set_state({"next_index": 6})
  plain.set_state({"next_index": 6})
  np.testing.assert_array_equal(next(blocks)["label"], next(plain)["label"])
  assert blocks.get_state() == {"next_index": 7}


def test_uint8_images_travel_as_bytes_and_scale_on_device_exactly():
  fn = pipeline.TrainBatches(_digits(), global_batch_size=32, seed=0)
  it = pipeline.BlockIterator(fn, 3, 9, num_threads=0, prefetch=1)
  block = it.block(1)
  assert block["inputs"].dtype == np.uint8 and block["inputs"].shape[:2] == (3, 32)
  on_device = np.asarray(jax.jit(pipeline.device_unit_scale)(block["inputs"][2]))
  np.testing.assert_array_equal(on_device, fn(5)["inputs"])  # bit for bit
  # With a mean/std (or augmentation) the host normalises, as for K = 1.
  fn = pipeline.TrainBatches(_digits(), global_batch_size=32, seed=0, mean=(0.5,), std=(0.2,))
  block = pipeline.BlockIterator(fn, 3, 9, num_threads=0, prefetch=1).block(1)
  assert block["inputs"].dtype == np.float32
  np.testing.assert_array_equal(block["inputs"][2], fn(5)["inputs"])


@pytest.mark.parametrize("devices", [1, 4])
def test_same_params_for_any_k_and_across_a_resume_inside_a_block(tmp_path, devices):
  mesh = parallel.make_mesh(jax.devices()[:devices])
  cfg = lambda **kw: digits_mlp_config(eval_every=0, checkpoint_every=0, **kw)
  want = loop.train_and_evaluate(cfg(num_steps=30), str(tmp_path / "k1"), mesh=mesh)
  got = loop.train_and_evaluate(cfg(num_steps=30, batches_per_transfer=4),
                                str(tmp_path / "k4"), mesh=mesh)
  assert got["params_sha256"] == want["params_sha256"]
  # Stopped at step 14 (inside block 3: steps 13-16), then resumed to 30.
  first = loop.train_and_evaluate(cfg(num_steps=14, batches_per_transfer=4),
                                  str(tmp_path / "resumed"), mesh=mesh)
  assert first["final_step"] == 14
  resumed = loop.train_and_evaluate(cfg(num_steps=30, batches_per_transfer=4),
                                    str(tmp_path / "resumed"), mesh=mesh)
  assert resumed["resumed_from"] == 14
  assert resumed["params_sha256"] == want["params_sha256"]


def test_bad_batches_per_transfer_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match="batches_per_transfer=0"):
    loop.train_and_evaluate(digits_mlp_config(batches_per_transfer=0), str(tmp_path))
