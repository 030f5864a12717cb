"""Launching again on a run's workdir, as a new user would (issue 17):

- `--which=best` is the best eval by the task's metric, and that checkpoint
  survives any number of resumes.
"""

from __future__ import annotations

import jax
import pytest

from conftest import digits_mlp_config
import relutil
from jaxdl import checkpoint, evaluate, parallel
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
