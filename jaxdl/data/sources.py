"""Random-access dataset sources, read with numpy (no TensorFlow).

A *source* is what grain's `MapDataset.source` accepts: `len(src)` and
`src[i] -> {'inputs': uint8[H, W, C], 'label': int32 scalar}`. `ArraySource`
also exposes `arrays = (inputs, labels)`, the whole split in memory, so the
pipeline gathers a batch with one fancy index instead of per-example reads.

`load_image_dataset(name, data_dir)` returns `(train, test, info)` for:

  digits         scikit-learn's bundled 8x8 digits; fixed stratified split.
  mnist          the official `*-idx?-ubyte.gz` files in `data_dir`.
  fashion_mnist  same layout as mnist.
  cifar10        the official `cifar-10-binary.tar.gz` in `data_dir`.
  tfds           any tfds dataset already prepared in array_record format.
  image_folder   your own images in `data_dir/{train,test}/<class>/*`
                 (PNG, JPEG, BMP), decoded once and cached on disk; see
                 `jaxdl.data.folders`.

Files are checked against their published sha256 once per process (hashing
is the slow part of a warm start) and parsed arrays are cached per process,
keyed by path and stat, so repeated loads (tests, sweeps) cost nothing.
Anything missing or corrupt raises `DataError` with a one-line message that
names the files, the directory, and `--config.data_dir`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import operator
import os
import tarfile
import zlib
from typing import Any, Sequence

import numpy as np

from jaxdl.data import cache
from jaxdl.data.arrays import ArraySource, _info, _one_line  # noqa: F401 (re-exported)
from jaxdl.data.errors import DataError

# Published sha256 of the official files, keyed by (dataset, filename). Tests
# monkeypatch entries to point at generated files.
KNOWN_SHA256: dict[tuple[str, str], str] = {
    ("mnist", "train-images-idx3-ubyte.gz"):
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ("mnist", "train-labels-idx1-ubyte.gz"):
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ("mnist", "t10k-images-idx3-ubyte.gz"):
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ("mnist", "t10k-labels-idx1-ubyte.gz"):
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ("fashion_mnist", "train-images-idx3-ubyte.gz"):
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"):
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"):
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"):
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ("cifar10", "cifar-10-binary.tar.gz"):
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = ("test_batch.bin",)
CIFAR10_META = "batches.meta.txt"

DIGIT_NAMES = [str(i) for i in range(10)]
FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DATASETS = ("cifar10", "digits", "fashion_mnist", "mnist", "tfds", "image_folder")

_FLAG = "--config.data_dir=DIR"


class TfdsSource:
  """A tfds array_record data source with jaxdl's keys.

  Maps each record's 'image'/'label' to 'inputs' (uint8 [H, W, C]) and
  'label' (int32). Records are decoded on access, so there is no `arrays`
  attribute: the pipeline falls back to per-example reads.
  """

  def __init__(self, data_source: Any, *, name: str = ""):
    self._source = data_source
    self.name = name

  def __len__(self) -> int:
    return len(self._source)

  @staticmethod
  def _convert(record: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"inputs": np.asarray(record["image"], np.uint8),
            "label": np.int32(record["label"])}

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = operator.index(index)
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for {n} examples")
    return self._convert(self._source[i % n])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Batched read (array_record reads many records in one call)."""
    return [self._convert(r)
            for r in self._source.__getitems__([int(i) for i in indices])]

  def __repr__(self) -> str:
    return f"TfdsSource(name={self.name!r}, n={len(self)})"


def _missing_error(dataset: str, files: Sequence[str], data_dir: str,
                   problem: str) -> DataError:
  return DataError(_one_line(
      f"{dataset}: expected {', '.join(files)} in {data_dir} ({problem}); "
      f"download the official files there or pass {_FLAG}"))


def _resolve_dir(dataset: str, files: Sequence[str], data_dir: str | None) -> str:
  if not data_dir:
    raise _missing_error(dataset, files, "<no data_dir given>", "data_dir is empty")
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def _stat_key(path: str) -> tuple:
  st = os.stat(path)
  return (path, st.st_size, st.st_mtime_ns, st.st_ino)


_VERIFIED: set[tuple] = set()


