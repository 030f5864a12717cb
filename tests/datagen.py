"""Tiny datasets in the official file formats, for tests (the reading code is
the real one). CIFAR-10 and IMDB are not available offline."""

import hashlib
import io
import pathlib
import tarfile

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_cifar10_binary(directory, n_train_per_batch=40, n_test=40, seed=0):
  """`cifar-10-binary.tar.gz` in the official layout; returns its sha256.

  Learnable: the class sets the mean brightness of the red plane.
  """
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, n in [(f"data_batch_{i}.bin", n_train_per_batch) for i in range(1, 6)] + [
        ("test_batch.bin", n_test)]:
      labels = rng.integers(0, 10, n).astype(np.uint8)
      pixels = rng.integers(0, 64, (n, 3, 32, 32)).astype(np.uint8)
      pixels[:, 0] += (labels * 19)[:, None, None].astype(np.uint8)
      _add(tar, f"cifar-10-batches-bin/{name}",
           np.concatenate([labels[:, None], pixels.reshape(n, -1)], 1).tobytes())
    _add(tar, "cifar-10-batches-bin/batches.meta.txt", "\n".join(CIFAR10_CLASSES).encode())
  path = pathlib.Path(directory) / "cifar-10-binary.tar.gz"
  path.write_bytes(buf.getvalue())
  return hashlib.sha256(buf.getvalue()).hexdigest()


POS_WORDS = ["great", "wonderful", "loved", "superb"]
NEG_WORDS = ["awful", "boring", "hated", "dull"]
FILLER = ["the", "movie", "was", "a", "film", "plot", "actor", "scene", "and", "it"]


def imdb_review(rs, label: bool, length: int = 8) -> str:
  words = POS_WORDS if label else NEG_WORDS
  body = " ".join(rs.choice(words + FILLER[:3], size=length))
  return f"The Movie, was: {body}!<br /><br />{words[0].upper()}."


def write_imdb_archive(path, n_per=6, seed=0):
  """`aclImdb_v1.tar.gz` layout (train/test x pos/neg `*.txt`, plus unsup and
  the vocab/url files), members in shuffled order; returns (members, sha256)."""
  rs = np.random.RandomState(seed)
  members = []
  for split in ("train", "test"):
    for lab in ("pos", "neg"):
      for i in range(n_per):
        members.append((f"aclImdb/{split}/{lab}/{i}_{7 + i % 3}.txt",
                        imdb_review(rs, lab == "pos")))
  for i in range(4):
    members.append((f"aclImdb/train/unsup/{i}_0.txt", "unsup zebra zebra"))
  members.append(("aclImdb/imdb.vocab", "the\nmovie\n"))
  members.append(("aclImdb/train/urls_pos.txt", "http://x\n"))
  order = rs.permutation(len(members))
  with tarfile.open(path, "w:gz") as tar:
    for j in order:
      name, content = members[j]
      _add(tar, name, content.encode())
  return members, hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "digits": (8, 8, 1),
                "cifar10": (32, 32, 3), "image_folder": (32, 32, 3)}


def synthetic_dataset(config, n=64, n_test=None, vocab=None, maxlen=None, pad_every=0):
  """(train, test, info) of random uint8 images or token ids shaped like
  `config.dataset` (text: `vocab`/`maxlen` or the config's; every
  `pad_every`-th row padded after 10 tokens)."""
  from jaxdl.data.sources import ArraySource  # pylint: disable=g-import-not-at-top
  from jaxdl.data.text import TextArraySource  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  m = n if n_test is None else n_test
  if config.dataset in IMAGE_SHAPES:
    shape = IMAGE_SHAPES[config.dataset]
    x = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int32)
    info = {"num_classes": 10, "input_shape": shape, "name": config.dataset,
            "class_names": [str(i) for i in range(10)]}
    return ArraySource(x, y), ArraySource(x[:m], y[:m]), info
  vocab = vocab or config.get("num_words", 10000)
  maxlen = maxlen or config.get("maxlen", 100)
  x = rng.integers(1, vocab, (n, maxlen), dtype=np.int32)
  if pad_every:
    x[::pad_every, 10:] = 0
  y = (np.arange(n) % 2).astype(np.int32)
  info = {"num_classes": 2, "vocab_size": vocab, "maxlen": maxlen}
  return TextArraySource(x, y), TextArraySource(x[:m], y[:m]), info
