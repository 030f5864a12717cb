"""Checkpoints: restore onto another device count, keep the last k and the best."""

import jax
import numpy as np

from conftest import digits_mlp_config
from jaxdl import parallel
from jaxdl.train import loop


def _config(**kw):
  return digits_mlp_config(**{"num_steps": 30, "eval_every": 10, "checkpoint_every": 0, **kw})


def _host(tree):
  return jax.tree.leaves(parallel.to_host(tree))


def test_restore_onto_a_different_device_count(tmp_path):
  four = loop.Run(_config(), str(tmp_path), mesh=parallel.make_mesh(jax.devices()[:4]))
  it = four.data_iterator()
  state, resumed = four.restore_or_init(it)
  assert resumed is None
  for _ in range(10):
    state, _ = four.engine.train_step(state, parallel.global_batch(next(it), four.mesh))
  four.checkpointer.save(10, state, it)
  four.checkpointer.close()
  saved = _host(state.params)
  next_four = next(it)["label"]

  one = loop.Run(_config(), str(tmp_path), mesh=parallel.make_mesh(jax.devices()[:1]))
  it1 = one.data_iterator()
  restored, resumed = one.restore_or_init(it1)
  assert resumed == 10 and int(restored.step) == 10
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding.mesh.size == 1
  for a, b in zip(saved, _host(restored.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(next(it1)["label"], next_four)  # the data position too
  restored, _ = one.engine.train_step(restored, parallel.global_batch(next(it1), one.mesh))
  assert int(restored.step) == 11
  one.checkpointer.close()


def test_keeps_the_last_k_and_the_best(tmp_path):
  c = _config(keep_checkpoints=2, num_steps=60, checkpoint_every=10)
  summary = loop.train_and_evaluate(c, str(tmp_path))
  run = loop.Run(c, str(tmp_path))
  steps = run.checkpointer.all_steps()
  records = [l for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
  assert len(records) == 6
  best = run.checkpointer.best_step()
  assert steps[-2:] == [50, 60]
  assert set(steps) == {50, 60, best}
  assert summary["final_step"] == 60
  run.checkpointer.close()
