"""IMDB reading (a generated archive in the real layout), tokenizer, padding."""

import hashlib
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest

from jaxdl.data import text as text_lib
from jaxdl.data.errors import DataError
from datagen import write_imdb_archive

@pytest.fixture
def imdb_dir(tmp_path, monkeypatch):
  d = tmp_path / "data"
  d.mkdir()
  path = d / text_lib.IMDB_ARCHIVE
  write_imdb_archive(str(path))
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  monkeypatch.setitem(text_lib.EXPECTED_SHA256, text_lib.IMDB_ARCHIVE, digest)
  return str(d)


def test_text_to_words_keras_like():
  assert text_lib.text_to_words("Don't STOP!<br />Now... ok,fine") == [
      "don't", "stop", "now", "ok", "fine"]
  assert text_lib.text_to_words(b"A<br/>b") == ["a", "b"]


def test_tokenizer_frequency_ties_oov_and_roundtrip(tmp_path):
  tok = text_lib.Tokenizer(num_words=5).fit(
      ["b a c", "c a d", "a e e e"])
  # counts: a 3, e 3, c 2, b 1, d 1; a before e (first seen); keep 3 words.
  assert tok.words == ["a", "e", "c"]
  assert tok.encode("A e c b zzz") == [2, 3, 4, 1, 1]
  assert max(tok.encode("a e c b d")) < 5
  path = str(tmp_path / "tok.json")
  tok.save(path)
  assert json.load(open(path))["words"] == ["a", "e", "c"]
  back = text_lib.Tokenizer.load(path)
  assert back.num_words == 5 and back.encode("c b a") == tok.encode("c b a")


