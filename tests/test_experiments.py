"""End-to-end: the experiments as users run them (subprocesses), and one clear
line for each kind of bad input (exact resume after SIGKILL, of every
experiment: tests/reliability/test_kill_resume.py)."""

import json
import os

import pytest

from datagen import write_cifar10_binary
from runner import run_experiment, summary

CIFAR_SHA = "jaxdl.data.sources:KNOWN_SHA256"


def test_quickstart_reaches_095_on_digits(tmp_path):
  # The README's first command, with the run's folder moved to tmp.
  r = run_experiment("cifar_cnn", "--flagfile=experiments/flagfiles/quickstart.flags",
                     f"--workdir={tmp_path}", plots=True)
  assert r.returncode == 0, r.stderr[-3000:]
  s = summary(tmp_path)
  assert s["eval"]["accuracy"] >= 0.95, s
  assert "done: step" in r.stdout
  # The workdir holds what the README promises.
  for name in ("config.json", "metrics.jsonl", "summary.json", "tensorboard", "checkpoints",
               "curves.png", "confusion_matrix.png", "model_summary.txt"):
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


def test_cifar_cnn_runs_end_to_end_on_generated_official_files(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  sha = write_cifar10_binary(data)
  wd = tmp_path / "run"
  r = run_experiment("cifar_cnn", "--flagfile=experiments/flagfiles/cifar_cnn.flags",
                     f"--config.data_dir={data}", f"--workdir={wd}",
                     "--config.num_epochs=2", "--config.batch_size=20",
                     patch={CIFAR_SHA: {("cifar10", "cifar-10-binary.tar.gz"): sha}})
  assert r.returncode == 0, r.stderr[-3000:]
  s = summary(wd)
  assert s["final_step"] == 20 and 0.0 <= s["eval"]["accuracy"] <= 1.0
  assert s["num_params"] == 122570  # the Keras CIFAR-10 tutorial CNN
  # run_experiment passes --config.plots=False: no figures, the rest as usual
  assert not list(wd.glob("*.png")) and (wd / "model_summary.txt").exists()


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
