"""Registry-driven: every registered model, built from its example run
(`jaxdl.models.examples()`) with its task, initialises and trains one step in
the sharded engine; and for every task the engine's shared features hold:
bfloat16 compute with float32 params and optimizer state, gradient
accumulation equal to the whole batch, the non-finite guard."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datagen import synthetic_dataset
from jaxdl import models, parallel
from jaxdl.train import loop

def _dataset(config):
  # padded rows: the language model's micro-batches weigh differently
  return synthetic_dataset(config, 128, n_test=32, vocab=50, maxlen=16, pad_every=3)


def _config(model_name, **overrides):
  c = models.example_config(model_name, **overrides)
  c.batch_size, c.eval_batch_size, c.num_epochs, c.num_steps = 32, 32, 0, 8
  c.tensorboard = False
  if "gan" in c:
    c.gan.fid = False
  if "lm" in c:
    c.lm.prompts = ()
  return c


def _run(config, tmp_path, monkeypatch, mesh=None):
  monkeypatch.setattr(loop, "load_dataset", lambda c, w: _dataset(c))
  return loop.Run(config, str(tmp_path), mesh=mesh)


# Narrower layers than the example runs' for the one-step test (compiling a
# full-width train step is most of its time on CPU; what it proves, that the
# model and its task build and step in the engine, does not need the width).
# The benchmark's registry rows run the examples at their own size.
NARROW = {
    "cnn": {"model.kwargs.features": (8, 16, 16), "model.kwargs.dense": 16},
    "resnet": {"model.kwargs.width": 4},
    "lstm_classifier": {"model.kwargs.embed_dim": 16, "model.kwargs.hidden_size": 16},
    "transformer_classifier": {"model.kwargs.d_model": 32, "model.kwargs.mlp_dim": 32,
                               "model.kwargs.num_layers": 1},
    "transformer_lm": {"model.kwargs.d_model": 32, "model.kwargs.mlp_dim": 32,
                       "model.kwargs.num_layers": 1},
    "conv_autoencoder": {"model.kwargs.features": (8, 16)},
}
# (one run trains both GAN models: the same narrow pair for each, one program)
NARROW["dcgan_generator"] = NARROW["dcgan_discriminator"] = {
    "gan.generator_kwargs.features": (16, 8), "gan.discriminator_kwargs.features": (8, 16)}


@pytest.mark.parametrize("name", sorted(models.examples()))
def test_every_registered_model_trains_one_step_with_its_task(name, tmp_path, monkeypatch):
  assert set(models.examples()) == set(models.registry())  # one example per model
  assert set(NARROW) <= set(models.registry())
  run = _run(_config(name, **NARROW.get(name, {})), tmp_path, monkeypatch)
  state = run.engine.init_state(0)
  before = parallel.to_host((state.params, state.opt_state))
  batch = parallel.global_batch(run.batches(0), run.mesh)
  new, metrics = run.engine.train_step(state, batch)  # the state is donated
  assert int(new.step) == 1 and float(metrics["nonfinite"]) == 0.0
  # (a warmup schedule's first step has learning rate 0: the optimizer moved)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before,
                         parallel.to_host((new.params, new.opt_state)))
  assert any(jax.tree.leaves(changed)), name


# One model per task (the deterministic variants: no dropout, no batch norm,
# one Gibbs-free phase for the DBN), for the accumulation equality.
TASKS = {
    "classification": ("mlp", {"model.kwargs": {"hidden": (32,), "dropout": 0.0}}),
    "autoencoder": ("dense_autoencoder", {}),
    "vae": ("vae", {}),
    "language_model": ("transformer_lm", {"model.kwargs": {
        "num_layers": 1, "d_model": 32, "num_heads": 2, "mlp_dim": 32, "max_len": 16}}),
    "gan": ("dcgan_generator", {"gan.generator_kwargs": {"batch_norm": False,
                                                         "features": (16, 8)},
                                "gan.discriminator_kwargs": {"features": (8, 16)}}),
    "rbm": ("rbm", {}),
    "dbn": ("dbn_classifier", {"dbn.pretrain_steps": 1, "model.kwargs": {"hidden": (32, 16)}}),
}
# Tasks whose update draws random numbers per micro-batch (the VAE's z, CD-k's
# Gibbs samples): an accumulated step equals the whole batch's only in
# distribution, so the equality is checked on the deterministic part.
RANDOM_PER_MICRO_BATCH = {"vae", "rbm"}


def _one_step(name, overrides, tmp_path, monkeypatch, *, batch=32, start=0, **fields):
  c = _config(name, **overrides, **fields)
  c.batch_size = batch
  run = _run(c, tmp_path, monkeypatch, mesh=parallel.make_mesh(jax.devices()[:1]))
  def fresh():
    state = run.engine.init_state(0)
    return state.replace(step=jnp.asarray(start, jnp.int32)) if start else state
  out = run.engine.train_step(fresh(), parallel.global_batch(run.batches(0), run.mesh))
  return run, fresh(), out  # the stepped state was donated: a fresh one


@pytest.mark.parametrize("task", sorted(TASKS))
def test_bfloat16_computes_in_bf16_and_keeps_float32_state(task, tmp_path, monkeypatch):
  name, overrides = TASKS[task]
  run, state, (new, metrics) = _one_step(name, overrides, tmp_path, monkeypatch,
                                         dtype="bfloat16")
  for leaf in jax.tree.leaves((new.params, new.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  hlo = run.engine.train_step.lower(state, parallel.global_batch(
      run.batches(0), run.mesh)).as_text()
  assert "bf16" in hlo and float(metrics["nonfinite"]) == 0.0, task
  assert all(np.isfinite(float(v)) for k, v in metrics.items() if k != "health")


# The whole-batch step of the accumulation test is the NaN test's program (one
# compile between them, through the compilation cache): batch 128, 'skip'.
GUARDED = {"batch": 128, "nonfinite": "skip"}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_four_accumulated_micro_batches_equal_one_whole_batch(task, tmp_path, monkeypatch):
  name, overrides = TASKS[task]
  start = 2 if task == "dbn" else 0  # past both RBMs: fine-tuning (no Gibbs sampling)
  _, _, (whole, _) = _one_step(name, overrides, tmp_path / "a", monkeypatch, **GUARDED,
                               start=start)
  _, _, (accum, _) = _one_step(name, overrides, tmp_path / "b", monkeypatch, **GUARDED,
                               start=start, grad_accum_steps=4)
  a, b = parallel.to_host(whole.params), parallel.to_host(accum.params)
  if task in RANDOM_PER_MICRO_BATCH:
    # Same key, other draws: the step differs, but no more than a step's size.
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                            jax.tree.leaves(b)))
    assert 0 < diff < 0.05, (task, diff)
  else:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5, err_msg=task)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_nan_input_is_guarded_for_every_task(task, tmp_path, monkeypatch):
  name, overrides = TASKS[task]
  run, state, _ = _one_step(name, overrides, tmp_path, monkeypatch, **GUARDED)
  batch = dict(run.batches(0))
  if batch["inputs"].dtype.kind == "i":  # token ids: poison the embedding instead
    params = jax.tree.map(lambda x: x.copy(), parallel.to_host(state.params))
    leaf = next(iter(p for p in jax.tree.leaves(params) if p.ndim == 2))
    leaf[:] = np.nan
    state = state.replace(params=jax.device_put(params, run.engine.replicated))
  else:
    batch["inputs"] = batch["inputs"].astype(np.float32)
    batch["inputs"][0] = np.nan
  before = parallel.to_host(state.params)
  new, metrics = run.engine.train_step(state, parallel.global_batch(batch, run.mesh))
  assert float(metrics["nonfinite"]) == 1.0, task
  assert int(new.health["bad_steps"]) == 1 and int(new.health["first_bad_step"]) == 1
  assert int(new.step) == 1
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(parallel.to_host(new.params))):
    np.testing.assert_array_equal(x, y)  # 'skip': the update was dropped
