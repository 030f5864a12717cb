"""Launching again on a run's workdir, as a new user would (issue 17):

- `--which=best` is the best eval by the task's metric, and that checkpoint
  survives any number of resumes;
- a refused launch (another model's checkpoint, the lock of a live run)
  changes no file of the run it was refused on;
- relaunching a finished run leaves its summary.json as it was;
- a misspelled config field or a missing flagfile is one line, exit 2.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import pytest

from conftest import digits_mlp_config
import relutil
from jaxdl import checkpoint, evaluate, lock, parallel
from jaxdl.train import loop

ONE = parallel.make_mesh(jax.devices()[:1])


def _diverging(**kw):
  """The digits MLP, eval and checkpoint every 10 steps; the learning rate
  jumps x100 after step 20, so accuracy peaks at step 20 (~0.79) and then
  falls (~0.25): the best eval is not the last one."""
  c = digits_mlp_config(**{"num_steps": 30, "eval_every": 10, **kw})
  c.optimizer.learning_rate = 0.01
  c.optimizer.schedule = "step"
  c.optimizer.step_boundaries = (20,)
  c.optimizer.step_factor = 100.0
  return c


def _autoencoder(task="autoencoder", model="dense_autoencoder"):
  c = digits_mlp_config(task=task, num_steps=20)
  c.model.name = model
  c.model.kwargs = {"hidden": (16,), "latent_dim": 4}
  return c


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
  """A finished 20-step dense autoencoder run on digits."""
  wd = tmp_path_factory.mktemp("ae")
  loop.train_and_evaluate(_autoencoder(), str(wd), mesh=ONE)
  return wd


def _copy(src, tmp_path) -> pathlib.Path:
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  return wd


def _evals(wd) -> dict[int, dict]:
  return {s: m for s, split, m in relutil.metrics_records(wd) if split == "eval"}


def _best(wd, which="best"):
  r = evaluate.evaluate_workdir(str(wd), which, confusion=False, write=False, mesh=ONE)
  return r["step"], r["metrics"]


def test_best_is_the_best_eval_and_survives_resumes(tmp_path):
  wd = tmp_path
  loop.train_and_evaluate(_diverging(), str(wd), mesh=ONE)
  evals = _evals(wd)
  best = max(evals, key=lambda s: evals[s]["accuracy"])
  assert best == 20 and evals[20]["accuracy"] > evals[30]["accuracy"] + 0.2, evals
  step, metrics = _best(wd)
  assert step == 20
  assert metrics["accuracy"] == pytest.approx(evals[20]["accuracy"], abs=1e-6)
  # Resumed for more steps, twice: the older checkpoints rotate out, the best stays.
  for n in (40, 50):
    loop.train_and_evaluate(_diverging(num_steps=n), str(wd), mesh=ONE)
    evals = _evals(wd)
    assert max(evals, key=lambda s: evals[s]["accuracy"]) == 20, evals
    assert relutil.committed_steps(wd) == sorted({20, n - 20, n - 10, n})
    ckpt = checkpoint.Checkpointer(str(wd / "checkpoints"), best_metric="accuracy")
    assert (ckpt.best_step(), ckpt.latest_step()) == (20, n)
    ckpt.close()
  assert _best(wd)[0] == 20  # what `python -m jaxdl.evaluate --which=best` reports


def _snapshot(wd) -> dict[str, tuple]:
  """Every path under `wd`: (bytes, mtime_ns) for files, None for folders."""
  out = {}
  for p in sorted(pathlib.Path(wd).rglob("*")):
    rel = str(p.relative_to(wd))
    out[rel] = (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
  return out


def test_refused_launch_of_another_model_changes_no_file(ae_run, tmp_path):
  # The VAE command on the dense autoencoder's workdir.
  wd = _copy(ae_run, tmp_path)
  before = _snapshot(wd)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="another model"):
    loop.train_and_evaluate(_autoencoder("vae", "vae"), str(wd), mesh=ONE)
  assert _snapshot(wd) == before
  assert _best(wd, "latest")[0] == 20  # the original run still evaluates


def test_refused_launch_on_a_locked_workdir_changes_no_file(ae_run, tmp_path):
  wd = _copy(ae_run, tmp_path)
  with lock.WorkdirLock(str(wd)):  # a live run (this process) holds it
    before = _snapshot(wd)
    with pytest.raises(lock.WorkdirLockedError, match="in use by another run"):
      loop.train_and_evaluate(_autoencoder("vae", "vae"), str(wd), mesh=ONE)
    assert _snapshot(wd) == before


def test_relaunched_finished_autoencoder_keeps_its_summary(ae_run, tmp_path):
  wd = _copy(ae_run, tmp_path)
  saved = (wd / "summary.json").read_bytes()
  assert "reference_mse" in json.loads(saved)["eval"]  # the task's own metric
  again = loop.train_and_evaluate(_autoencoder(), str(wd), mesh=ONE)
  assert (wd / "summary.json").read_bytes() == saved
  assert again == {**json.loads(saved), "resumed_from": 20}  # what this launch did


def test_relaunched_finished_run_prints_its_result_and_keeps_its_summary(tmp_path):
  args = ["--config.dataset=digits", "--config.num_epochs=0", "--config.num_steps=3",
          "--config.tensorboard=False", "--num_cpu_devices=1", f"--workdir={tmp_path}"]
  first = relutil.run("mnist_mlp", *args)
  assert first.returncode == 0, first.stderr[-2000:]
  saved = (tmp_path / "summary.json").read_bytes()
  done = [l for l in first.stdout.splitlines() if l.startswith("done: step 3 |")]
  assert len(done) == 1, first.stdout
  again = relutil.run("mnist_mlp", *args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert (tmp_path / "summary.json").read_bytes() == saved
  assert f"run already finished at step 3 in {tmp_path}" in again.stdout
  assert done[0] in again.stdout.splitlines()  # the same result line as the first launch


@pytest.mark.parametrize("args,want", [
    (["--config.batchsize=64"],
     "error: unknown config field 'batchsize' (did you mean 'batch_size'?)"),
    (["--config.optimizer.learnig_rate=0.1"],
     "error: unknown config field 'optimizer.learnig_rate' "
     "(did you mean 'optimizer.learning_rate'?)"),
    (["--flagfile=/nonexistent.flags"],
     "error: cannot read --flagfile=/nonexistent.flags (No such file or directory)"),
    (["--config=/nonexistent.py"],
     "error: cannot load --config=/nonexistent.py (No such file or directory)"),
    # an override of the missing file's fields fails first (when parsed)
    (["--config=/nonexistent.py", "--config.batch_size=8"],
     "error: cannot load --config=/nonexistent.py (No such file or directory)"),
])
def test_bad_config_field_or_flagfile_is_one_line(tmp_path, args, want):
  r = relutil.run("mnist_mlp", *args, f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2, r.stderr[-2000:]
  assert relutil.error_lines(r) == [want], r.stderr[-2000:]
  assert not (tmp_path / "w").exists()
