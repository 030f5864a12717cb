"""Text classification as padded token ids: IMDB, text folders, a word tokenizer.

IMDB, three ways in, same result:

* `source='archive'`: the official `aclImdb_v1.tar.gz` (Maas et al. 2011) in
  `data_dir`, sha256-checked, read with `tarfile` (layout
  `aclImdb/{train,test}/{pos,neg}/*.txt`; `train/unsup` is ignored). Reviews
  are read in sorted member-name order so that a run is reproducible whatever
  order the archive stores them in.
* `source='folder'`: that archive already extracted: `data_dir/aclImdb/` or
  `data_dir` itself holding `{train,test}/{pos,neg}/*.txt`, read in the same
  sorted order, so the arrays equal the archive's.
* `source='tfds'`: a prepared `imdb_reviews` (array_record) read through
  `tfds.data_source(..., download=False)`; no TensorFlow needed.

`load_text_folder` reads your own `data_dir/{train,test}/<class>/*.txt` (the
layout of Keras' `text_dataset_from_directory`; classes in sorted name order,
see `jaxdl.data.folders`) through the same tokenizer and padding.

Labels: neg = 0, pos = 1 (as in tfds). The tokenizer is fitted on the train
split only and saved to `workdir/tokenizer.json`; a resumed run or a
prediction job loads it from there, so the token ids never change under a run.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import sys
import tarfile
from typing import Iterable, Sequence

import numpy as np

from jaxdl.data import folders
from jaxdl.data.errors import DataError
from jaxdl.data.sources import ArraySource

IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
# file name -> sha256; tests monkeypatch this for their generated archive.
EXPECTED_SHA256 = {
    IMDB_ARCHIVE:
        "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
}
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"

PAD_ID = 0
OOV_ID = 1
# Keras' Tokenizer default filters: these characters become spaces.
_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
_FILTER_TABLE = str.maketrans({c: " " for c in _FILTERS})
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_MEMBER = re.compile(r"^aclImdb/(train|test)/(pos|neg)/[^/]+\.txt$")


def text_to_words(text: str | bytes) -> list[str]:
  """Lowercase, `<br />` -> space, Keras' punctuation filter, split.

  Apostrophes are kept (as in Keras), so "don't" is one word.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  text = _BR.sub(" ", text.lower())
  return text.translate(_FILTER_TABLE).split()