def _verify_sha256(path: str, expected: str) -> str | None:
  """Returns None if the file hashes to `expected`, else the problem.

  Cached per (path, size, mtime, inode, expected): hashing tens of MB is the
  slowest part of a warm load and the file does not change in a run.
  """
  key = _stat_key(path) + (expected,)
  if key in _VERIFIED:
    return None
  with open(path, "rb") as f:
    got = hashlib.file_digest(f, "sha256").hexdigest()
  if got != expected:
    return (f"{os.path.basename(path)}: sha256 {got[:12]}... != expected "
            f"{expected[:12]}..., truncated or not the official file")
  _VERIFIED.add(key)
  return None


class _FormatError(Exception):
  """A file's contents do not parse; the message names the problem."""


# ---------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST)


def _parse_idx(data: bytes, ndim: int) -> np.ndarray:
  """idx format: magic 0x0000 08 ndim (uint8 data), ndim big-endian int32 dims."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise _FormatError(f"bad magic {data[:4].hex() or 'empty'}, not an idx file")
  if data[2] != 0x08 or data[3] != ndim:
    raise _FormatError(f"bad magic 0x{data[:4].hex()}, expected "
                       f"0x000008{ndim:02x} (uint8, {ndim}-d)")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise _FormatError(f"truncated header ({len(data)} bytes)")
  dims = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, 4))
  size = int(np.prod(dims, dtype=np.int64))
  if len(data) - header != size:
    raise _FormatError(f"dims {list(dims)} need {size} bytes of data, file has "
                       f"{len(data) - header} (truncated or corrupt)")
  return np.frombuffer(data, np.uint8, size, header).reshape(dims)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(key: tuple, ndim: int) -> np.ndarray:
  path = key[0]
  try:
    with open(path, "rb") as f:
      data = gzip.decompress(f.read())
  except (OSError, EOFError, zlib.error) as e:
    raise _FormatError(f"gzip: {e}") from e
  return _parse_idx(data, ndim)


def _load_idx_split(dataset: str, d: str, split: str) -> ArraySource:
  files = [f for s in ("train", "test") for f in IDX_FILES[s]]
  arrays = []
  for fname, ndim in zip(IDX_FILES[split], (3, 1)):
    path = os.path.join(d, fname)
    problem = _verify_sha256(path, KNOWN_SHA256[(dataset, fname)])
    if problem:
      raise _missing_error(dataset, files, d, problem)
    try:
      arrays.append(_read_idx_cached(_stat_key(path), ndim))
    except _FormatError as e:
      raise _missing_error(dataset, files, d, f"{fname}: {e}") from None
  images, labels = arrays
  if len(images) != len(labels):
    raise _missing_error(dataset, files, d,
                         f"{IDX_FILES[split][0]} has {len(images)} images but "
                         f"{IDX_FILES[split][1]} has {len(labels)} labels")
  if len(labels) and int(labels.max()) >= 10:
    raise _missing_error(dataset, files, d,
                         f"{IDX_FILES[split][1]}: label {int(labels.max())} > 9")
  return ArraySource(images[..., None], labels, name=f"{dataset}:{split}")


def _load_idx(dataset: str, data_dir: str | None):
  files = [f for s in ("train", "test") for f in IDX_FILES[s]]
  d = _resolve_dir(dataset, files, data_dir)
  missing = [f for f in files if not os.path.isfile(os.path.join(d, f))]
  if missing:
    raise _missing_error(dataset, files, d, f"not found: {', '.join(missing)}")
  train = _load_idx_split(dataset, d, "train")
  test = _load_idx_split(dataset, d, "test")
  shape = train.arrays[0].shape[1:]
  if test.arrays[0].shape[1:] != shape:
    raise _missing_error(dataset, files, d,
                         f"train images are {list(shape)} but test images are "
                         f"{list(test.arrays[0].shape[1:])}")
  names = FASHION_MNIST_NAMES if dataset == "fashion_mnist" else DIGIT_NAMES
  return train, test, _info(dataset, shape, names)


# ---------------------------------------------------------------------------
# CIFAR-10 binary version


_CIFAR_RECORD = 1 + 3 * 32 * 32


def _parse_cifar_batch(name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
  """Records of 1 label byte + 3072 bytes: R, G, B planes of 32x32, row-major."""
  if not data or len(data) % _CIFAR_RECORD:
    raise _FormatError(f"{name}: {len(data)} bytes is not a whole number of "
                       f"{_CIFAR_RECORD}-byte records")
  rec = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
  labels = rec[:, 0].astype(np.int32)
  if int(labels.max()) >= 10:
    raise _FormatError(f"{name}: label {int(labels.max())} > 9")
  images = np.ascontiguousarray(
      rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  return images, labels


@functools.lru_cache(maxsize=4)
def _read_cifar_cached(key: tuple):
  path = key[0]
  wanted = {f"{CIFAR10_DIR}/{n}" for n in
            CIFAR10_TRAIN + CIFAR10_TEST + (CIFAR10_META,)}
  found: dict[str, bytes] = {}
  try:
    # Streaming mode: one pass over the gzip stream, no seeks.
    with tarfile.open(path, "r|gz") as tar:
      for member in tar:
        if member.name in wanted and member.isfile():
          found[member.name] = tar.extractfile(member).read()
  except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
    raise _FormatError(f"{CIFAR10_ARCHIVE}: unreadable tar.gz ({e})") from e
  missing = sorted(wanted - set(found))
  if missing:
    raise _FormatError(f"{CIFAR10_ARCHIVE}: members missing: {', '.join(missing)}")

  def split(names):
    parts = [_parse_cifar_batch(n, found[f"{CIFAR10_DIR}/{n}"]) for n in names]
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]))

  class_names = [line.strip() for line in
                 found[f"{CIFAR10_DIR}/{CIFAR10_META}"].decode("utf-8").splitlines()
                 if line.strip()]
  if len(class_names) != 10:
    raise _FormatError(f"{CIFAR10_META}: {len(class_names)} class names, expected 10")
  return split(CIFAR10_TRAIN), split(CIFAR10_TEST), class_names


def _load_cifar10(data_dir: str | None):
  files = [CIFAR10_ARCHIVE]
  d = _resolve_dir("cifar10", files, data_dir)
  path = os.path.join(d, CIFAR10_ARCHIVE)
  if not os.path.isfile(path):
    raise _missing_error("cifar10", files, d, "not found")
  problem = _verify_sha256(path, KNOWN_SHA256[("cifar10", CIFAR10_ARCHIVE)])
  if problem:
    raise _missing_error("cifar10", files, d, problem)
  try:
    (xtr, ytr), (xte, yte), names = _read_cifar_cached(_stat_key(path))
  except _FormatError as e:
    raise _missing_error("cifar10", files, d, str(e)) from None
  return (ArraySource(xtr, ytr, name="cifar10:train"),
          ArraySource(xte, yte, name="cifar10:test"),
          _info("cifar10", (32, 32, 3), names))


# ---------------------------------------------------------------------------
# scikit-learn digits


def _split_digits() -> dict[str, np.ndarray]:
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  bunch = datasets.load_digits()
  # 17 grey levels 0..16 -> 0..255 (16 -> 255), exact and deterministic.
  x = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
  y = bunch.target.astype(np.int32)
  # Fixed split: 20% test, stratified by class, random_state=0 (1437 / 360).
  xtr, xte, ytr, yte = model_selection.train_test_split(
      x, y, test_size=0.2, random_state=0, stratify=y)
  return {"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte}


@functools.lru_cache(maxsize=2)
def _digits_arrays(cache_dir: str | None) -> dict[str, np.ndarray]:
  """scikit-learn's digits and their fixed split. Importing scikit-learn costs
  a launch about a second, so the split is kept in the dataset cache, under
  scikit-learn's version (a damaged or foreign entry is made again)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  key = (f"digits scikit-learn {importlib.metadata.version('scikit-learn')} "
         "test_size=0.2 random_state=0 stratified")
  path = cache.entry_path(cache_dir, "digits.npz")
  arrays = cache.read(path, key) if path else None
  if arrays is None:
    arrays = _split_digits()
    if path:
      cache.write(path, key, arrays)
  return arrays


