"""Dataset sources: real MNIST / Fashion-MNIST, digits, generated idx and
CIFAR-10 files, corruption errors, and tfds array_record reading (no TF)."""

import gzip
import hashlib
import io
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
import time

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from jaxdl.data import sources
from jaxdl.data.errors import DataError
from jaxdl.data.sources import ArraySource, load_image_dataset

IDX = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _sha(path):
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _assert_one_line_error(excinfo, *parts):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  assert "--config.data_dir" in msg, msg
  for p in parts:
    assert str(p) in msg, (p, msg)
  return msg


# --------------------------------------------------------------------------
# Real files.


@pytest.mark.parametrize("name, train_sum, test_sum, first, counts", [
    ("mnist", 1567298545, 264923200, [5, 0, 4, 1, 9],
     [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
    ("fashion_mnist", 3431114169, 573469082, [9, 0, 0, 3, 0], [6000] * 10),
])
def test_real_idx_datasets(name, train_sum, test_sum, first, counts,
                           mnist_dir, fashion_mnist_dir):
  d = mnist_dir if name == "mnist" else fashion_mnist_dir
  train, test, info = load_image_dataset(name, d)
  x, y = train.arrays
  assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
  assert y.shape == (60000,) and y.dtype == np.int32
  assert test.arrays[0].shape == (10000, 28, 28, 1) and len(test) == 10000
  assert 0 <= y.min() and y.max() <= 9
  assert int(x.sum(dtype=np.int64)) == train_sum
  assert int(test.arrays[0].sum(dtype=np.int64)) == test_sum
  assert y[:5].tolist() == first
  assert np.bincount(y).tolist() == counts
  ex = train[0]
  assert ex["inputs"].shape == (28, 28, 1) and ex["label"] == first[0]
  assert isinstance(ex["label"], np.int32)
  assert info["num_classes"] == 10 and info["input_shape"] == (28, 28, 1)
  assert info["name"] == name and len(info["class_names"]) == 10
  if name == "fashion_mnist":
    assert info["class_names"][9] == "Ankle boot"


def test_warm_load_is_cached_and_read_only(mnist_dir):
  a, _, _ = load_image_dataset("mnist", mnist_dir)
  t0 = time.perf_counter()
  b, _, _ = load_image_dataset("mnist", mnist_dir)
  assert time.perf_counter() - t0 < 0.1
  assert np.shares_memory(a.arrays[0], b.arrays[0])
  with pytest.raises(ValueError):
    b.arrays[0][0, 0, 0, 0] = 1


def test_real_truncated_download_fails_hash(mnist_dir, tmp_path):
  # Realistic: an interrupted download, checked against the published sha256.
  for f in IDX:
    os.symlink(os.path.join(mnist_dir, f), tmp_path / f)
  os.remove(tmp_path / IDX[1])
  data = pathlib.Path(mnist_dir, IDX[1]).read_bytes()
  (tmp_path / IDX[1]).write_bytes(data[:1000])
  with pytest.raises(DataError) as e:
    load_image_dataset("mnist", str(tmp_path))
  msg = _assert_one_line_error(e, tmp_path, f"{IDX[1]}: sha256")
  assert msg.startswith("mnist: expected train-images-idx3-ubyte.gz, ")


# --------------------------------------------------------------------------
# digits.


def test_digits_split_is_fixed_and_exact(tmp_path):
  cache = str(tmp_path / "cache")
  train, test, info = load_image_dataset("digits", "/ignored", cache_dir=cache)
  assert (len(train), len(test)) == (1437, 360)
  assert train.arrays[0].shape[1:] == (8, 8, 1) and info["input_shape"] == (8, 8, 1)
  # Same split again: from the disk cache, from scikit-learn with the cache
  # off, and after a damaged cache entry (made again).
  entry = tmp_path / "cache" / "digits.npz"
  assert entry.exists()
  for cache_dir, damage in ((cache, False), ("none", False), (cache, True)):
    if damage:
      entry.write_bytes(entry.read_bytes()[:500])
    sources._digits_arrays.cache_clear()
    train2, test2, _ = load_image_dataset("digits", None, cache_dir=cache_dir)
    for s, s2 in ((train, train2), (test, test2)):
      np.testing.assert_array_equal(s.arrays[0], s2.arrays[0])
      np.testing.assert_array_equal(s.arrays[1], s2.arrays[1])
  assert entry.stat().st_size > 500  # rewritten whole
  # Exact scaling 0..16 -> round(v * 255 / 16), all 1797 images kept.
  from sklearn import datasets, model_selection
  bunch = datasets.load_digits()
  levels = {int(round(v * 255 / 16)) for v in range(17)}
  assert set(np.unique(train.arrays[0]).tolist()) <= levels
  assert train.arrays[0].max() == 255
  x = np.round(bunch.images * 255 / 16).astype(np.uint8)[..., None]
  xtr, xte, ytr, yte = model_selection.train_test_split(
      x, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target)
  np.testing.assert_array_equal(train.arrays[0], xtr)
  np.testing.assert_array_equal(test.arrays[1], yte)
  # Stratified: every class has 35..37 test examples.
  counts = np.bincount(test.arrays[1], minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37


def test_cached_digits_load_without_importing_sklearn(tmp_path):
  # What the cache is for: a launch on digits skips scikit-learn's ~1 s import.
  load = (f"from jaxdl.data import sources; "
          f"sources.load_image_dataset('digits', None, cache_dir={str(tmp_path)!r}); "
          "import sys; print('sklearn' in sys.modules)")
  runs = [subprocess.run([sys.executable, "-c", load], capture_output=True, text=True,
                         timeout=120) for _ in range(2)]
  assert [r.stdout.strip() for r in runs] == ["True", "False"], runs[-1].stderr[-2000:]


# --------------------------------------------------------------------------
# Generated idx files.


def _idx_bytes(arr, magic=None):
  arr = np.asarray(arr, np.uint8)
  magic = magic if magic is not None else bytes([0, 0, 8, arr.ndim])
  dims = np.asarray(arr.shape, ">i4").tobytes()
  return magic + dims + arr.tobytes()


def _write_idx_dir(d, monkeypatch, dataset="mnist", n_train=5, n_test=3,
                   override=None):
  """Writes tiny idx.gz files (5x6 images) and registers their hashes."""
  rng = np.random.default_rng(0)
  arrays = {
      IDX[0]: rng.integers(0, 256, (n_train, 5, 6), np.uint8),
      IDX[1]: rng.integers(0, 10, n_train).astype(np.uint8),
      IDX[2]: rng.integers(0, 256, (n_test, 5, 6), np.uint8),
      IDX[3]: rng.integers(0, 10, n_test).astype(np.uint8),
  }
  for f, a in arrays.items():
    raw = (override or {}).get(f)
    payload = gzip.compress(_idx_bytes(a)) if raw is None else raw
    (d / f).write_bytes(payload)
    monkeypatch.setitem(sources.KNOWN_SHA256, (dataset, f), _sha(d / f))
  return arrays


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_generated_idx_reads_back_exactly(dataset, tmp_path, monkeypatch):
  arrays = _write_idx_dir(tmp_path, monkeypatch, dataset)
  train, test, info = load_image_dataset(dataset, str(tmp_path))
  np.testing.assert_array_equal(train.arrays[0], arrays[IDX[0]][..., None])
  np.testing.assert_array_equal(train.arrays[1], arrays[IDX[1]])
  np.testing.assert_array_equal(test.arrays[0], arrays[IDX[2]][..., None])
  np.testing.assert_array_equal(test.arrays[1], arrays[IDX[3]])
  assert info["input_shape"] == (5, 6, 1)
  assert test[2]["label"] == arrays[IDX[3]][2]


def test_each_file_hashed_once_per_process(tmp_path, monkeypatch):
  _write_idx_dir(tmp_path, monkeypatch)
  calls = []
  digest = hashlib.file_digest
  monkeypatch.setattr(sources.hashlib, "file_digest",
                      lambda *a: calls.append(1) or digest(*a))
  load_image_dataset("mnist", str(tmp_path))
  assert len(calls) == 4
  load_image_dataset("mnist", str(tmp_path))
  assert len(calls) == 4
  # A changed file (new mtime) or a different expected hash is checked again.
  os.utime(tmp_path / IDX[0], ns=(1, 1))
  load_image_dataset("mnist", str(tmp_path))
  assert len(calls) == 5
  monkeypatch.setitem(sources.KNOWN_SHA256, ("mnist", IDX[1]), "2" * 64)
  with pytest.raises(DataError, match=f"{IDX[1]}: sha256"):
    load_image_dataset("mnist", str(tmp_path))


def _corrupt(kind, d, monkeypatch):
  """Returns (file that is bad, text its problem must contain)."""
  f = IDX[0]
  rng = np.random.default_rng(1)
  imgs = rng.integers(0, 256, (5, 5, 6), np.uint8)
  if kind == "missing":
    _write_idx_dir(d, monkeypatch)
    os.remove(d / IDX[3])
    return IDX[3], "not found"
  if kind == "wrong_hash":
    _write_idx_dir(d, monkeypatch)
    monkeypatch.setitem(sources.KNOWN_SHA256, ("mnist", f), "0" * 64)
    return f, "sha256"
  if kind == "truncated_gzip":
    raw = gzip.compress(_idx_bytes(imgs))[:-20]
    _write_idx_dir(d, monkeypatch, override={f: raw})  # hash of the cut file
    return f, "gzip"
  if kind == "truncated_data":
    raw = gzip.compress(_idx_bytes(imgs)[:-7])
    _write_idx_dir(d, monkeypatch, override={f: raw})
    return f, "truncated"
  if kind == "bad_magic":
    raw = gzip.compress(_idx_bytes(imgs, magic=bytes([0, 0, 8, 1])))
    _write_idx_dir(d, monkeypatch, override={f: raw})
    return f, "bad magic"
  if kind == "not_idx":
    raw = gzip.compress(b"<html>404 Not Found</html>")
    _write_idx_dir(d, monkeypatch, override={f: raw})
    return f, "bad magic"
  if kind == "count_mismatch":
    raw = gzip.compress(_idx_bytes(imgs[:4]))
    _write_idx_dir(d, monkeypatch, override={f: raw})
    return f, "4 images but"
  if kind == "bad_label":
    raw = gzip.compress(_idx_bytes(np.full(5, 10, np.uint8)))
    _write_idx_dir(d, monkeypatch, override={IDX[1]: raw})
    return IDX[1], "label 10"
  raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "missing", "wrong_hash", "truncated_gzip", "truncated_data", "bad_magic",
    "not_idx", "count_mismatch", "bad_label"])
def test_corrupt_idx_raises_one_line_error(kind, tmp_path, monkeypatch):
  bad, problem = _corrupt(kind, tmp_path, monkeypatch)
  with pytest.raises(DataError) as e:
    load_image_dataset("mnist", str(tmp_path))
  msg = _assert_one_line_error(e, tmp_path, problem, ", ".join(IDX))
  # The problem (in parentheses) names the bad file.
  assert bad in msg.split(" in ", 1)[1], msg


def test_missing_dir_and_no_dir(tmp_path):
  with pytest.raises(DataError) as e:
    load_image_dataset("fashion_mnist", str(tmp_path / "nope"))
  _assert_one_line_error(e, tmp_path / "nope", "not found", *IDX)
  with pytest.raises(DataError) as e:
    load_image_dataset("mnist", None)
  _assert_one_line_error(e, "data_dir")


def test_unknown_name():
  with pytest.raises(DataError, match=r"'imagenet'.*cifar10, digits, "
                     r"fashion_mnist, mnist, tfds"):
    load_image_dataset("imagenet", "/x")


# --------------------------------------------------------------------------
# Generated CIFAR-10 binary archive.

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
               "horse", "ship", "truck"]