class Tokenizer:
  """Word-level tokenizer: 0 = padding, 1 = out-of-vocabulary, words from 2.

  `fit` keeps the `num_words - 2` most frequent words, so every id is
  `< num_words` (the embedding's vocab_size). Ties in frequency are broken by
  first occurrence in the training texts (a stable sort of the counts, like
  Keras), which is deterministic given the text order.
  """

  def __init__(self, num_words: int = 10000,
               words: Sequence[str] | None = None):
    if num_words < 3:
      raise ValueError(f"num_words={num_words}: need >= 3 (pad, OOV, a word)")
    self.num_words = num_words
    self.words: list[str] = list(words or [])[:num_words - 2]
    self._index = {w: i + 2 for i, w in enumerate(self.words)}

  def fit(self, texts: Iterable[str | bytes]) -> "Tokenizer":
    counts: collections.Counter = collections.Counter()
    for text in texts:
      counts.update(text_to_words(text))
    # Counter keeps first-insertion order and sorted() is stable.
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    self.words = [w for w, _ in ranked[:self.num_words - 2]]
    self._index = {w: i + 2 for i, w in enumerate(self.words)}
    return self

  @property
  def vocab_size(self) -> int:
    return self.num_words

  def encode(self, text: str | bytes) -> list[int]:
    index = self._index
    return [index.get(w, OOV_ID) for w in text_to_words(text)]

  def _record(self) -> dict:
    return {"num_words": self.num_words, "pad_id": PAD_ID, "oov_id": OOV_ID,
            "words": self.words}

  def save(self, path: str) -> None:
    """Writes JSON atomically (temp + rename: a kill leaves no half file) with
    the sha256 of its content, which `load` verifies."""
    record = self._record()
    record["sha256"] = _sha256_of(record)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(record, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    """The saved tokenizer; DataError (one line) if the file is damaged."""
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
      tok = cls(int(d["num_words"]), d["words"])
    except (ValueError, KeyError, TypeError) as e:
      raise DataError(f"{path} is damaged ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:80]})") from None
    if "sha256" in d and d["sha256"] != _sha256_of(tok._record()):  # (older runs: none)
      raise DataError(f"{path} is damaged (its sha256 does not match its content)")
    return tok


def _sha256_of(record: dict) -> str:
  return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def pad_sequences(sequences: Sequence[Sequence[int]], maxlen: int, *,
                  padding: str = "post", truncating: str = "post",
                  value: int = PAD_ID) -> np.ndarray:
  """[N, maxlen] int32. Unlike Keras (default 'pre'), both default to 'post'.

  Post-padding is what the LSTM's lengths assume (real tokens first); post
  truncation keeps each review's beginning.
  """
  if padding not in ("pre", "post") or truncating not in ("pre", "post"):
    raise ValueError("padding and truncating must be 'pre' or 'post'")
  out = np.full((len(sequences), maxlen), value, np.int32)
  for i, seq in enumerate(sequences):
    seq = list(seq)
    seq = seq[:maxlen] if truncating == "post" else seq[max(len(seq) - maxlen,
                                                            0):]
    if not seq:
      continue
    if padding == "post":
      out[i, :len(seq)] = seq
    else:
      out[i, maxlen - len(seq):] = seq
  return out


class TextArraySource(ArraySource):
  """Random-access source of padded token ids held as two arrays.

  `jaxdl.data.sources.ArraySource` (grain's data source protocol: `len`,
  `src[i] -> {'inputs', 'label'}`, read-only `arrays = (inputs, labels)` for
  bulk access) for int32 [N, maxlen] token ids instead of uint8 images.
  """

  @staticmethod
  def _check_inputs(inputs) -> np.ndarray:
    inputs = np.asarray(inputs, np.int32)
    if inputs.ndim != 2:
      raise ValueError(f"need inputs [N, maxlen], got {list(inputs.shape)}")
    return inputs


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def read_imdb_archive(data_dir: str
                      ) -> dict[str, tuple[list[str], np.ndarray]]:
  """{'train'|'test': (texts, labels int32)} from `data_dir/aclImdb_v1.tar.gz`.

  Raises DataError (one line) when the archive is missing, has the wrong
  sha256, or is not a readable tar.gz in the aclImdb layout.
  """
  path = os.path.join(data_dir, IMDB_ARCHIVE)
  where = (f"expected {IMDB_ARCHIVE} (sha256 {EXPECTED_SHA256[IMDB_ARCHIVE]}, "
           f"from {IMDB_URL}) in {data_dir}; point --config.data_dir at the "
           "directory that holds it")
  if not os.path.isfile(path):
    hint = ""
    if _imdb_folder_root(data_dir):
      hint = ("; or read the extracted aclImdb/ folder found there with "
              "--config.imdb_source=folder")
    raise DataError(f"IMDB archive not found: {where}{hint}")
  digest = _sha256(path)
  if digest != EXPECTED_SHA256[IMDB_ARCHIVE]:
    raise DataError(f"IMDB archive {path} is corrupt (sha256 {digest}): "
                    f"{where}")
  found: dict[str, list[tuple[str, str, int]]] = {"train": [], "test": []}
  try:
    with tarfile.open(path, "r:gz") as tar:
      for member in tar:
        m = _MEMBER.match(member.name)
        if not m or not member.isfile():
          continue
        f = tar.extractfile(member)
        text = f.read().decode("utf-8", errors="replace")
        found[m.group(1)].append((member.name, text, int(m.group(2) == "pos")))
  except (tarfile.TarError, OSError, EOFError) as e:
    msg = " ".join(str(e).split())
    raise DataError(f"IMDB archive {path} is unreadable ({msg}): "
                    f"{where}") from None
  out = {}
  for split, rows in found.items():
    if not rows:
      raise DataError(f"IMDB archive {path} has no aclImdb/{split}/{{pos,neg}}"
                      f"/*.txt reviews: {where}")
    rows.sort(key=lambda r: r[0])
    out[split] = ([r[1] for r in rows], np.array([r[2] for r in rows],
                                                 np.int32))
  return out


def _imdb_folder_root(data_dir: str | None) -> str | None:
  """data_dir/aclImdb, or data_dir itself, when it holds train/ and test/."""
  if not data_dir:
    return None
  d = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  for root in (os.path.join(d, "aclImdb"), d):
    if all(os.path.isdir(os.path.join(root, s)) for s in folders.SPLITS):
      return root
  return None


def read_text_folder(data_dir: str | None, *, dataset: str = "text_folder",
                     classes: Sequence[str] | None = None
                     ) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str]]:
  """({'train'|'test': (texts, labels int32)}, class names) of a text folder.

  `data_dir/{train,test}/<class>/*.txt`, decoded as UTF-8 (bad bytes replaced,
  as the archive reader does). `classes` restricts the class folders read.
  """
  listing = folders.list_class_folders(dataset, data_dir, (".txt",), classes=classes)
  out = {}
  for split in folders.SPLITS:
    texts = []
    for path in listing.paths[split]:
      try:
        with open(path, "rb") as f:
          texts.append(f.read().decode("utf-8", errors="replace"))
      except OSError as e:
        raise DataError(f"{dataset}: cannot read {path} ({e.strerror}); replace or "
                        "remove the file") from None
    out[split] = (texts, listing.labels[split])
  return out, list(listing.class_names)


def read_imdb_folder(data_dir: str | None
                     ) -> dict[str, tuple[list[str], np.ndarray]]:
  """Same as `read_imdb_archive`, from the extracted `aclImdb/` folder.

  `data_dir` holds `aclImdb/` or is that folder; `train/unsup` and the
  other files of the official archive are ignored. Reviews are in sorted
  file-name order (neg, then pos), as `read_imdb_archive` returns them.
  """
  root = _imdb_folder_root(data_dir)
  if root is None:
    where = os.path.abspath(os.path.expanduser(os.fspath(data_dir))) if data_dir else (
        "<no data_dir given>")
    raise DataError(f"imdb: expected an extracted aclImdb/ folder "
                    f"(aclImdb/{{train,test}}/{{neg,pos}}/*.txt) in {where}, or {where} to "
                    "be that folder; point --config.data_dir at it (or pass "
                    f"--config.imdb_source=archive for {IMDB_ARCHIVE})")
  splits, _ = read_text_folder(root, dataset="imdb", classes=("neg", "pos"))
  return splits


