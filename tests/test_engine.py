"""The compiled core: one trace per run, 1 vs 4 devices, optimizers, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import parallel
from jaxdl.ops import platform
from jaxdl.configs import base_config
from jaxdl.train import optim
from jaxdl.train.classification import ClassificationTask
from jaxdl.train.engine import Engine


def _config(model="mlp", **kwargs):
  c = base_config()
  c.model.name = model
  c.model.kwargs = kwargs
  return c


def _batch(n=32, shape=(8, 8, 1), seed=0):
  rng = np.random.default_rng(seed)
  return {"inputs": rng.random((n,) + shape, dtype=np.float32),
          "label": rng.integers(0, 10, n).astype(np.int32)}


def _params(engine, state):
  return jax.tree.leaves(parallel.to_host(state.params))


@pytest.mark.parametrize("model,kwargs", [("mlp", {"hidden": (32,)}),
                                          ("cnn", {"features": (8, 16), "dense": 16,
                                                   "padding": "SAME"}),
                                          ("resnet", {"blocks_per_stage": 1, "width": 4})])
def test_one_and_four_devices_agree(model, kwargs):
  task = ClassificationTask(_config(model, **kwargs), {"num_classes": 10})
  batch = _batch()
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:4]):
    mesh = parallel.make_mesh(devices)
    engine = Engine(task, mesh, batch)
    state = engine.init_state(0)
    for _ in range(2):
      state, metrics = engine.train_step(state, parallel.global_batch(batch, mesh))
    results.append((_params(engine, state), float(metrics["loss"]),
                    parallel.to_host(state.model_state)))
  (p1, l1, s1), (p4, l4, s4) = results
  assert len(jax.devices()) == 4
  np.testing.assert_allclose(l1, l4, rtol=1e-5, atol=1e-6)
  for a, b in zip(p1, p4):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s4)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_state_is_replicated_batch_sharded_and_step_traces_once():
  c = _config(hidden=(64,), dropout=0.0)
  c.optimizer.learning_rate = 1e-2
  task = ClassificationTask(c, {"num_classes": 10})
  mesh = parallel.make_mesh()
  batch = _batch()
  engine = Engine(task, mesh, batch)
  state = engine.init_state(0)
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_fully_replicated
  losses = []
  for i in range(30):
    gb = parallel.global_batch(_batch(seed=i % 3), mesh)
    assert gb["inputs"].sharding.spec[0] == "data"
    state, metrics = engine.train_step(state, gb)
    losses.append(float(metrics["loss"]))  # (also bounds in-flight steps, see engine docs)
  assert engine.trace_count == 1
  assert int(state.step) == 30
  assert np.mean(losses[-5:]) < losses[0] * 0.7  # memorises 3 batches
  for k in ("loss", "accuracy", "grad_norm", "learning_rate"):
    assert k in metrics


def test_init_is_deterministic_and_sharded():
  task = ClassificationTask(_config(hidden=(16,)), {"num_classes": 10})
  engine = Engine(task, parallel.make_mesh(), _batch())
  a, b = engine.init_state(3), engine.init_state(3)
  c = engine.init_state(4)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_init_compiles_faster_on_cpu_with_the_same_values():
  # platform.init_compiler_options: LLVM -O1 for the run-once init, on CPU only.
  assert platform.init_compiler_options("cpu") == {"xla_backend_optimization_level": 1}
  assert platform.init_compiler_options("gpu") is None
  assert platform.init_compiler_options("tpu") is None
  task = ClassificationTask(_config("cnn", features=(8, 16), dense=16, padding="SAME"),
                            {"num_classes": 10})
  engine = Engine(task, parallel.make_mesh(jax.devices()[:1]), _batch())
  key = jax.random.split(jax.random.PRNGKey(3))[0]  # the engine's init key for seed 3
  want = jax.jit(lambda k: task.init(k, engine._example))(key)  # XLA's defaults (-O3)
  got = engine.init_state(3)
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves((got.params, got.model_state))):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(name):
  c = _config(hidden=(64,), dropout=0.0)
  c.optimizer.name = name
  c.optimizer.learning_rate = 0.5 if name == "sgd" else 0.05 if name == "adagrad" else (
      0.1 if name in ("momentum", "nesterov") else 3e-3)
  c.optimizer.weight_decay = 1e-4 if name in ("adamw", "sgd") else 0.0
  c.optimizer.l1 = 1e-6 if name == "momentum" else 0.0
  c.optimizer.l2 = 1e-5 if name == "rmsprop" else 0.0
  c.optimizer.grad_clip_norm = 1.0 if name == "adam" else 0.0
  task = ClassificationTask(c, {"num_classes": 10}, total_steps=40)
  mesh = parallel.make_mesh()
  batch = _batch(64)
  engine = Engine(task, mesh, batch)
  state = engine.init_state(0)
  gb = parallel.global_batch(batch, mesh)
  first = None
  for _ in range(40):
    state, m = engine.train_step(state, gb)
    jax.block_until_ready(m)  # XLA:CPU multi-device: keep few steps in flight
    first = float(m["loss"]) if first is None else first
  assert float(m["loss"]) < 0.8 * first, name


def test_schedules():
  c = base_config().optimizer
  c.learning_rate = 1.0
  c.schedule = "step"
  c.step_boundaries = (0.5,)
  c.step_factor = 0.1
  s = optim.make_schedule(c, 100)
  assert float(s(10)) == pytest.approx(1.0) and float(s(60)) == pytest.approx(0.1)
  c.schedule = "cosine"
  s = optim.make_schedule(c, 100)
  assert float(s(0)) == pytest.approx(1.0) and float(s(100)) == pytest.approx(0.0, abs=1e-6)
  c.schedule = "warmup_cosine"
  c.warmup_steps = 10
  s = optim.make_schedule(c, 100)
  assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1.0)
  c.schedule = "nope"
  with pytest.raises(ValueError, match="schedule"):
    optim.make_schedule(c, 100)


def test_losses_match_definitions():
  from jaxdl.train import losses
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  labels = jnp.array([0, 0])
  ce = losses.softmax_cross_entropy(logits, labels)
  np.testing.assert_allclose(ce, [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))], rtol=1e-6)
  z = jnp.array([[0.5], [-1.0]])
  y = jnp.array([1, 0])
  np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(z, y),
                             [np.log1p(np.exp(-0.5)), np.log1p(np.exp(-1.0))], rtol=1e-6)
  np.testing.assert_allclose(losses.mse(jnp.ones((2, 3)), jnp.zeros((2, 3))), [1.0, 1.0])
  np.testing.assert_allclose(losses.l1(-2 * jnp.ones((2, 3)), jnp.zeros((2, 3))), [2.0, 2.0])
