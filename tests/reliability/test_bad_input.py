"""Bad input beyond tests/test_experiments.py: more config values, malformed
dataset files (short data, labels out of range, wrong dtype, count mismatch)
and batches whose shape is not the dataset's. Each is one line + exit 1."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

import relutil
from jaxdl import parallel
from jaxdl.configs import ConfigError, base_config
from jaxdl.data import DataError, sources
from jaxdl.train.registry import build_task
from jaxdl.train import loop
from jaxdl.train.engine import Engine

TINY = ["--config.dataset=digits", "--config.num_epochs=0", "--config.num_steps=3",
        "--config.tensorboard=False", "--num_cpu_devices=1"]


@pytest.mark.parametrize("args,needle", [
    (["--config.nonfinite=bogus"], "nonfinite='bogus'"),
    (["--config.eval_every=x"], "eval_every=x"),
    (["positional"], "unexpected arguments"),
    (["--config.model.kwargs.hidden=abc"], "cannot build model 'mlp'"),
    (["--config.batch_size=4000"], "larger than the 1437 training examples"),
])
def test_bad_value_is_one_line(tmp_path, args, needle):
  r = relutil.run("mnist_mlp", *TINY, f"--workdir={tmp_path / 'w'}", *args)
  assert r.returncode != 0
  err = relutil.error_lines(r)
  assert len(err) == 1, r.stderr[-2000:]
  assert err[0].startswith("error: ") and needle in err[0], err
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.parametrize("field,value,needle", [
    ("optimizer.learning_rate", -1.0, "optimizer.learning_rate=-1.0 must be a non-negative"),
    ("keep_checkpoints", 0, "keep_checkpoints=0 must be a positive integer"),
    ("dtype", "float16", "dtype='float16': choose float32 or bfloat16"),
    ("num_steps", -1, "num_steps=-1 must be a non-negative integer"),
    ("log_every", 0, "log_every=0 must be a positive integer"),
    ("seed", -1, "seed=-1 must be a non-negative integer"),
    ("nonfinite", "ignore", "nonfinite='ignore': choose 'stop'"),
])
def test_bad_value_is_refused_before_the_workdir_is_touched(tmp_path, field, value, needle):
  # The same path as the command line, in-process (each case in milliseconds).
  c = base_config()
  c.num_steps = 3
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(ConfigError) as e:
    loop.train_and_evaluate(c, str(tmp_path / "w"))
  assert needle in str(e.value) and "--config." in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "w").exists()


def _idx(dims, data: bytes, dtype_code=0x08) -> bytes:
  return bytes([0, 0, dtype_code, len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + data


def _write_mnist(d, *, n=64, n_test=32, train_images=None, train_labels=None):
  """The four official idx.gz files (generated); returns the sha256 patch."""
  rng = np.random.default_rng(0)
  files = {
      "train-images-idx3-ubyte.gz": train_images if train_images is not None else _idx(
          (n, 28, 28), rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()),
      "train-labels-idx1-ubyte.gz": train_labels if train_labels is not None else _idx(
          (n,), rng.integers(0, 10, n, dtype=np.uint8).tobytes()),
      "t10k-images-idx3-ubyte.gz": _idx(
          (n_test, 28, 28), rng.integers(0, 256, n_test * 784, dtype=np.uint8).tobytes()),
      "t10k-labels-idx1-ubyte.gz": _idx(
          (n_test,), rng.integers(0, 10, n_test, dtype=np.uint8).tobytes()),
  }
  shas = {}
  for name, raw in files.items():
    data = gzip.compress(raw, mtime=0)
    (d / name).write_bytes(data)
    shas[("mnist", name)] = hashlib.sha256(data).hexdigest()
  return {"jaxdl.data.sources:KNOWN_SHA256": shas}


MALFORMED = {
    # the header says 64x28x28, the data stops early
    "short_data": ("train_images", lambda rng: _idx((64, 28, 28), bytes(64 * 784 - 1000)),
                   "train-images-idx3-ubyte.gz: dims [64, 28, 28] need 50176 bytes"),
    "label_out_of_range": ("train_labels", lambda rng: _idx(
        (64,), np.where(np.arange(64) == 5, 12, rng.integers(0, 10, 64)).astype(np.uint8)
        .tobytes()), "train-labels-idx1-ubyte.gz: label 12 > 9"),
    # idx type 0x0D: float32 pixels
    "float_dtype": ("train_images", lambda rng: _idx((64, 28, 28), bytes(64 * 784 * 4), 0x0D),
                    "expected 0x00000803 (uint8, 3-d)"),
    "count_mismatch": ("train_labels", lambda rng: _idx((60,), bytes(60)),
                       "has 64 images but train-labels-idx1-ubyte.gz has 60 labels"),
}


def _patch_shas(monkeypatch, patch):
  for key, sha in patch["jaxdl.data.sources:KNOWN_SHA256"].items():
    monkeypatch.setitem(sources.KNOWN_SHA256, key, sha)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dataset_raises_one_line(tmp_path, monkeypatch, case):
  which, make, needle = MALFORMED[case]
  d = tmp_path / "data"
  d.mkdir()
  _patch_shas(monkeypatch, _write_mnist(d, **{which: make(np.random.default_rng(1))}))
  with pytest.raises(DataError) as e:
    sources.load_image_dataset("mnist", str(d))
  msg = str(e.value)
  assert msg.startswith("mnist: ") and needle in msg and "--config.data_dir" in msg, msg
  assert "\n" not in msg


def test_generated_mnist_files_are_accepted(tmp_path, monkeypatch):
  # The control for the cases above: the same generator, well-formed, loads.
  d = tmp_path / "data"
  d.mkdir()
  _patch_shas(monkeypatch, _write_mnist(d))
  train, test, info = sources.load_image_dataset("mnist", str(d))
  assert len(train) == 64 and len(test) == 32 and info["input_shape"] == (28, 28, 1)


def test_malformed_dataset_from_the_command_line(tmp_path):
  d = tmp_path / "data"
  d.mkdir()
  which, make, needle = MALFORMED["short_data"]
  patch = _write_mnist(d, **{which: make(None)})
  r = relutil.run("mnist_mlp", "--config.dataset=mnist", f"--config.data_dir={d}",
                  "--config.num_epochs=0", "--config.num_steps=3", "--config.batch_size=16",
                  f"--workdir={tmp_path / 'w'}", "--num_cpu_devices=1", patch=patch)
  assert r.returncode == 1, r.stderr[-2000:]
  err = relutil.error_lines(r)
  assert len(err) == 1, r.stderr[-2000:]
  assert err[0].startswith("error: mnist: ") and needle in err[0], err


def test_batch_shape_not_the_datasets_fails_before_compiling():
  c = base_config()
  c.model.name = "mlp"
  c.model.kwargs = {"hidden": (8,)}
  info = {"name": "mnist", "input_shape": (28, 28, 1), "num_classes": 10}
  task = build_task(c, info, 10)
  example = {"inputs": np.zeros((8, 8, 8, 1), np.float32), "label": np.zeros((8,), np.int32)}
  with pytest.raises(DataError) as e:
    Engine(task, parallel.make_mesh(), example)
  msg = str(e.value)
  assert "(8, 8, 1)" in msg and "input_shape (28, 28, 1)" in msg and "\n" not in msg
  ok = {"inputs": np.zeros((8, 28, 28, 1), np.float32), "label": np.zeros((8,), np.int32)}
  Engine(task, parallel.make_mesh(), ok)   # the declared shape compiles


def test_task_rejecting_its_settings_is_one_line(tmp_path, mnist_dir):
  # The DBN needs fine-tuning steps after its 2 x 4000 pretraining steps.
  r = relutil.run("mnist_dbn", f"--config.data_dir={mnist_dir}", "--config.num_epochs=0",
                  "--config.num_steps=100", f"--workdir={tmp_path / 'w'}",
                  "--num_cpu_devices=1")
  assert r.returncode == 1
  err = relutil.error_lines(r)
  assert len(err) == 1, r.stderr[-2000:]
  assert err[0].startswith("error: task 'dbn': total steps 100 leave no fine-tuning"), err