def read_imdb_tfds(data_dir: str | None
                   ) -> dict[str, tuple[list[str], np.ndarray]]:
  """Same as `read_imdb_archive`, from a prepared tfds `imdb_reviews`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = {}
  for split in ("train", "test"):
    try:
      source = tfds.data_source("imdb_reviews", split=split,
                                data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for "not prepared"
      msg = " ".join(str(e).split())[:300]
      raise DataError(
          f"tfds imdb_reviews/{split} (array_record) not prepared in "
          f"{data_dir} ({type(e).__name__}: {msg}); prepare it or point "
          "--config.data_dir at the tfds data directory") from None
    texts, labels = [], []
    for i in range(len(source)):
      ex = source[i]
      text = ex["text"]
      texts.append(text.decode("utf-8", errors="replace")
                   if isinstance(text, bytes) else str(text))
      labels.append(int(ex["label"]))
    out[split] = (texts, np.asarray(labels, np.int32))
  return out


def tokenize_splits(splits: dict[str, tuple[list[str], np.ndarray]],
                    workdir: str | None, *, num_words: int, maxlen: int,
                    name: str, truncating: str = "post") -> dict[str, TextArraySource]:
  """{split: TextArraySource of padded token ids} with the run's tokenizer.

  Longer texts keep their first (`truncating='post'`) or last ('pre', Keras'
  default: the end of a review says most about its verdict) `maxlen` ids;
  shorter ones are always post-padded (the LSTM's lengths assume real tokens
  first).

  The tokenizer is `workdir/tokenizer.json` when it exists (resume,
  prediction), else fitted on the train texts and saved there (not saved when
  `workdir` is None).
  """
  tok_path = os.path.join(workdir, "tokenizer.json") if workdir else None
  tokenizer = None
  if tok_path and os.path.exists(tok_path):
    try:
      tokenizer = Tokenizer.load(tok_path)
    except DataError as e:  # refitted below: the same train texts give the same words
      print(f"warning: {e}; fitting it again on the training texts", file=sys.stderr)
    if tokenizer is not None and tokenizer.num_words != num_words:
      raise ValueError(f"{tok_path} has num_words={tokenizer.num_words} but "
                       f"num_words={num_words} was asked: use a fresh workdir")
  if tokenizer is None:
    tokenizer = Tokenizer(num_words).fit(splits["train"][0])
    if tok_path:
      os.makedirs(workdir, exist_ok=True)
      tokenizer.save(tok_path)
  sources = {}
  for split, (texts, labels) in splits.items():
    ids = pad_sequences([tokenizer.encode(t) for t in texts], maxlen,
                        truncating=truncating)
    sources[split] = TextArraySource(ids, labels, name=f"{name}/{split}")
  return sources


def load_imdb(data_dir: str, workdir: str | None, *, num_words: int = 10000,
              maxlen: int = 100, source: str = "archive", truncating: str = "post"
              ) -> tuple[TextArraySource, TextArraySource, dict]:
  """(train, test, info) of padded token ids for IMDB sentiment.

  `source`: 'archive', 'folder' or 'tfds' (see the module docstring). The
  tokenizer is as in `tokenize_splits`. Samples are {'inputs': int32[maxlen],
  'label': int32}.
  """
  readers = {"archive": read_imdb_archive, "folder": read_imdb_folder,
             "tfds": read_imdb_tfds}
  if source not in readers:
    from jaxdl.configs import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"imdb_source={source!r}: choose 'archive', 'folder' or 'tfds' "
                      "(--config.imdb_source=...)")
  sources = tokenize_splits(readers[source](data_dir), workdir, num_words=num_words,
                            maxlen=maxlen, name="imdb", truncating=truncating)
  info = {"num_classes": 2, "vocab_size": num_words, "maxlen": maxlen,
          "truncating": truncating}
  return sources["train"], sources["test"], info


def load_text_folder(data_dir: str, workdir: str | None, *, num_words: int = 10000,
                     maxlen: int = 100, truncating: str = "post"
                     ) -> tuple[TextArraySource, TextArraySource, dict]:
  """(train, test, info) of `data_dir/{train,test}/<class>/*.txt`.

  Labels are the class folders in sorted name order (`info['class_names']`);
  tokenizer and padding as for IMDB (`tokenize_splits`).
  """
  splits, names = read_text_folder(data_dir)
  sources = tokenize_splits(splits, workdir, num_words=num_words, maxlen=maxlen,
                            name="text_folder", truncating=truncating)
  info = {"num_classes": len(names), "vocab_size": num_words, "maxlen": maxlen,
          "truncating": truncating, "class_names": names}
  return sources["train"], sources["test"], info
