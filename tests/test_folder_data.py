"""Class-folder datasets (image_folder, text_folder, IMDB's extracted aclImdb/):
format, order, the on-disk cache, each error, real CIFAR-10 and IMDB subsets,
and a killed run on a folder resuming bit-identically."""

import hashlib
import io
import json
import os
import pathlib
import tarfile
import zlib

import numpy as np
import PIL.Image
import pytest

import realdata
from datagen import write_imdb_archive
from runner import run_experiment, summary
from jaxdl.configs import ConfigError, base_config, validate
from jaxdl.data import DataError, folders, load_dataset
from jaxdl.data import text as text_lib
from jaxdl.data.cache import default_cache_dir
from jaxdl.data.sources import load_image_dataset


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch, tmp_path):
  """Each test decodes or reads its cache itself; nothing lands in ~/.cache."""
  monkeypatch.setattr(folders, "_MEMO", type(folders._MEMO)())
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _img(path, array, fmt=None):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  a = np.asarray(array, np.uint8)
  PIL.Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(
      path, format=fmt)
  return a


def _pixels(seed, shape=(6, 5, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def _folder(root, classes=("cat", "ant", "bee"), per_class=(3, 2), shape=(6, 5, 3),
            ext=".png"):
  """root/{train,test}/<class>/<i>.ext with distinct random pixels; returns
  {split: [(relative path, pixels)] in the expected (sorted) read order}."""
  expected = {}
  for split, n in zip(("train", "test"), per_class):
    rows = []
    for c in sorted(classes):
      for i in range(n):
        rel = f"{split}/{c}/{i:02d}{ext}"
        rows.append((rel, c, _img(root / rel, _pixels(zlib.crc32(rel.encode()), shape))))
    expected[split] = rows
  return expected


def _load(root, **kw):
  kw.setdefault("cache_dir", str(root.parent / "cache"))
  return folders.load_image_folder(str(root), **kw)


def _one_line(excinfo, *parts):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  for p in parts:
    assert str(p) in msg, (p, msg)
  return msg


# --------------------------------------------------------------------------
# image_folder: format and order.


def test_png_bmp_exact_jpeg_decoded_sorted_classes(tmp_path):
  root = tmp_path / "data"
  classes = {"zebra": ".png", "Ant": ".bmp", "bee": ".jpg"}  # created out of order
  want = {}
  for split, n in (("train", 3), ("test", 2)):
    for c, ext in classes.items():
      for i in reversed(range(n)):
        a = _pixels(100 * i + len(c), (6, 5, 3))
        _img(root / split / c / f"{i:02d}{ext}", a)
        want[(split, c, i)] = a
  _img(root / "train" / "bee" / "sub" / "00.jpeg", _pixels(7))     # nested: read too
  (root / "train" / "bee" / "notes.txt").write_text("not an image")  # ignored
  (root / "train" / "bee" / ".hidden.png").write_bytes(b"junk")      # ignored
  (root / "train" / ".ipynb_checkpoints").mkdir()                     # not a class

  train, test, info = _load(root)
  # Sorted by name, as Keras and torchvision sort them ('A' < 'b' < 'z').
  assert info == {"num_classes": 3, "input_shape": (6, 5, 3), "name": "image_folder",
                  "class_names": ["Ant", "bee", "zebra"]}
  x, y = train.arrays
  assert x.dtype == np.uint8 and x.shape == (10, 6, 5, 3)
  np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(test.arrays[1], [0, 0, 1, 1, 2, 2])
  for k, (split_x, split) in enumerate(((x, "train"), (test.arrays[0], "test"))):
    n = 3 if split == "train" else 2
    np.testing.assert_array_equal(split_x[0:n], [want[(split, "Ant", i)] for i in range(n)])
    np.testing.assert_array_equal(split_x[-n:], [want[(split, "zebra", i)] for i in range(n)])
  # JPEG is lossy: the arrays are Pillow's decode of each file, in file order.
  bee = [root / "train/bee/00.jpg", root / "train/bee/01.jpg", root / "train/bee/02.jpg",
         root / "train/bee/sub/00.jpeg"]
  np.testing.assert_array_equal(x[3:7], [np.asarray(PIL.Image.open(p)) for p in bee])
  assert train[4]["label"] == 1 and train[4]["inputs"].shape == (6, 5, 3)
  # Through the dataset registry and a config, as training reads it.
  c = base_config()
  c.dataset, c.data_dir, c.cache_dir = "image_folder", str(root), str(tmp_path / "cache")
  tr2, _, info2 = load_dataset(c, str(tmp_path / "w"))
  assert info2 == info
  np.testing.assert_array_equal(tr2.arrays[0], x)


def test_grayscale_images_give_one_channel(tmp_path):
  root = tmp_path / "data"
  expected = _folder(root, shape=(4, 7, 1), ext=".png")
  train, test, info = _load(root)
  assert info["input_shape"] == (4, 7, 1)
  np.testing.assert_array_equal(train.arrays[0], [a for _, _, a in expected["train"]])
  np.testing.assert_array_equal(test.arrays[0], [a for _, _, a in expected["test"]])
  # Forced RGB: three equal planes.
  rgb, _, info = _load(root, color_mode="rgb")
  assert info["input_shape"] == (4, 7, 3)
  np.testing.assert_array_equal(rgb.arrays[0], np.repeat(train.arrays[0], 3, -1))


def test_image_size_resizes_and_color_mode_converts(tmp_path):
  root = tmp_path / "data"
  _folder(root, shape=(6, 5, 3))
  _img(root / "train/ant/big.png", _pixels(1, (12, 10, 3)))
  _img(root / "test/bee/grey.png", _pixels(2, (6, 5, 1)))
  with pytest.raises(DataError):
    _load(root)
  train, test, info = _load(root, image_size=(3, 4), color_mode="rgb")
  assert info["input_shape"] == (3, 4, 3) and train.arrays[0].shape == (10, 3, 4, 3)
  ref = PIL.Image.open(root / "train/ant/big.png").resize((4, 3), PIL.Image.BILINEAR)
  np.testing.assert_array_equal(train.arrays[0][3], np.asarray(ref))  # ant/big after ant/02
  grey, _, info = _load(root, image_size=(3, 4), color_mode="grayscale")
  assert info["input_shape"] == (3, 4, 1)
  # Through load_image_dataset, as the config's fields reach it.
  _, _, info = load_image_dataset("image_folder", str(root), image_size=(5, 5),
                                  color_mode="grayscale", cache_dir="none")
  assert info["input_shape"] == (5, 5, 1)


# --------------------------------------------------------------------------
# The cache.


def _cache_files(d):
  return sorted(p.name for p in pathlib.Path(d).iterdir()) if pathlib.Path(d).exists() else []


def test_cache_is_written_once_and_read_back(tmp_path, monkeypatch):
  root = tmp_path / "data"
  _folder(root)
  cache = tmp_path / "cache"
  a, _, info = _load(root)
  files = _cache_files(cache)
  assert len(files) == 1 and files[0].endswith(".npz")   # no temp file left behind
  # A new process (empty memo) reads the cache: no image is decoded.
  monkeypatch.setattr(folders, "_MEMO", type(folders._MEMO)())
  monkeypatch.setattr(folders, "_decode_all", lambda *a, **k: pytest.fail("decoded again"))
  b, _, info_b = _load(root)
  assert info_b == info
  np.testing.assert_array_equal(a.arrays[0], b.arrays[0])
  np.testing.assert_array_equal(a.arrays[1], b.arrays[1])
  with pytest.raises(ValueError):
    b.arrays[0][0, 0, 0, 0] = 1  # read-only, like every ArraySource


def test_changed_folder_is_never_served_stale(tmp_path):
  root = tmp_path / "data"
  _folder(root)
  cache = tmp_path / "cache"
  before, _, _ = _load(root)
  x0 = before.arrays[0].copy()
  # Same size, new pixels, mtime moved on: decoded again.
  new = _img(root / "train/bee/01.png", 255 - x0[4])
  st = os.stat(root / "train/bee/01.png")
  os.utime(root / "train/bee/01.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  folders._MEMO.clear()
  after, _, _ = _load(root)
  np.testing.assert_array_equal(after.arrays[0][4], new)
  np.testing.assert_array_equal(np.delete(after.arrays[0], 4, 0), np.delete(x0, 4, 0))
  # A file added: one more example; a file removed: one fewer.
  _img(root / "train/cat/99.png", _pixels(5))
  folders._MEMO.clear()
  assert len(_load(root)[0]) == 10
  (root / "train/ant/00.png").unlink()
  folders._MEMO.clear()
  train, _, _ = _load(root)
  assert len(train) == 9 and train.arrays[1].tolist().count(0) == 2
  assert len(_cache_files(cache)) == 1  # one entry per folder, rewritten


def test_cache_location_and_off(tmp_path, monkeypatch):
  root = tmp_path / "data"
  _folder(root)
  assert default_cache_dir() == str(tmp_path / "xdg" / "jaxdl" / "datasets")
  folders.load_image_folder(str(root))                    # '' -> the default
  assert len(_cache_files(tmp_path / "xdg" / "jaxdl" / "datasets")) == 1
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "jaxdl" / "datasets")
  folders._MEMO.clear()
  folders.load_image_folder(str(root), cache_dir="none")  # no cache written
  assert not (tmp_path / "home").exists()
  # An unwritable cache folder (a file in the way) does not stop the load.
  (tmp_path / "blocked").write_text("")
  folders._MEMO.clear()
  train, _, _ = folders.load_image_folder(str(root), cache_dir=str(tmp_path / "blocked"))
  assert len(train) == 9


def test_damaged_cache_entry_is_decoded_again(tmp_path):
  root = tmp_path / "data"
  _folder(root)
  a, _, _ = _load(root)
  (entry,) = (tmp_path / "cache").iterdir()
  entry.write_bytes(entry.read_bytes()[:100])
  folders._MEMO.clear()
  b, _, _ = _load(root)
  np.testing.assert_array_equal(a.arrays[0], b.arrays[0])


def test_worker_processes_decode_the_same_arrays(tmp_path):
  root = tmp_path / "data"
  _folder(root, classes=("a", "b"), per_class=(12, 6), ext=".jpg")
  serial, _, _ = _load(root, cache_dir="none", workers=1)
  folders._MEMO.clear()
  parallel, _, _ = _load(root, cache_dir="none", workers=3)
  np.testing.assert_array_equal(serial.arrays[0], parallel.arrays[0])
  # An error in a worker's share names the file, as in this process.
  (root / "test/b/03.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  folders._MEMO.clear()
  with pytest.raises(DataError) as e:
    _load(root, cache_dir="none", workers=3)
  _one_line(e, root / "test/b/03.jpg", "cannot read image")


# --------------------------------------------------------------------------
# Errors: one line naming the path and the fix.


def _broken(root):
  (root / "train/bee/01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  return root / "train/bee/01.png", "cannot read image"


def _truncated_jpeg(root):
  p = root / "test/cat/00.jpg"
  _img(p, _pixels(3, (32, 32, 3)))
  p.write_bytes(p.read_bytes()[:200])
  return p, "cannot read image"


def _dangling_link(root):
  os.symlink(root / "nowhere.png", root / "train/cat/zz.png")
  return root / "train/cat/zz.png", "cannot read"


def _empty_class(root):
  for p in (root / "test/ant").iterdir():
    p.unlink()
  (root / "test/ant/readme.md").write_text("no images")
  return root / "test/ant", "has no .bmp/.jpeg/.jpg/.png files"


def _class_sets_differ(root):
  (root / "test/dog").mkdir()
  _img(root / "test/dog/00.png", _pixels(1))
  return root, "only in test: dog"


def _mixed_sizes(root):
  _img(root / "train/cat/05.png", _pixels(1, (7, 5, 3)))
  return root / "train/cat/05.png", "--config.image_size=6,5"


def _mixed_modes(root):
  _img(root / "test/bee/09.png", _pixels(1, (6, 5, 1)))
  return root / "test/bee/09.png", "--config.color_mode=rgb"


def _palette(root):
  p = root / "train/ant/00.png"
  PIL.Image.fromarray(_pixels(1)).convert("P").save(p)
  return p, "mode P, neither grayscale (L) nor RGB"


def _no_test_split(root):
  for p in sorted((root / "test").rglob("*"), reverse=True):
    p.unlink() if p.is_file() else p.rmdir()
  (root / "test").rmdir()
  return root / "test", "--config.data_dir"


@pytest.mark.parametrize("breaker", [
    _broken, _truncated_jpeg, _dangling_link, _empty_class, _class_sets_differ,
    _mixed_sizes, _mixed_modes, _palette, _no_test_split])
def test_bad_folder_is_one_line_naming_the_path(breaker, tmp_path):
  root = tmp_path / "data"
  _folder(root)
  path, needle = breaker(root)
  with pytest.raises(DataError) as e:
    _load(root)
  msg = _one_line(e, path, needle)
  assert msg.startswith("image_folder: ")
  assert not _cache_files(tmp_path / "cache")


def test_bad_options_and_missing_folder(tmp_path):
  with pytest.raises(DataError) as e:
    folders.load_image_folder("", cache_dir="none")
  _one_line(e, "--config.data_dir=DIR", "train,test")
  with pytest.raises(DataError) as e:
    folders.load_image_folder(str(tmp_path / "nope"), cache_dir="none")
  _one_line(e, tmp_path / "nope" / "train", "not found")
  c = base_config()
  c.image_size = (32,)
  with pytest.raises(ConfigError, match=r"image_size=\(32,\) must be H,W"):
    validate(c)
  c.image_size, c.color_mode = (32, 32), "cmyk"
  with pytest.raises(ConfigError, match="color_mode='cmyk'"):
    validate(c)


def test_entry_point_prints_one_error_line(tmp_path):
  root = tmp_path / "data"
  _folder(root)
  path, _ = _broken(root)
  r = run_experiment("mnist_mlp", "--config.dataset=image_folder", f"--config.data_dir={root}",
                     f"--config.cache_dir={tmp_path / 'cache'}", "--config.num_steps=2",
                     "--config.num_epochs=0", "--config.tensorboard=False",
                     "--num_cpu_devices=1", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 1
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith("error: image_folder: "), r.stderr[-2000:]
  assert str(path) in err[0]


# --------------------------------------------------------------------------
# text_folder and IMDB's extracted folder.


def _text_folder(root):
  texts = {"sports": ["goal goal match", "the match was won"],
           "arts": ["a painting", "the museum and the painting"],
           "cooking": ["bake the bread", "bread and butter", "soup"]}
  for split in ("train", "test"):
    for c, ts in texts.items():
      for i, t in enumerate(ts):
        p = root / split / c / f"{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{t} {split}")
  return texts


def test_text_folder_labels_order_and_tokenizer(tmp_path):
  root = tmp_path / "text"
  _text_folder(root)
  (root / "train/arts/skip.md").write_text("not a review")
  workdir = tmp_path / "w"
  c = base_config()
  c.dataset, c.data_dir = "text_folder", str(root)
  train, test, info = load_dataset(c, str(workdir))
  assert info == {"num_classes": 3, "vocab_size": 10000, "maxlen": 100,
                  "truncating": "post", "class_names": ["arts", "cooking", "sports"]}
  np.testing.assert_array_equal(train.arrays[1], [0, 0, 1, 1, 1, 2, 2])
  splits, names = text_lib.read_text_folder(str(root))
  assert splits["train"][0][0] == "a painting train" and names == info["class_names"]
  # The same tokenizer path as IMDB: fitted on train, saved, reused.
  tok = text_lib.Tokenizer.load(str(workdir / "tokenizer.json"))
  np.testing.assert_array_equal(
      train.arrays[0], text_lib.pad_sequences([tok.encode(t) for t in splits["train"][0]], 100))
  (root / "test/arts/0.txt").write_text("goal")
  _, test2, _ = text_lib.load_text_folder(str(root), str(workdir), num_words=10000)
  assert test2.arrays[0][0, 0] == tok.encode("goal")[0]


@pytest.mark.parametrize("breaker,needle", [
    (lambda r: os.symlink(r / "gone.txt", r / "train/arts/9.txt") or r / "train/arts/9.txt",
     "cannot read"),
    (lambda r: [p.unlink() for p in (r / "test/soup").glob("*")] and r / "test/soup",
     "has no .txt files"),
    (lambda r: (r / "train/poetry").mkdir() or (r / "train/poetry/0.txt").write_text("x")
     and r, "only in train: poetry"),
])
def test_bad_text_folder_is_one_line(breaker, needle, tmp_path):
  root = tmp_path / "text"
  _text_folder(root)
  (root / "train/soup").mkdir()
  (root / "test/soup").mkdir()
  for s in ("train", "test"):
    (root / s / "soup" / "0.txt").write_text("hot soup")
  path = breaker(root)
  with pytest.raises(DataError) as e:
    text_lib.load_text_folder(str(root), None)
  assert _one_line(e, path, needle).startswith("text_folder: ")


def _extract_all(archive, dest):
  with tarfile.open(archive) as tar:
    tar.extractall(dest, filter="data")


def test_imdb_folder_equals_archive(tmp_path, monkeypatch):
  arch = tmp_path / "arch"
  arch.mkdir()
  _, sha = write_imdb_archive(str(arch / text_lib.IMDB_ARCHIVE), n_per=7)  # shuffled members
  monkeypatch.setitem(text_lib.EXPECTED_SHA256, text_lib.IMDB_ARCHIVE, sha)
  ext = tmp_path / "extracted"
  _extract_all(arch / text_lib.IMDB_ARCHIVE, ext)   # aclImdb/, with train/unsup and more
  kw = dict(num_words=30, maxlen=12)
  a_train, a_test, a_info = text_lib.load_imdb(str(arch), str(tmp_path / "wa"), **kw)
  for data_dir in (ext, ext / "aclImdb"):           # holds aclImdb/, or is it
    f_train, f_test, f_info = text_lib.load_imdb(str(data_dir), str(tmp_path / "wf"),
                                                 source="folder", **kw)
    assert f_info == a_info
    for a, f in ((a_train, f_train), (a_test, f_test)):
      np.testing.assert_array_equal(a.arrays[0], f.arrays[0])
      np.testing.assert_array_equal(a.arrays[1], f.arrays[1])
  assert (tmp_path / "wa/tokenizer.json").read_text() == (
      tmp_path / "wf/tokenizer.json").read_text()
  # The archive path points at the folder when only the folder is there.
  with pytest.raises(DataError, match="--config.imdb_source=folder"):
    text_lib.load_imdb(str(ext), None, **kw)
  with pytest.raises(DataError) as e:
    text_lib.load_imdb(str(arch), None, source="folder", **kw)
  _one_line(e, "aclImdb/{train,test}/{neg,pos}/*.txt", arch, "--config.data_dir")
  (ext / "aclImdb/test/pos").rename(ext / "aclImdb/test/positive")
  with pytest.raises(DataError) as e:
    text_lib.load_imdb(str(ext), None, source="folder", **kw)
  _one_line(e, ext / "aclImdb/test/pos", "neg, pos")
  with pytest.raises(ConfigError, match="imdb_source='zip'"):
    text_lib.load_imdb(str(ext), None, source="zip", **kw)


# --------------------------------------------------------------------------
# Real data: subsets of ../shared/data.


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory):
  return realdata.cifar_subset(tmp_path_factory.mktemp("real"), 200, 50)


def test_real_cifar10_subset(cifar_small, tmp_path):
  train, test, info = folders.load_image_folder(str(cifar_small), cache_dir=str(tmp_path))
  assert info == {"num_classes": 10, "input_shape": (32, 32, 3), "name": "image_folder",
                  "class_names": list(realdata.CIFAR10_CLASSES)}
  x, y = train.arrays
  assert x.shape == (2000, 32, 32, 3) and test.arrays[0].shape == (500, 32, 32, 3)
  assert np.bincount(y).tolist() == [200] * 10
  assert np.bincount(test.arrays[1]).tolist() == [50] * 10
  assert (np.diff(y) >= 0).all()  # class by class, in file order
  np.testing.assert_array_equal(x[200], np.asarray(PIL.Image.open(
      cifar_small / "train/automobile/0000.jpg")))
  np.testing.assert_array_equal(test.arrays[0][-1], np.asarray(PIL.Image.open(
      cifar_small / "test/truck/0049.jpg")))
  # Natural images: mean near CIFAR-10's 120, every channel used.
  assert 100 < x.mean() < 140 and x.std(axis=(0, 1, 2)).min() > 50
  folders._MEMO.clear()
  again, _, _ = folders.load_image_folder(str(cifar_small), cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again.arrays[0], x)


def test_real_imdb_subset_folder_equals_archive(tmp_path, monkeypatch):
  folder = realdata.imdb_subset(tmp_path / "real", n_train=100, n_test=50)
  # The same reviews as an archive, in a shuffled member order.
  names = sorted(str(p.relative_to(folder.parent)) for p in folder.rglob("*.txt"))
  order = np.random.default_rng(0).permutation(len(names))
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for i in order:
      tar.add(folder.parent / names[i], arcname=names[i])
  (tmp_path / text_lib.IMDB_ARCHIVE).write_bytes(buf.getvalue())
  monkeypatch.setitem(text_lib.EXPECTED_SHA256, text_lib.IMDB_ARCHIVE,
                      hashlib.sha256(buf.getvalue()).hexdigest())
  kw = dict(num_words=2000, maxlen=80)
  a_train, a_test, _ = text_lib.load_imdb(str(tmp_path), None, **kw)
  f_train, f_test, info = text_lib.load_imdb(str(folder), None, source="folder", **kw)
  assert info == {"num_classes": 2, "vocab_size": 2000, "maxlen": 80, "truncating": "post"}
  assert len(f_train) == 200 and len(f_test) == 100
  np.testing.assert_array_equal(f_train.arrays[1], [0] * 100 + [1] * 100)  # neg, then pos
  for a, f in ((a_train, f_train), (a_test, f_test)):
    np.testing.assert_array_equal(a.arrays[0], f.arrays[0])
    np.testing.assert_array_equal(a.arrays[1], f.arrays[1])
  # Real reviews: most of the first 80 words are known, padding only at the end.
  ids = f_train.arrays[0]
  assert (ids[:, 0] > 1).mean() > 0.9 and (ids == 1).mean() < 0.2


# --------------------------------------------------------------------------
# Kill and resume on a folder: the same run as an uninterrupted one.


def _records(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [(r["step"], r["split"], r["metrics"]) for r in map(json.loads, lines)]


@pytest.mark.slow
def test_killed_image_folder_run_resumes_bit_identically(tmp_path):
  root = tmp_path / "data"
  _folder(root, classes=("a", "b", "c"), per_class=(20, 6), shape=(8, 8, 3))
  args = ["--config.dataset=image_folder", f"--config.data_dir={root}",
          "--config.model.kwargs.hidden=(16,)", "--config.batch_size=12",
          "--config.num_epochs=0", "--config.num_steps=20", "--config.checkpoint_every=5",
          "--config.eval_every=10", "--config.log_every=5", "--config.tensorboard=False",
          "--config.async_checkpoints=False", "--num_cpu_devices=1"]
  # Reference and killed run decode (each its own cold cache); the resume reads the cache.
  ref = run_experiment("mnist_mlp", *args, f"--config.cache_dir={tmp_path / 'c1'}",
                       f"--workdir={tmp_path / 'ref'}")
  assert ref.returncode == 0, ref.stderr[-3000:]
  wd = tmp_path / "killed"
  cache = f"--config.cache_dir={tmp_path / 'c2'}"
  r = run_experiment("mnist_mlp", *args, cache, f"--workdir={wd}",
                     env={"JAXDL_FAULT_KILL": "step:13"})
  assert r.returncode == -9, r.stderr[-2000:]
  r = run_experiment("mnist_mlp", *args, cache, f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step 10" in r.stdout, r.stdout[-2000:]
  a, b = summary(tmp_path / "ref"), summary(wd)
  assert a["params_sha256"] == b["params_sha256"] and a["eval"] == b["eval"]
  assert _records(wd) == _records(tmp_path / "ref")


@pytest.mark.slow
def test_killed_text_folder_run_resumes_bit_identically(tmp_path):
  root = tmp_path / "data"
  rng = np.random.default_rng(0)
  words = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "dull", "poor"]}
  for split, n in (("train", 24), ("test", 8)):
    for c, ws in words.items():
      for i in range(n):
        p = root / split / c / f"{i:03d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(" ".join(rng.choice(ws + ["the", "film", "was"], size=12)))
  args = ["--flagfile=experiments/flagfiles/imdb_lstm_smoke.flags",
          "--config.dataset=text_folder", f"--config.data_dir={root}",
          "--config.batch_size=8", "--config.num_steps=20", "--config.checkpoint_every=5",
          "--config.eval_every=10", "--config.log_every=5", "--config.tensorboard=False",
          "--config.async_checkpoints=False", "--num_cpu_devices=1"]
  ref = run_experiment("imdb_lstm", *args, f"--workdir={tmp_path / 'ref'}")
  assert ref.returncode == 0, ref.stderr[-3000:]
  wd = tmp_path / "killed"
  r = run_experiment("imdb_lstm", *args, f"--workdir={wd}",
                     env={"JAXDL_FAULT_KILL": "step:13"})
  assert r.returncode == -9, r.stderr[-2000:]
  r = run_experiment("imdb_lstm", *args, f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step 10" in r.stdout, r.stdout[-2000:]
  a, b = summary(tmp_path / "ref"), summary(wd)
  assert a["params_sha256"] == b["params_sha256"] and a["eval"] == b["eval"]
  assert _records(wd) == _records(tmp_path / "ref")