def _write_cifar(d, monkeypatch, *, drop=None, batch_bytes=None):
  rng = np.random.default_rng(0)
  chw = {}
  members = {}
  for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)]
                           + ["test_batch.bin"]):
    n = 2 if name != "test_batch.bin" else 3
    imgs = rng.integers(0, 256, (n, 3, 32, 32), np.uint8)  # R, G, B planes
    labels = (np.arange(n) + i) % 10
    chw[name] = (imgs, labels)
    rec = np.concatenate([labels[:, None].astype(np.uint8),
                          imgs.reshape(n, -1)], axis=1)
    members[name] = rec.tobytes()
  members["batches.meta.txt"] = ("\n".join(CIFAR_NAMES) + "\n\n").encode()
  if batch_bytes is not None:
    members["data_batch_3.bin"] = batch_bytes
  path = d / sources.CIFAR10_ARCHIVE
  with tarfile.open(path, "w:gz") as tar:
    for name, data in members.items():
      if name == drop:
        continue
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  monkeypatch.setitem(sources.KNOWN_SHA256, ("cifar10", sources.CIFAR10_ARCHIVE),
                      _sha(path))
  return chw


def test_generated_cifar10_reads_back_exactly(tmp_path, monkeypatch):
  chw = _write_cifar(tmp_path, monkeypatch)
  train, test, info = load_image_dataset("cifar10", str(tmp_path))
  assert info == {"num_classes": 10, "input_shape": (32, 32, 3),
                  "name": "cifar10", "class_names": CIFAR_NAMES}
  train_names = [f"data_batch_{k}.bin" for k in range(1, 6)]
  want_x = np.concatenate([chw[n][0] for n in train_names]).transpose(0, 2, 3, 1)
  want_y = np.concatenate([chw[n][1] for n in train_names])
  assert train.arrays[0].shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(train.arrays[0], want_x)
  np.testing.assert_array_equal(train.arrays[1], want_y)
  # Channel order: pixel (row 4, col 7) of test image 1 is (R, G, B).
  imgs, labels = chw["test_batch.bin"]
  np.testing.assert_array_equal(test[1]["inputs"][4, 7], imgs[1, :, 4, 7])
  assert test[1]["label"] == labels[1] and len(test) == 3


