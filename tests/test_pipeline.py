"""The grain pipeline: order is a function of (seed, epoch), processes split
every global batch, augmentation is deterministic, eval covers the split once."""

import numpy as np

from jaxdl.data import pipeline
from jaxdl.data.sources import ArraySource


def _source(n=50, shape=(6, 6, 1)):
  x = (np.arange(n)[:, None, None, None] * np.ones((1,) + shape)).astype(np.uint8)
  return ArraySource(x, np.arange(n, dtype=np.int32))


def test_each_epoch_is_a_permutation_depending_only_on_seed_and_epoch():
  src = _source()
  tb = pipeline.TrainBatches(src, global_batch_size=10, seed=3)
  assert tb.steps_per_epoch == 5
  epoch0 = np.concatenate([tb(b)["label"] for b in range(5)])
  epoch1 = np.concatenate([tb(b)["label"] for b in range(5, 10)])
  assert sorted(epoch0) == list(range(50)) and sorted(epoch1) == list(range(50))
  assert not np.array_equal(epoch0, epoch1)
  again = pipeline.TrainBatches(src, global_batch_size=10, seed=3)
  np.testing.assert_array_equal(again(7)["label"], tb(7)["label"])
  other = pipeline.TrainBatches(src, global_batch_size=10, seed=4)
  assert not np.array_equal(other(0)["label"], tb(0)["label"])


def test_drop_remainder_per_epoch():
  tb = pipeline.TrainBatches(_source(53), global_batch_size=10, seed=0)
  assert tb.steps_per_epoch == 5
  assert len(tb(4)["label"]) == 10


def test_processes_split_the_same_global_batch():
  src = _source()
  kw = dict(global_batch_size=12, seed=1, crop_padding=1, flip=True)
  whole = pipeline.TrainBatches(src, **kw)
  parts = [pipeline.TrainBatches(src, process_index=p, process_count=3, **kw) for p in range(3)]
  for b in (0, 3, 9):
    ref = whole(b)
    got = [p(b) for p in parts]
    np.testing.assert_array_equal(np.concatenate([g["label"] for g in got]), ref["label"])
    np.testing.assert_array_equal(np.concatenate([g["inputs"] for g in got]), ref["inputs"])


def test_normalise_and_augment():
  src = _source(20, (4, 4, 3))
  tb = pipeline.TrainBatches(src, global_batch_size=20, seed=0, crop_padding=2, flip=True,
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  b = tb(0)
  assert b["inputs"].dtype == np.float32 and b["inputs"].shape == (20, 4, 4, 3)
  # Zero padding shows up in some crops: the minimum is (0 - 0.5) / 0.25.
  assert b["inputs"].min() == -2.0
  np.testing.assert_array_equal(tb(0)["inputs"], b["inputs"])  # deterministic


def test_iterator_state_is_the_batch_position():
  src = _source()
  it = pipeline.train_iterator(src, global_batch_size=10, seed=0, num_batches=12)
  seen = [next(it)["label"] for _ in range(4)]
  state = it.get_state()
  rest = [next(it)["label"] for _ in range(3)]
  it2 = pipeline.train_iterator(src, global_batch_size=10, seed=0, num_batches=12)
  it2.set_state(state)
  for a in rest:
    np.testing.assert_array_equal(next(it2)["label"], a)
  assert len(seen) == 4


def test_eval_batches_cover_the_split_once_with_a_mask():
  src = _source(23)
  labels, masks = [], []
  for b in pipeline.eval_batches(src, global_batch_size=10):
    assert b["inputs"].shape[0] == 10
    labels.append(b["label"])
    masks.append(b["mask"])
  labels, masks = np.concatenate(labels), np.concatenate(masks)
  assert masks.sum() == 23
  np.testing.assert_array_equal(labels[masks == 1], np.arange(23))
