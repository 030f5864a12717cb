"""Class-folder datasets, laid out as Keras, torchvision and tfds read them.

    DIR/train/<class>/...    DIR/test/<class>/...

The classes are the sub-folders of each split in sorted name order (label i is
the i-th name, as in Keras' `image_dataset_from_directory` and torchvision's
`ImageFolder`); the files of a class are read in sorted path order (files in
its sub-folders included, as both do), so the arrays, and with them a run's
data order, are a function of the folder's contents alone. Names starting with
'.' (.DS_Store, .ipynb_checkpoints) are skipped; files with other extensions
are ignored, as Keras and torchvision ignore them.

`load_image_folder` decodes the images (PNG, JPEG, BMP) once with Pillow into
uint8 [N, H, W, C] and caches the arrays on disk, one .npz per folder and
options, written atomically. The cache entry records a digest of the listing
(relative paths, sizes, mtimes), so a folder that changed is decoded again,
never served stale. `jaxdl.data.text` reads text folders through
`list_class_folders`.

A layout problem, an unreadable file, or images that don't agree in size or
colour mode raise `DataError`: one line naming the path and the fix.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from jaxdl.data import cache
from jaxdl.data.errors import DataError
from jaxdl.data.arrays import ArraySource, _info, _one_line

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png")
COLOR_MODES = ("", "grayscale", "rgb")
CACHE_FORMAT = 1  # bump when the decoded arrays of the same files would change

# Below this many images, starting worker processes costs more than it saves.
_POOL_MIN_IMAGES = 4096


def _error(dataset: str, problem: str) -> DataError:
  return DataError(_one_line(f"{dataset}: {problem}"))


def _layout(root: str, extensions: Sequence[str]) -> str:
  exts = "|".join(e.lstrip(".") for e in extensions)
  return f"{root}/{{train,test}}/<class>/*.{{{exts}}}"


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """What `list_class_folders` found: files in read order, labels, a digest."""
  root: str
  class_names: tuple[str, ...]
  paths: dict[str, list[str]]        # split -> absolute paths, in order
  labels: dict[str, np.ndarray]      # split -> int32 [N]
  digest: str                        # sha256 of (relative path, size, mtime) of every file


def _class_files(dataset: str, class_dir: str, extensions: tuple[str, ...]
                 ) -> list[tuple[str, str, os.stat_result]]:
  """(path relative to the class folder, absolute path, stat) of its files, sorted.

  Sub-folders are walked (not followed when they are links, as in Keras);
  the order is by relative path, with '/' sorting before any other character
  so that a folder's files stay together.
  """
  found = []

  def walk(d: str, prefix: str):
    try:
      entries = list(os.scandir(d))
    except OSError as e:
      raise _error(dataset, f"cannot list {d} ({e.strerror}); check its "
                   "permissions") from None
    for e in entries:
      if e.name.startswith("."):
        continue
      if e.is_dir(follow_symlinks=False):
        walk(e.path, f"{prefix}{e.name}\0")
      elif e.name.lower().endswith(extensions):
        try:
          st = e.stat()
        except OSError as err:
          raise _error(dataset, f"cannot read {e.path} ({err.strerror}); replace or "
                       "remove the file") from None
        found.append((prefix + e.name, e.path, st))

  walk(class_dir, "")
  found.sort(key=lambda f: f[0])
  return [(rel.replace("\0", "/"), path, st) for rel, path, st in found]


def list_class_folders(dataset: str, data_dir: str | None,
                       extensions: Sequence[str], *,
                       classes: Sequence[str] | None = None) -> FolderListing:
  """Lists `data_dir/{train,test}/<class>/*` (see the module docstring).

  Args:
    dataset: the name errors start with ('image_folder', 'text_folder', 'imdb').
    data_dir: the folder holding train/ and test/.
    extensions: lower-case file endings to read ('.png', ...).
    classes: read only these class folders (e.g. IMDB's neg and pos: the
      extracted official archive also has train/unsup); each must exist.
      None: every sub-folder is a class.

  Raises:
    DataError: no data_dir, a missing split, an empty class folder, train and
      test with different classes, or a file that cannot be stat'ed.
  """
  if not data_dir:
    raise _error(dataset, f"no data_dir given; pass --config.data_dir=DIR, a folder laid "
                 f"out as {_layout('DIR', extensions)}")
  root = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  digest = hashlib.sha256(f"{CACHE_FORMAT}\0{root}\n".encode())
  found: dict[str, tuple[list[str], list[str], list[int]]] = {}
  for split in SPLITS:
    d = os.path.join(root, split)
    if not os.path.isdir(d):
      raise _error(dataset, f"{d} not found: expected {_layout(root, extensions)}; pass "
                   "--config.data_dir=DIR of a folder with train/ and test/")
    try:
      names = sorted(e.name for e in os.scandir(d)
                     if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
      raise _error(dataset, f"cannot list {d} ({e.strerror})") from None
    if classes is not None:
      missing = [c for c in classes if c not in names]
      if missing:
        raise _error(dataset, f"{os.path.join(d, missing[0])} not found: expected the "
                     f"class folders {', '.join(classes)} in {d}; pass --config.data_dir")
      names = sorted(classes)
    if not names:
      raise _error(dataset, f"{d} has no class folders: expected "
                   f"{_layout(root, extensions)}; pass --config.data_dir")
    paths, labels = [], []
    for label, name in enumerate(names):
      files = _class_files(dataset, os.path.join(d, name), tuple(extensions))
      if not files:
        raise _error(dataset, f"class folder {os.path.join(d, name)} has no "
                     f"{'/'.join(extensions)} files; add some or remove the folder")
      digest.update("".join(f"{split}/{name}/{rel}\0{st.st_size}\0{st.st_mtime_ns}\n"
                            for rel, _, st in files).encode())
      paths += [path for _, path, _ in files]
      labels += [label] * len(files)
    found[split] = (names, paths, labels)
  (train_names, _, _), (test_names, _, _) = found["train"], found["test"]
  if train_names != test_names:
    only_train = sorted(set(train_names) - set(test_names))
    only_test = sorted(set(test_names) - set(train_names))
    diff = "; ".join(
        [f"only in train: {', '.join(only_train)}"] * bool(only_train) +
        [f"only in test: {', '.join(only_test)}"] * bool(only_test))
    raise _error(dataset, f"{root}/train and {root}/test have different class folders "
                 f"({diff}); both splits need the same classes")
  return FolderListing(
      root=root, class_names=tuple(train_names),
      paths={s: found[s][1] for s in SPLITS},
      labels={s: np.asarray(found[s][2], np.int32) for s in SPLITS},
      digest=digest.hexdigest())


# ---------------------------------------------------------------------------
# Image decoding.


_MODE_NAMES = {"L": "grayscale (mode L)", "RGB": "RGB", "1": "black-and-white (mode 1)"}


def _mode_name(mode: str) -> str:
  return _MODE_NAMES.get(mode, f"mode {mode}")


class _Unsupported(Exception):
  pass


def _decode(path: str, color_mode: str, size: tuple[int, int] | None
            ) -> tuple[np.ndarray, str]:
  """uint8 [H, W] (grayscale) or [H, W, 3], and the file's own mode."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    mode = im.mode
    if color_mode:
      im = im.convert("L" if color_mode == "grayscale" else "RGB")
    elif mode == "1":
      im = im.convert("L")
    elif mode not in ("L", "RGB"):
      raise _Unsupported(mode)
    if size and im.size != (size[1], size[0]):
      im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # Keras' default
    return np.asarray(im, np.uint8), mode