def _load_digits(cache_dir: str | None = ""):
  a = _digits_arrays(cache_dir)
  return (ArraySource(a["train_x"], a["train_y"], name="digits:train"),
          ArraySource(a["test_x"], a["test_y"], name="digits:test"),
          _info("digits", (8, 8, 1), DIGIT_NAMES))


# ---------------------------------------------------------------------------
# tfds (array_record, read without TensorFlow)


def _load_tfds(tfds_name: str | None, data_dir: str | None,
               splits: tuple[str, str]):
  data_dir = os.fspath(data_dir) if data_dir else None  # '' = tfds's default
  where = data_dir or "tfds's default data_dir"

  def error(problem):
    return DataError(_one_line(
        f"tfds: expected dataset {tfds_name!r} prepared in array_record format "
        f"in {where} ({problem}); prepare it there with tfds "
        f"(file_format='array_record') or pass {_FLAG}"))

  if not tfds_name:
    raise DataError("tfds: no dataset named; pass --config.tfds_name=NAME, a "
                    "tfds dataset (e.g. mnist) prepared in array_record format")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  sources = []
  for split in splits:
    try:
      ds = tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                            download=False)
    except Exception as e:  # pylint: disable=broad-except
      problem = str(e).split("\n")[0]
      if isinstance(e, NotImplementedError):
        # tfds reports an unprepared dataset as a tfrecord one: say which.
        try:
          prepared = tfds.builder(tfds_name, data_dir=data_dir).is_prepared()
        except Exception:  # pylint: disable=broad-except
          prepared = True
        problem = ("not prepared" if not prepared
                   else "prepared, but not in array_record format")
      elif isinstance(e, (KeyError, ValueError)) and "split" in str(e).lower():
        problem = f"no split {split!r}: {problem}"
      raise error(problem[:300]) from None
    sources.append(ds)

  features = sources[0].dataset_info.features
  keys = list(features.keys())
  if "image" not in keys or "label" not in keys:
    raise error(f"features {keys} lack 'image' and 'label'")
  shape = tuple(features["image"].shape)
  if any(s is None for s in shape):
    raise error(f"image shape {shape} is not fixed; resize the dataset first")
  label = features["label"]
  num_classes = getattr(label, "num_classes", None)
  if num_classes is None:
    raise error(f"label feature {type(label).__name__} is not a ClassLabel")
  train, test = (TfdsSource(s, name=f"tfds:{tfds_name}:{sp}")
                 for s, sp in zip(sources, splits))
  info = _info("tfds", shape, list(label.names), num_classes=int(num_classes))
  info["tfds_name"] = tfds_name
  return train, test, info


