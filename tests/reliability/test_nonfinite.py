"""NaN/Inf loss or gradients: 'stop' (default) ends the run with one line naming
the step, the metric and the last good checkpoint, saving nothing after it;
'skip' drops the update inside the jitted step and counts it."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import digits_mlp_config
import relutil
from jaxdl import checksum, parallel
from jaxdl.train import loop
from jaxdl.train.task import Task

# One device: the checks here are about files and values, not sharding (and
# XLA:CPU's in-process collectives can abort under CPU contention).
ONE = parallel.make_mesh(jax.devices()[:1])


_config = digits_mlp_config


class Poisoned:
  """Wraps a task: the inputs of the given (1-based) steps are NaN, so the loss
  and every gradient are NaN there -- as from a bad batch or an overflow."""

  def __init__(self, inner: Task, steps):
    self.inner, self.steps = inner, jnp.asarray(steps, jnp.int32)

  def __getattr__(self, name):
    return getattr(self.inner, name)

  def train_update(self, ctx, state, batch, key):
    bad = jnp.any(state.step + 1 == self.steps)
    x = batch["inputs"].astype(jnp.float32)
    return self.inner.train_update(ctx, state, dict(batch, inputs=jnp.where(bad, jnp.nan, x)),
                                   key)


@pytest.fixture
def poison(monkeypatch):
  def at(*steps):
    real = loop.build_task
    monkeypatch.setattr(loop, "build_task",
                        lambda *a, **k: Poisoned(real(*a, **k), list(steps)))
  return at


def _all_checkpoints_finite(wd) -> list[int]:
  run = loop.Run(_config(), str(wd), mesh=ONE)
  steps = run.checkpointer.all_steps()
  for s in steps:
    state = run.checkpointer.restore(s, run.abstract_state())
    assert all(d["finite"] for d in checksum.describe_state(state).values()), s
  run.checkpointer.close()
  return steps


def test_stop_names_step_metric_and_last_good_checkpoint(tmp_path, poison):
  poison(25)
  with pytest.raises(loop.NonFiniteError) as e:
    loop.train_and_evaluate(_config(), str(tmp_path), mesh=ONE)
  msg = str(e.value)
  assert "\n" not in msg
  assert "non-finite loss" in msg and "at step 25" in msg, msg
  assert f"last good checkpoint: step 20 in {tmp_path / 'checkpoints'}" in msg, msg
  assert "--config.nonfinite=skip" in msg
  assert _all_checkpoints_finite(tmp_path) == [10, 20]   # step 30 was never saved
  assert not (tmp_path / ".lock").exists()


def test_stop_between_log_steps_is_caught_before_the_next_save(tmp_path, poison):
  # NaN at step 7; log_every=100 means no log step before the save at 10.
  poison(7)
  with pytest.raises(loop.NonFiniteError, match="at step 7 .*last good checkpoint: none yet"):
    loop.train_and_evaluate(_config(log_every=100), str(tmp_path), mesh=ONE)
  assert _all_checkpoints_finite(tmp_path) == []


def test_skip_drops_the_updates_and_counts_them(tmp_path, poison):
  poison(15, 25)
  summary = loop.train_and_evaluate(_config(nonfinite="skip"), str(tmp_path), mesh=ONE)
  assert summary["skipped_steps"] == 2 and summary["final_step"] == 40
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = {r["step"]: r["metrics"] for r in records if r["split"] == "train"}
  assert train[10]["skipped_steps"] == 0 and train[20]["skipped_steps"] == 1
  assert train[40]["skipped_steps"] == 2
  assert summary["eval"]["loss"] < 2.1              # training went on around them
  assert {30, 40} <= set(_all_checkpoints_finite(tmp_path))


def test_skip_count_survives_a_resume(tmp_path, poison):
  poison(5, 25)
  loop.train_and_evaluate(_config(nonfinite="skip", num_steps=20), str(tmp_path), mesh=ONE)
  summary = loop.train_and_evaluate(_config(nonfinite="skip", num_steps=30), str(tmp_path), mesh=ONE)
  assert summary["resumed_from"] == 20 and summary["skipped_steps"] == 2


def test_skipped_step_leaves_the_state_unchanged_but_the_step(tmp_path):
  run = loop.Run(_config(nonfinite="skip"), str(tmp_path), mesh=ONE)
  it = run.data_iterator()
  state, _ = run.restore_or_init(it)
  state, _ = run.engine.train_step(state, parallel.global_batch(next(it), run.mesh))
  before = parallel.to_host(state)
  batch = dict(next(it))
  batch["inputs"] = np.full_like(batch["inputs"], np.nan, dtype=np.float32)
  after, metrics = run.engine.train_step(state, parallel.global_batch(batch, run.mesh))
  after = parallel.to_host(after)
  assert float(parallel.to_host(metrics)["nonfinite"]) == 1.0
  assert int(after.step) == int(before.step) + 1
  for a, b in zip(jax.tree.leaves((before.params, before.opt_state, before.model_state,
                                   before.rng)),
                  jax.tree.leaves((after.params, after.opt_state, after.model_state,
                                   after.rng))):
    np.testing.assert_array_equal(a, b)
  # A good batch after it trains normally.
  after, metrics = run.engine.train_step(
      jax.device_put(after, run.engine.state_shardings),
      parallel.global_batch(next(it), run.mesh))
  assert float(parallel.to_host(metrics)["nonfinite"]) == 0.0
  run.checkpointer.close()


def test_stop_from_the_command_line_is_one_line(tmp_path):
  # A learning rate of 1e30 overflows within a few steps.
  r = relutil.run("mnist_mlp", "--config.dataset=digits", "--config.num_epochs=0",
                  "--config.num_steps=30", "--config.batch_size=32",
                  "--config.checkpoint_every=10", "--config.log_every=5",
                  "--config.optimizer.learning_rate=1e30", "--config.tensorboard=False",
                  "--num_cpu_devices=1", f"--workdir={tmp_path}")
  assert r.returncode == 1, r.stderr[-2000:]
  err = relutil.error_lines(r)
  assert len(err) == 1 and err[0].startswith("error: non-finite "), err
  assert "at step " in err[0] and "last good checkpoint" in err[0]
