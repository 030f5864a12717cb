"""End-to-end: the experiments as users run them (subprocesses), exact resume
after SIGKILL, and one clear line for each kind of bad input."""

import gzip
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import REPO

PY = sys.executable


def run_experiment(module, *args, env=None, patch_sha=None, timeout=600):
  """Runs `python -m experiments.<module> args...`; `patch_sha` registers the
  sha256 of generated dataset files first (the reading code is unchanged)."""
  env = dict(os.environ, **(env or {}))
  env.setdefault("JAXDL_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla"))
  if patch_sha:
    code = ("import runpy, sys; from jaxdl.data import sources; "
            f"sources.KNOWN_SHA256.update({patch_sha!r}); "
            f"sys.argv = ['{module}'] + sys.argv[1:]; "
            f"runpy.run_module('experiments.{module}', run_name='__main__')")
    cmd = [PY, "-c", code, *args]
  else:
    cmd = [PY, "-m", f"experiments.{module}", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def summary(workdir):
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())


def test_quickstart_reaches_095_on_digits(tmp_path):
  # The README's first command, with the run's folder moved to tmp.
  r = run_experiment("cifar_cnn", "--flagfile=experiments/flagfiles/quickstart.flags",
                     f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-3000:]
  s = summary(tmp_path)
  assert s["eval"]["accuracy"] >= 0.95, s
  assert "done: step" in r.stdout
  # The workdir holds what the README promises.
  for name in ("config.json", "metrics.jsonl", "summary.json", "tensorboard", "checkpoints"):
    assert (tmp_path / name).exists(), name
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["split"] for r in records} == {"train", "eval"}
  assert all(set(r) == {"step", "split", "metrics"} for r in records)
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["dataset"] == "digits" and cfg["model"]["kwargs"]["padding"] == "SAME"


@pytest.mark.slow
def test_mnist_mlp_reaches_0975_on_real_mnist(tmp_path, mnist_dir):
  r = run_experiment("mnist_mlp", "--flagfile=experiments/flagfiles/mnist_mlp.flags",
                     f"--config.data_dir={mnist_dir}", f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert summary(tmp_path)["eval"]["accuracy"] >= 0.975


def write_cifar10_binary(directory, n_train_per_batch=40, n_test=40, seed=0):
  """A tiny cifar-10-binary.tar.gz in the official layout; returns its sha256."""
  import hashlib
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    def add(name, data):
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    for name, n in [(f"data_batch_{i}.bin", n_train_per_batch) for i in range(1, 6)] + [
        ("test_batch.bin", n_test)]:
      labels = rng.integers(0, 10, n).astype(np.uint8)
      # Learnable: the class sets the mean brightness of the red plane.
      pixels = rng.integers(0, 64, (n, 3, 32, 32)).astype(np.uint8)
      pixels[:, 0] += (labels * 19)[:, None, None].astype(np.uint8)
      add(name, np.concatenate([labels[:, None], pixels.reshape(n, -1)], 1).tobytes())
    add("batches.meta.txt", "\n".join(["airplane", "automobile", "bird", "cat", "deer",
                                       "dog", "frog", "horse", "ship", "truck"]).encode())
  path = pathlib.Path(directory) / "cifar-10-binary.tar.gz"
  path.write_bytes(buf.getvalue())
  return hashlib.sha256(buf.getvalue()).hexdigest()


def test_cifar_cnn_runs_end_to_end_on_generated_official_files(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  sha = write_cifar10_binary(data)
  wd = tmp_path / "run"
  r = run_experiment("cifar_cnn", "--flagfile=experiments/flagfiles/cifar_cnn.flags",
                     f"--config.data_dir={data}", f"--workdir={wd}",
                     "--config.num_epochs=2", "--config.batch_size=20",
                     patch_sha={("cifar10", "cifar-10-binary.tar.gz"): sha})
  assert r.returncode == 0, r.stderr[-3000:]
  s = summary(wd)
  assert s["final_step"] == 20 and 0.0 <= s["eval"]["accuracy"] <= 1.0
  assert s["num_params"] == 122570  # the Keras CIFAR-10 tutorial CNN


RESUME_ARGS = ["--flagfile=experiments/flagfiles/quickstart.flags",
               "--config.num_epochs=0", "--config.num_steps=60",
               "--config.batch_size=32", "--config.checkpoint_every=8",
               "--config.eval_every=30", "--config.log_every=10",
               "--config.model.kwargs.features=(8,16,16)", "--num_cpu_devices=2"]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  ref = tmp_path / "ref"
  r = run_experiment("cifar_cnn", *RESUME_ARGS, f"--workdir={ref}")
  assert r.returncode == 0, r.stderr[-3000:]
  wd = tmp_path / "killed"
  # Killed right after step 29 was dispatched, then again during the save of step 48.
  for kill in ("step:29", "save:48"):
    r = run_experiment("cifar_cnn", *RESUME_ARGS, f"--workdir={wd}",
                       env={"JAXDL_FAULT_KILL": kill})
    assert r.returncode == -9, (kill, r.stderr[-2000:])
  r = run_experiment("cifar_cnn", *RESUME_ARGS, f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step" in r.stdout
  a, b = summary(ref), summary(wd)
  assert b["resumed_from"] in (40, 48)
  assert a["params_sha256"] == b["params_sha256"]
  assert a["eval"] == b["eval"]
  # A finished run launched again resumes at its end and changes nothing.
  r = run_experiment("cifar_cnn", *RESUME_ARGS, f"--workdir={wd}")
  assert r.returncode == 0 and summary(wd)["params_sha256"] == a["params_sha256"]


@pytest.mark.parametrize("args,needle", [
    (["--no_such_flag=1"], "no_such_flag"),
    (["--config.batch_size=abc"], "batch_size"),
    (["--config.batch_size=-4"], "batch_size=-4"),
    (["--config.batch_size=30", "--num_cpu_devices=4"], "divisible by the 4 devices"),
    (["--config.model.name=nope"], "unknown model 'nope'"),
    (["--config.dataset=nope"], "unknown dataset 'nope'"),
    (["--config.optimizer.name=nope"], "unknown optimizer 'nope'"),
])
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, args, needle):
  r = run_experiment("cifar_cnn", "--flagfile=experiments/flagfiles/quickstart.flags",
                     f"--workdir={tmp_path}", *args)
  assert r.returncode != 0
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(err) == 1, r.stderr[-2000:]
  assert err[0].startswith("error: ") and needle in err[0], err


def test_missing_dataset_names_files_and_flag(tmp_path):
  r = run_experiment("mnist_mlp", "--flagfile=experiments/flagfiles/mnist_mlp.flags",
                     f"--config.data_dir={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'w'}")
  assert r.returncode != 0
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(err) == 1, r.stderr
  assert "train-images-idx3-ubyte.gz" in err[0] and "--config.data_dir" in err[0]


def test_unwritable_workdir(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file
    target = tmp_path / "file"
    target.write_text("x")
    wd = target / "run"
  else:
    wd = ro / "run"
  r = run_experiment("cifar_cnn", "--flagfile=experiments/flagfiles/quickstart.flags",
                     f"--workdir={wd}")
  assert r.returncode != 0
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(err) == 1, r.stderr
  assert "workdir" in err[0] and "--workdir" in err[0]