def _decode_chunk(paths: Sequence[str], color_mode: str, size: tuple[int, int] | None):
  """Decodes a run of files: (stacked array or None, shapes, modes, error).

  The array is None when the shapes differ (an error either way); error is
  None or (index of the file, problem, its unsupported mode or None).
  """
  arrays, shapes, modes = [], [], []
  for i, path in enumerate(paths):
    try:
      a, mode = _decode(path, color_mode, size)
    except _Unsupported as e:
      return None, shapes, modes, (i, "", str(e))
    except Exception as e:  # pylint: disable=broad-except
      # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
      return None, shapes, modes, (i, f"{type(e).__name__}: {e}", None)
    arrays.append(a)
    shapes.append(a.shape)
    modes.append(mode)
  same = len(set(shapes)) <= 1
  return (np.stack(arrays) if arrays and same else None), shapes, modes, None


def _num_workers(n: int) -> int:
  if n < _POOL_MIN_IMAGES:
    return 1
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, 8, n // (_POOL_MIN_IMAGES // 2)))


def _worker_main(job_path: str, out_path: str) -> None:
  with open(job_path, "rb") as f:
    job = pickle.load(f)
  result = _decode_chunk(*job)
  with open(out_path, "wb") as f:
    pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)


def _decode_all(paths: list[str], color_mode: str, size, workers: int | None):
  """[(start index, `_decode_chunk` result)] over contiguous shares of `paths`.

  With several workers, shares 1.. are decoded by fresh interpreters running
  this module (`python -m jaxdl.data.folders`) while this process decodes
  share 0. Not multiprocessing: fork is unsafe once JAX's threads run, and
  spawn re-imports the caller's __main__ (a script without an
  `if __name__ == '__main__'` guard would recurse). Pillow holds the GIL for
  most of a small image's decode, so threads do not help.
  """
  workers = _num_workers(len(paths)) if workers is None else max(1, workers)
  bounds = np.linspace(0, len(paths), workers + 1).astype(int).tolist()
  shares = [(a, paths[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
  if len(shares) <= 1:
    return [(a, _decode_chunk(p, color_mode, size)) for a, p in shares]
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
  with tempfile.TemporaryDirectory(prefix="jaxdl-decode-") as tmp:
    procs = []
    for k, (_, share) in enumerate(shares[1:]):
      job, out = os.path.join(tmp, f"job{k}"), os.path.join(tmp, f"out{k}")
      with open(job, "wb") as f:
        pickle.dump((share, color_mode, size), f)
      try:
        proc = subprocess.Popen([sys.executable, "-m", "jaxdl.data.folders", job, out],
                                env=env, stdin=subprocess.DEVNULL)
      except OSError as e:
        proc = e
      procs.append((proc, out))
    results = [(shares[0][0], _decode_chunk(shares[0][1], color_mode, size))]
    for (start, share), (proc, out) in zip(shares[1:], procs):
      if isinstance(proc, subprocess.Popen) and proc.wait() == 0:
        with open(out, "rb") as f:
          results.append((start, pickle.load(f)))
      else:  # a worker that did not start or died (memory, signal): decode here
        why = proc if isinstance(proc, OSError) else f"exit status {proc.returncode}"
        logging.warning("image decoding worker failed (%s); decoding its %d files in "
                        "this process", why, len(share))
        results.append((start, _decode_chunk(share, color_mode, size)))
  return results


def _decode_images(dataset: str, paths: list[str], color_mode: str, size,
                   workers: int | None) -> np.ndarray:
  """uint8 [N, H, W, C] of every path, or DataError naming the first bad file."""
  results = _decode_all(paths, color_mode, size, workers)
  first = paths[0]
  ref_shape = ref_mode = None
  fix_mode = "pass --config.color_mode=rgb or --config.color_mode=grayscale to convert every image"
  for start, (_, shapes, modes, err) in results:
    for j, (shape, mode) in enumerate(zip(shapes, modes)):
      path = paths[start + j]
      if ref_shape is None:
        ref_shape, ref_mode = shape, mode
      elif len(shape) != len(ref_shape) or shape[2:] != ref_shape[2:]:
        raise _error(dataset, f"{path} is {_mode_name(mode)} but {first} is "
                     f"{_mode_name(ref_mode)}; {fix_mode}")
      elif shape != ref_shape:
        h, w = ref_shape[:2]
        raise _error(dataset, f"{path} is {shape[0]}x{shape[1]} (HxW) but {first} is "
                     f"{h}x{w}; pass --config.image_size={h},{w} to resize every image "
                     "to one size")
    if err is not None:
      i, problem, mode = err
      path = paths[start + i]
      if mode is not None:
        raise _error(dataset, f"{path} has {_mode_name(mode)}, neither grayscale (L) nor "
                     f"RGB; {fix_mode}")
      raise _error(dataset, f"cannot read image {path} ({problem}); replace or remove "
                   "the file")
  x = np.concatenate([r[0] for _, r in results])
  return x[..., None] if x.ndim == 3 else x


# ---------------------------------------------------------------------------
# The on-disk cache (`jaxdl.data.cache`): one entry per (folder, options), so a
# changed folder overwrites its entry.


def _cache_name(root: str, options: str) -> str:
  return "image_folder-" + hashlib.sha256(f"{root}\0{options}".encode()).hexdigest()[:20] + ".npz"


# Decoded folders of this process, by content key (tests, reference images).
_MEMO: collections.OrderedDict[str, dict[str, np.ndarray]] = collections.OrderedDict()


def _image_size(image_size) -> tuple[int, int] | None:
  if not image_size:
    return None
  size = tuple(int(s) for s in image_size)
  if len(size) != 2 or min(size) < 1:
    raise DataError(f"image_size={tuple(image_size)!r} must be H,W (two positive integers); "
                    "pass e.g. --config.image_size=32,32")
  return size


def load_image_folder(data_dir: str | None, *, image_size: Sequence[int] | None = None,
                      color_mode: str = "", cache_dir: str | None = "",
                      workers: int | None = None
                      ) -> tuple[ArraySource, ArraySource, dict[str, Any]]:
  """(train, test, info) of `data_dir/{train,test}/<class>/*.{png,jpg,jpeg,bmp}`.

  Args:
    data_dir: the folder holding train/ and test/.
    image_size: (H, W) every image is resized to (bilinear) when it differs;
      None / () keeps the stored size, which must then be the same for all.
    color_mode: '' keeps the stored mode, which must be grayscale (C = 1) for
      all or RGB (C = 3) for all; 'grayscale' or 'rgb' converts every image.
    cache_dir: where decoded arrays are kept; '' = `jaxdl.data.cache.default_cache_dir()`,
      'none' or None = no disk cache.
    workers: decoding processes; None = one per CPU for large folders.

  Returns:
    Two `ArraySource`s (uint8 [N, H, W, C], int32 labels) and the info dict
    with the folder names as `class_names`.
  """
  dataset = "image_folder"
  size = _image_size(image_size)
  if color_mode not in COLOR_MODES:
    raise DataError(f"color_mode={color_mode!r}: choose '' (as stored), 'grayscale' or "
                    "'rgb' (--config.color_mode=...)")
  listing = list_class_folders(dataset, data_dir, IMAGE_EXTENSIONS)
  options = f"size={size} color_mode={color_mode!r}"
  key = f"{listing.digest} {options}"
  arrays = _MEMO.get(key)
  path = cache.entry_path(cache_dir, _cache_name(listing.root, options))
  if arrays is None and path:
    arrays = cache.read(path, key)
  if arrays is None:
    paths = listing.paths["train"] + listing.paths["test"]
    x = _decode_images(dataset, paths, color_mode, size, workers)
    n = len(listing.paths["train"])
    arrays = {"class_names": np.array(listing.class_names),
              "train_x": x[:n], "train_y": listing.labels["train"],
              "test_x": x[n:], "test_y": listing.labels["test"]}
    if path:
      cache.write(path, key, arrays)
  _MEMO[key] = arrays
  _MEMO.move_to_end(key)
  while len(_MEMO) > 2:
    _MEMO.popitem(last=False)
  names = [str(s) for s in arrays["class_names"]]
  train = ArraySource(arrays["train_x"], arrays["train_y"], name=f"{dataset}:train")
  test = ArraySource(arrays["test_x"], arrays["test_y"], name=f"{dataset}:test")
  info = _info(dataset, arrays["train_x"].shape[1:], names, num_classes=len(names))
  return train, test, info


if __name__ == "__main__":
  _worker_main(*sys.argv[1:])