def test_pad_sequences():
  seqs = [[5, 6, 7, 8], [3], []]
  np.testing.assert_array_equal(
      text_lib.pad_sequences(seqs, 3),
      [[5, 6, 7], [3, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(
      text_lib.pad_sequences(seqs, 3, padding="pre", truncating="pre"),
      [[6, 7, 8], [0, 0, 3], [0, 0, 0]])
  assert text_lib.pad_sequences(seqs, 3).dtype == np.int32


def test_read_archive(imdb_dir):
  splits = text_lib.read_imdb_archive(imdb_dir)
  assert set(splits) == {"train", "test"}
  for texts, labels in splits.values():
    assert len(texts) == 12 and labels.dtype == np.int32
    assert labels.sum() == 6  # pos = 1, unsup ignored
    for t, l in zip(texts, labels):
      assert ("GREAT" in t) == bool(l) and ("AWFUL" in t) != bool(l)
    assert not any("zebra" in t for t in texts)


def test_load_imdb_end_to_end(imdb_dir, tmp_path):
  workdir = str(tmp_path / "work")
  train, test, info = text_lib.load_imdb(imdb_dir, workdir, num_words=12,
                                         maxlen=10)
  assert info == {"num_classes": 2, "vocab_size": 12, "maxlen": 10, "truncating": "post"}
  assert len(train) == 12 and len(test) == 12
  ex = train[0]
  assert ex["inputs"].shape == (10,) and ex["inputs"].dtype == np.int32
  assert ex["label"].dtype == np.int32 and ex["label"].shape == ()
  inputs, labels = train.arrays
  assert inputs.shape == (12, 10) and inputs.max() < 12
  # Every review starts "the movie was", the three most frequent words.
  tok = text_lib.Tokenizer.load(os.path.join(workdir, "tokenizer.json"))
  assert set(tok.words[:3]) == {"the", "movie", "was"}
  np.testing.assert_array_equal(inputs[:, :3], inputs[:1, :3].repeat(12, 0))
  # The saved tokenizer is reused (not refitted, not rewritten).
  mtime = os.path.getmtime(os.path.join(workdir, "tokenizer.json"))
  train2, _, _ = text_lib.load_imdb(imdb_dir, workdir, num_words=12,
                                    maxlen=10)
  np.testing.assert_array_equal(train2.arrays[0], inputs)
  assert os.path.getmtime(os.path.join(workdir, "tokenizer.json")) == mtime
  with pytest.raises(ValueError, match="num_words"):
    text_lib.load_imdb(imdb_dir, workdir, num_words=50, maxlen=10)


def test_tokenizer_fitted_on_train_only(imdb_dir, tmp_path, monkeypatch):
  d = tmp_path / "d2"
  d.mkdir()
  path = d / text_lib.IMDB_ARCHIVE
  with tarfile.open(path, "w:gz") as tar:
    for name, content in [("aclImdb/train/pos/0_9.txt", "alpha alpha"),
                          ("aclImdb/train/neg/0_1.txt", "beta"),
                          ("aclImdb/test/pos/0_9.txt", "gamma gamma gamma"),
                          ("aclImdb/test/neg/0_1.txt", "gamma alpha")]:
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content.encode()))
  monkeypatch.setitem(text_lib.EXPECTED_SHA256, text_lib.IMDB_ARCHIVE,
                      hashlib.sha256(path.read_bytes()).hexdigest())
  train, test, _ = text_lib.load_imdb(str(d), None, num_words=10, maxlen=4)
  np.testing.assert_array_equal(train.arrays[0], [[3, 0, 0, 0],
                                                  [2, 2, 0, 0]])
  np.testing.assert_array_equal(train.arrays[1], [0, 1])  # neg sorts first
  np.testing.assert_array_equal(test.arrays[0], [[1, 2, 0, 0],
                                                 [1, 1, 1, 0]])


def _one_line_naming_everything(msg, directory):
  assert "\n" not in msg
  assert text_lib.IMDB_ARCHIVE in msg
  assert directory in msg
  assert "--config.data_dir" in msg


def test_missing_archive_raises(tmp_path):
  with pytest.raises(DataError) as e:
    text_lib.load_imdb(str(tmp_path), None)
  _one_line_naming_everything(str(e.value), str(tmp_path))


def test_bad_sha_raises(imdb_dir, monkeypatch):
  monkeypatch.setitem(text_lib.EXPECTED_SHA256, text_lib.IMDB_ARCHIVE,
                      "0" * 64)
  with pytest.raises(DataError, match="corrupt") as e:
    text_lib.read_imdb_archive(imdb_dir)
  _one_line_naming_everything(str(e.value), imdb_dir)


def test_official_hash_rejects_generated_archive(tmp_path):
  write_imdb_archive(str(tmp_path / text_lib.IMDB_ARCHIVE))
  with pytest.raises(DataError, match="sha256"):
    text_lib.read_imdb_archive(str(tmp_path))


def test_truncated_archive_raises(tmp_path, monkeypatch):
  path = tmp_path / text_lib.IMDB_ARCHIVE
  write_imdb_archive(str(path), n_per=20)
  data = path.read_bytes()[:-200]
  path.write_bytes(data)
  monkeypatch.setitem(text_lib.EXPECTED_SHA256, text_lib.IMDB_ARCHIVE,
                      hashlib.sha256(data).hexdigest())
  with pytest.raises(DataError, match="unreadable") as e:
    text_lib.read_imdb_archive(str(tmp_path))
  _one_line_naming_everything(str(e.value), str(tmp_path))


def test_tfds_source_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=7,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    train, test, info = text_lib.load_imdb(None, str(tmp_path),
                                           num_words=20, maxlen=6,
                                           source="tfds")
  assert len(train) == 7 and len(test) == 7
  inputs, labels = train.arrays
  assert inputs.shape == (7, 6) and inputs.dtype == np.int32
  assert set(np.unique(labels)) <= {0, 1}
  assert inputs.max() < 20 and (inputs[:, 0] > 0).all()
  assert os.path.exists(tmp_path / "tokenizer.json")
  assert info["vocab_size"] == 20


def test_tfds_not_prepared_raises(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError, match="--config.data_dir") as e:
    text_lib.load_imdb(str(tmp_path), None, source="tfds")
  assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_text_array_source_protocol():
  src = text_lib.TextArraySource(np.arange(12).reshape(4, 3),
                                 np.array([0, 1, 1, 0]), name="t")
  assert len(src) == 4 and src[np.int64(2)]["inputs"].tolist() == [6, 7, 8]
  with pytest.raises(ValueError):
    src.arrays[0][0, 0] = 5  # read-only
  with pytest.raises(TypeError):
    src[1:2]  # pylint: disable=pointless-statement
  back = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(back.arrays[0], src.arrays[0])
  assert repr(back) == repr(src)
  assert repr(src) == "TextArraySource(name='t', n=4, inputs=int32[3])"
  with pytest.raises(ValueError):
    text_lib.TextArraySource(np.zeros((3, 2)), np.zeros(2))


def test_works_as_grain_source():
  grain = pytest.importorskip("grain")
  src = text_lib.TextArraySource(np.arange(10).reshape(5, 2), np.arange(5))
  ds = grain.MapDataset.source(src).batch(2)
  first = ds[0]
  np.testing.assert_array_equal(first["inputs"], [[0, 1], [2, 3]])
  np.testing.assert_array_equal(first["label"], [0, 1])


def test_pre_truncation_keeps_each_texts_end_and_pads_after(tmp_path):
  """truncating='pre' (Keras' default) keeps the last maxlen ids; padding
  stays 'post' so the LSTM's lengths still see real tokens first."""
  from jaxdl.data import text  # pylint: disable=g-import-not-at-top
  splits = {"train": (["a b c d e f", "a b"], np.array([0, 1], np.int32)),
            "test": (["c d e f", "f"], np.array([1, 0], np.int32))}
  post = text.tokenize_splits(splits, None, num_words=100, maxlen=3, name="t")
  pre = text.tokenize_splits(splits, None, num_words=100, maxlen=3, name="t",
                             truncating="pre")
  tok = text.Tokenizer(100).fit(splits["train"][0])
  ids = tok.encode("a b c d e f")
  np.testing.assert_array_equal(post["train"].arrays[0][0], ids[:3])
  np.testing.assert_array_equal(pre["train"].arrays[0][0], ids[-3:])
  np.testing.assert_array_equal(pre["test"].arrays[0][1], [tok.encode("f")[0], 0, 0])


def test_bad_truncating_is_a_config_error():
  from jaxdl import configs  # pylint: disable=g-import-not-at-top
  c = configs.base_config()
  c.truncating = "middle"
  with pytest.raises(configs.ConfigError, match="truncating='middle'"):
    configs.validate(c)


@pytest.mark.parametrize("damage", ["torn", "flipped_bit"])
def test_damaged_tokenizer_is_refitted_identically(damage, tmp_path, capsys):
  # A resume reads workdir/tokenizer.json: a torn file once gave a 48-line
  # JSONDecodeError, a flipped bit silently other token ids.
  texts = ["the movie was great", "an awful dull movie", "great acting, great story"]
  splits = {"train": (texts, np.array([1, 0, 1])), "test": (texts[:1], np.array([1]))}
  kw = dict(num_words=8, maxlen=6, name="t")
  want = text_lib.tokenize_splits(splits, str(tmp_path), **kw)["train"].arrays[0]
  path = tmp_path / "tokenizer.json"
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2] if damage == "torn" else raw.replace(b"movie", b"movhe"))
  with pytest.raises(DataError, match=r"tokenizer.json is damaged") as e:
    text_lib.Tokenizer.load(str(path))
  assert "\n" not in str(e.value)
  got = text_lib.tokenize_splits(splits, str(tmp_path), **kw)["train"].arrays[0]
  np.testing.assert_array_equal(got, want)
  assert "tokenizer.json is damaged" in capsys.readouterr().err
  text_lib.Tokenizer.load(str(path))  # rewritten whole