@pytest.mark.parametrize("kind, problem", [
    ("missing", "(not found)"),
    ("wrong_hash", "sha256"),
    ("missing_member", "members missing: cifar-10-batches-bin/data_batch_2.bin"),
    ("short_batch", "data_batch_3.bin: 3072 bytes"),
    ("truncated", "unreadable tar.gz"),
])
def test_corrupt_cifar10_raises_one_line_error(kind, problem, tmp_path, monkeypatch):
  path = tmp_path / sources.CIFAR10_ARCHIVE
  if kind == "missing":
    pass
  elif kind == "missing_member":
    _write_cifar(tmp_path, monkeypatch, drop="data_batch_2.bin")
  elif kind == "short_batch":
    _write_cifar(tmp_path, monkeypatch, batch_bytes=bytes(3072))
  else:
    _write_cifar(tmp_path, monkeypatch)
    if kind == "truncated":
      path.write_bytes(path.read_bytes()[:-200])
    monkeypatch.setitem(sources.KNOWN_SHA256,
                        ("cifar10", sources.CIFAR10_ARCHIVE),
                        _sha(path) if kind == "truncated" else "1" * 64)
  with pytest.raises(DataError) as e:
    load_image_dataset("cifar10", str(tmp_path))
  msg = _assert_one_line_error(e, tmp_path, problem)
  assert msg.startswith("cifar10: expected cifar-10-binary.tar.gz in ")