# ---------------------------------------------------------------------------


def load_image_dataset(name: str, data_dir: str | None, *,
                       tfds_name: str | None = None,
                       tfds_splits: tuple[str, str] = ("train", "test"),
                       image_size: Sequence[int] | None = None,
                       color_mode: str = "", cache_dir: str | None = ""):
  """Loads an image classification dataset as (train, test, info).

  Args:
    name: one of `DATASETS`: 'digits', 'mnist', 'fashion_mnist', 'cifar10',
      'tfds', 'image_folder'.
    data_dir: directory holding the official files ('mnist', 'fashion_mnist',
      'cifar10'), tfds's data_dir ('tfds'; None = tfds's default), or the
      folder with train/<class>/ and test/<class>/ ('image_folder'). Ignored
      for 'digits', which ships with scikit-learn.
    tfds_name: for name='tfds', the tfds dataset ('mnist', 'cifar10:3.0.2',
      ...) already prepared in array_record format; never downloaded here.
    tfds_splits: for name='tfds', the (train, test) split names.
    image_size, color_mode: for name='image_folder', see
      `jaxdl.data.folders.load_image_folder`.
    cache_dir: the dataset cache ('' = `jaxdl.data.cache.default_cache_dir()`,
      'none' = off): decoded image folders, and the digits split.

  Returns:
    (train, test, info): two sources and
    `{'num_classes', 'input_shape': (H, W, C), 'name', 'class_names'}`.

  Raises:
    DataError: unknown name, or files missing, truncated or corrupt.
  """
  if name == "digits":
    return _load_digits(cache_dir)
  if name in ("mnist", "fashion_mnist"):
    return _load_idx(name, data_dir)
  if name == "cifar10":
    return _load_cifar10(data_dir)
  if name == "tfds":
    return _load_tfds(tfds_name, data_dir, tuple(tfds_splits))
  if name == "image_folder":
    from jaxdl.data import folders  # pylint: disable=g-import-not-at-top
    return folders.load_image_folder(data_dir, image_size=image_size,
                                     color_mode=color_mode, cache_dir=cache_dir)
  raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)} "
                  "(--config.dataset=NAME)")