# --------------------------------------------------------------------------
# ArraySource.


def test_array_source_interface():
  x = np.arange(3 * 2 * 2 * 1, dtype=np.uint8).reshape(3, 2, 2, 1)
  src = ArraySource(x, np.array([2, 0, 1], np.int64), "toy")
  assert len(src) == 3 and src.arrays[1].dtype == np.int32
  ex = src[-1]
  np.testing.assert_array_equal(ex["inputs"], x[2])
  assert ex["label"] == 1 and isinstance(ex["label"], np.int32)
  with pytest.raises(IndexError):
    src[3]
  with pytest.raises(TypeError):
    src[0:2]
  assert x.flags.writeable  # the caller's array is left alone
  copy = pickle.loads(pickle.dumps(src))
  assert not copy.arrays[0].flags.writeable and repr(copy) == repr(src)
  assert "0x" not in repr(src)
  with pytest.raises(ValueError, match="uint8"):
    ArraySource(x.astype(np.float32), np.zeros(3))
  with pytest.raises(ValueError, match="labels"):
    ArraySource(x, np.zeros(2))


# --------------------------------------------------------------------------
# tfds array_record, without TensorFlow.


class JaxdlTinyImages(tfds.core.GeneratorBasedBuilder):
  """6 train / 3 test 4x4x1 images; pixel value = id, label = id % 10."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 4, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=[f"c{i}" for i in range(10)]),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(6)),
            "test": self._generate_examples(range(100, 103))}

  def _generate_examples(self, ids):
    for i in ids:
      # A PIL image, not an ndarray: tfds encodes ndarrays to PNG with
      # tf.image (needs TensorFlow) but stores PIL images via PIL.
      yield i, {"image": PIL.Image.fromarray(np.full((4, 4), i, np.uint8)),
                "label": i % 10}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  JaxdlTinyImages(data_dir=str(d), file_format="array_record").download_and_prepare()
  assert list((d / "jaxdl_tiny_images" / "1.0.0").glob("*.array_record-*"))
  return str(d)


def test_tfds_array_record_source(tfds_dir):
  train, test, info = load_image_dataset("tfds", tfds_dir,
                                         tfds_name="jaxdl_tiny_images")
  assert info == {"num_classes": 10, "input_shape": (4, 4, 1), "name": "tfds",
                  "class_names": [f"c{i}" for i in range(10)],
                  "tfds_name": "jaxdl_tiny_images"}
  assert (len(train), len(test)) == (6, 3)
  assert not hasattr(train, "arrays")
  got = set()
  for i in range(len(test)):
    ex = test[i]
    assert ex["inputs"].shape == (4, 4, 1) and ex["inputs"].dtype == np.uint8
    assert isinstance(ex["label"], np.int32)
    assert np.all(ex["inputs"] == ex["inputs"][0, 0, 0])
    got.add((int(ex["inputs"][0, 0, 0]), int(ex["label"])))
  assert got == {(i, i % 10) for i in range(100, 103)}
  batch = train.__getitems__([0, 5])
  assert [int(b["label"]) for b in batch] == [int(train[0]["label"]),
                                              int(train[5]["label"])]
  assert {int(train[i]["inputs"][0, 0, 0]) for i in range(6)} == set(range(6))
  # Picklable (grain worker processes) and still readable after.
  assert pickle.loads(pickle.dumps(train))[1]["inputs"].shape == (4, 4, 1)
  assert "tensorflow" not in sys.modules


def test_tfds_errors_are_one_line(tfds_dir, tmp_path):
  with pytest.raises(DataError) as e:
    load_image_dataset("tfds", tfds_dir, tfds_name="no_such_dataset_xyz")
  _assert_one_line_error(e, "no_such_dataset_xyz", tfds_dir)
  # Registered but not prepared here (and never downloaded).
  with pytest.raises(DataError) as e:
    load_image_dataset("tfds", str(tmp_path), tfds_name="mnist")
  _assert_one_line_error(e, "not prepared", tmp_path)
  assert not (tmp_path / "downloads").exists()
  with pytest.raises(DataError) as e:
    load_image_dataset("tfds", tfds_dir, tfds_name="jaxdl_tiny_images",
                       tfds_splits=("train", "validation"))
  _assert_one_line_error(e, "'validation'")
  with pytest.raises(DataError, match="tfds_name"):
    load_image_dataset("tfds", tfds_dir)
  assert "tensorflow" not in sys.modules


def test_tfds_mock_data_source(tmp_path):
  # tfds.testing.mock_data fakes `as_data_source` for registered datasets.
  with tfds.testing.mock_data(num_examples=7):
    train, test, info = load_image_dataset("tfds", str(tmp_path),
                                           tfds_name="mnist")
    assert len(train) == 7 and info["input_shape"] == (28, 28, 1)
    ex = train[3]
    assert ex["inputs"].shape == (28, 28, 1) and ex["inputs"].dtype == np.uint8
    assert 0 <= ex["label"] < 10 and isinstance(ex["label"], np.int32)
  assert "tensorflow" not in sys.modules
