"""Platform-clean core: CPU fast paths on CPU only, plain lowerings elsewhere.

Every registered model is built with its experiment's config ('auto'
implementations), its train step exported from this CPU machine for CUDA and
for TPU (`jax.export`), and the StableHLO compared with the same step built
with the plain implementations ('xla', 'autodiff'). jax lowers the
`platform_dependent` selector of a single-platform export as a one-branch
`stablehlo.case` on a constant; MLIR's canonicalizer inlines it (as XLA does),
and after that the two modules must hold the same operations: no conditional
from the conv path (`ops.conv._opaque`), no im2col GEMM for a convolution, the
LSTM as the plain scan. On CPU, 'auto' compiles to exactly the fast path: the
same parameters bit for bit after training steps.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import set_field
from datagen import synthetic_dataset
from jaxdl import models
from jaxdl.ops import platform
from jaxdl.train import loop

def _synthetic_dataset(config, n=64):
  return synthetic_dataset(config, n)


def _experiment_config(name, **overrides):
  c = importlib.import_module(f"experiments.configs.{name}").get_config()
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_epochs = 0
  c.num_steps = 4
  c.tensorboard = False
  for key, value in overrides.items():
    set_field(c, key, value)
  return c


# (experiment config, overrides): together they build every registered model.
CASES = {
    "mnist_mlp": ("mnist_mlp", {}),
    "cifar_cnn": ("cifar_cnn", {}),
    "resnet": ("cifar_cnn", {"model.name": "resnet", "model.kwargs":
                             ml_collections.ConfigDict({"blocks_per_stage": 1,
                                                        "conv_impl": "auto"})}),
    "imdb_lstm": ("imdb_lstm", {}),
    "imdb_transformer": ("imdb_transformer", {}),
    "mnist_gan": ("mnist_gan", {}),
    "mnist_dbn": ("mnist_dbn", {"dbn.pretrain_steps": 1}),
    "mnist_autoencoder": ("mnist_autoencoder", {}),
    "conv_autoencoder": ("mnist_autoencoder", {
        "model.name": "conv_autoencoder",
        "model.kwargs": ml_collections.ConfigDict({"conv_impl": "auto"})}),
    "vae": ("mnist_autoencoder", {"task": "vae", "model.name": "vae"}),
}
try:
  importlib.import_module("experiments.configs.imdb_lm")
  CASES["imdb_lm"] = ("imdb_lm", {})
except ModuleNotFoundError:
  pass


def _plain(config):
  """The same config with every model's implementation fields set to their
  plain form, whether the config names them or leaves the default ('auto')."""
  plain = {"conv_impl": "xla", "scan_impl": "autodiff"}
  c = ml_collections.ConfigDict(config.to_dict())
  nodes = [(c.model.get("name"), c.model, "kwargs")]
  if "gan" in c:
    nodes += [(c.gan.get("generator", "dcgan_generator"), c.gan, "generator_kwargs"),
              (c.gan.get("discriminator", "dcgan_discriminator"), c.gan,
               "discriminator_kwargs")]
  for name, parent, key in nodes:
    if name not in models.registry():
      continue
    params = inspect.signature(models.registry()[name]).parameters
    kwargs = dict(parent.get(key) or {})
    for field, value in plain.items():
      if field in params:
        kwargs[field] = value
    parent[key] = ml_collections.ConfigDict(kwargs)
  return c


def _run(config, workdir, monkeypatch):
  monkeypatch.setattr(loop, "load_dataset", lambda c, w: _synthetic_dataset(c))
  return loop.Run(config, str(workdir))


def _abstract_batch(run):
  batch = run.batches(0)
  return {k: jax.ShapeDtypeStruct((v.shape[0] * run.pcount,) + v.shape[1:], v.dtype,
                                  sharding=run.engine.batch_sharding)
          for k, v in batch.items()}


def _canonical_ops(text: str) -> collections.Counter:
  """Op histogram of a StableHLO module after MLIR's canonicalizer."""
  from jax._src.interpreters import mlir as jmlir  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir import ir, passmanager  # pylint: disable=g-import-not-at-top
  with jmlir.make_ir_context():
    module = ir.Module.parse(text)
    passmanager.PassManager.parse("builtin.module(canonicalize)").run(module.operation)
    text = str(module)
  return collections.Counter(re.findall(r"\b(stablehlo\.[a-z_]+)\b", text))


def _export_ops(run, platforms):
  state = run.abstract_state()
  exported = jax.export.export(run.engine.train_step, platforms=platforms)(
      state, _abstract_batch(run))
  return exported.mlir_module()


def test_plain_config_names_the_plain_implementations():
  lstm = _plain(_experiment_config("imdb_lstm"))
  assert lstm.model.kwargs.scan_impl == "autodiff"
  gan = _plain(_experiment_config("mnist_gan"))
  assert gan.gan.generator_kwargs.conv_impl == gan.gan.discriminator_kwargs.conv_impl == "xla"


def test_every_registered_model_has_a_case(tmp_path, monkeypatch):
  built = set()
  for exp, overrides in CASES.values():
    config = _experiment_config(exp, **overrides)
    names = {config.model.get("name")}
    if config.get("task") == "gan":
      names |= {config.gan.generator, config.gan.discriminator}
    if config.get("task") in ("dbn", "rbm"):
      names |= {"rbm", "dbn_classifier"}
    built |= names
  assert set(models.registry()) <= built, (
      f"models without an export case: {sorted(set(models.registry()) - built)}; "
      "add one to CASES")


@pytest.mark.parametrize("case", sorted(CASES))
def test_accelerator_export_is_the_plain_lowering(case, tmp_path, monkeypatch):
  exp, overrides = CASES[case]
  config = _experiment_config(exp, **overrides)
  auto_run = _run(config, tmp_path / "auto", monkeypatch)
  plain_run = _run(_plain(config), tmp_path / "plain", monkeypatch)
  for platforms in (("cuda",), ("tpu",)):
    auto_text = _export_ops(auto_run, platforms)
    plain_text = _export_ops(plain_run, platforms)
    auto, plain = _canonical_ops(auto_text), _canonical_ops(plain_text)
    assert auto["stablehlo.convolution"] == plain["stablehlo.convolution"], platforms
    # Conditionals only where the model has them (the DBN's phase switch).
    assert auto["stablehlo.case"] == plain["stablehlo.case"], platforms
    assert auto == plain, (platforms, {k: (auto[k], plain[k]) for k in auto | plain
                                       if auto[k] != plain[k]})


def test_fast_paths_are_exported_for_cpu(tmp_path, monkeypatch):
  """The check above can fail: for CPU, 'auto' lowers to the fast paths."""
  config = _experiment_config("cifar_cnn")
  auto = _canonical_ops(_export_ops(_run(config, tmp_path / "a", monkeypatch), ("cpu",)))
  plain = _canonical_ops(_export_ops(_run(_plain(config), tmp_path / "p", monkeypatch),
                                     ("cpu",)))
  assert auto != plain


# Narrow layers for the tests that compile and run a model: which
# implementation 'auto' picks does not depend on the widths.
NARROW = {"cifar_cnn": {"model.kwargs.features": (8, 16, 16), "model.kwargs.dense": 16},
          "imdb_lstm": {"model.kwargs.embed_dim": 16, "model.kwargs.hidden_size": 16}}


def _train_params(config, workdir):
  config.async_checkpoints = False
  config.eval_every = config.num_steps
  loop.train_and_evaluate(config, str(workdir))
  from jaxdl import runs  # pylint: disable=g-import-not-at-top
  _, state, _ = runs.restore_state(str(workdir), config=config)
  return jax.tree.map(np.asarray, jax.device_get(state.params))


@pytest.mark.parametrize("exp,field,forced", [("cifar_cnn", "conv_impl", "fast"),
                                              ("imdb_lstm", "scan_impl", "fused")])
def test_auto_trains_bit_for_bit_like_the_forced_cpu_path(exp, field, forced, tmp_path,
                                                          monkeypatch):
  monkeypatch.setattr(loop, "load_dataset", lambda c, w: _synthetic_dataset(c))
  config = _experiment_config(exp, **NARROW[exp])
  assert config.model.kwargs.get(field, "auto") == "auto"
  got = _train_params(config, tmp_path / "auto")
  forced_config = _experiment_config(exp, **NARROW[exp])
  forced_config.model.kwargs[field] = forced
  want = _train_params(forced_config, tmp_path / "forced")
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_batches_per_transfer_auto_is_per_backend():
  assert platform.batches_per_transfer("auto", "cpu") == platform.CPU_BATCHES_PER_TRANSFER
  assert platform.batches_per_transfer("auto", "gpu") == 1
  assert platform.batches_per_transfer("auto", "tpu") == 1
  assert platform.batches_per_transfer(4, "cpu") == 4


def test_saved_forced_fast_paths_read_as_auto():
  cfg = {"model": {"kwargs": {"conv_impl": "fast", "scan_impl": "fused", "x": "fast"}},
         "gan": {"generator_kwargs": {"conv_impl": "xla"}}}
  got = platform.platform_neutral(cfg)
  assert got == {"model": {"kwargs": {"conv_impl": "auto", "scan_impl": "auto", "x": "fast"}},
                 "gan": {"generator_kwargs": {"conv_impl": "xla"}}}


def test_unknown_impl_is_one_config_error():
  from jaxdl.configs import ConfigError  # pylint: disable=g-import-not-at-top
  model = models.get_model("cnn", conv_impl="quick")
  with pytest.raises(ConfigError, match="conv_impl 'quick'.*'auto'"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


# --- forward-mode autodiff through every model, every implementation ---------

def _models_and_inputs(run):
  """(label, model, example input) for every model a run's task trains."""
  task, config = run.task, run.config
  x = run.batches(0)["inputs"]
  out = [(attr, getattr(task, attr), x) for attr in ("model", "discriminator")
         if hasattr(task, attr)]
  if hasattr(task, "generator"):
    z = np.random.default_rng(1).normal(size=(x.shape[0], task.latent_dim))
    out.append(("generator", task.generator, z.astype(np.float32)))
  return out


def _forward_mode(model, x, abstract=False):
  """(jitted fn, args): jvp (params and float inputs) and jacfwd (two scales)
  of `apply`, one jit around the forward-mode transforms (the pattern that
  `jaxdl.ops.platform` supports). `abstract`: the variables' shapes only (to
  lower, not to run: no init is compiled)."""
  x = x[:2]
  init = jax.eval_shape if abstract else lambda f, *a: jax.jit(f)(*a)
  variables = init(model.init, jax.random.PRNGKey(0), x)
  floats = jnp.issubdtype(x.dtype, jnp.floating)

  @jax.jit
  def both(variables, x):
    params = variables["params"]

    def f(p, x):
      return model.apply(dict(variables, params=p), x, train=False)[0]

    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(params)) + 1))
    dp = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), params)
    if floats:
      dx = jax.random.normal(next(keys), x.shape, x.dtype)
      primal, tangent = jax.jvp(f, (params, x), (dp, dx))
    else:
      primal, tangent = jax.jvp(lambda p: f(p, x), (params,), (dp,))

    def scaled(s):
      p = jax.tree.map(lambda v: v * s[0], params)
      return f(p, x * s[1] if floats else x)
    return primal, tangent, jax.jacfwd(scaled)(jnp.ones((2,), jnp.float32))

  return both, (variables, x)


@pytest.mark.parametrize("case", sorted(CASES) + ["cifar_cnn:fast", "imdb_lstm:fused"])
def test_forward_mode_autodiff_of_every_model(case, tmp_path, monkeypatch):
  """jax.jvp / jax.jacfwd of every model built from its experiment config
  ('auto', and the forced fast paths) lower to exactly the plain form's
  program (the fast paths' custom VJPs cannot be differentiated forward)."""
  name, _, forced = case.partition(":")
  exp, overrides = CASES[name]
  config = _experiment_config(exp, **overrides)
  if forced:
    config.model.kwargs[{"fast": "conv_impl", "fused": "scan_impl"}[forced]] = forced
  got = _models_and_inputs(_run(config, tmp_path / "auto", monkeypatch))
  want = _models_and_inputs(_run(_plain(config), tmp_path / "plain", monkeypatch))
  assert got and len(got) == len(want)
  for (label, model, x), (_, plain_model, _) in zip(got, want):
    fn, args = _forward_mode(model, x, abstract=True)
    plain_fn, plain_args = _forward_mode(plain_model, x, abstract=True)
    assert fn.lower(*args).as_text() == plain_fn.lower(*plain_args).as_text(), label


@pytest.mark.parametrize("case", ["cifar_cnn:fast", "imdb_lstm:fused"])
def test_forward_mode_values(case, tmp_path, monkeypatch):
  """Run end to end, forward mode through a forced fast path gives the plain
  form's jvp and jacfwd, and jacfwd agrees with reverse mode (jacrev)."""
  name, _, forced = case.partition(":")
  config = _experiment_config(CASES[name][0], **NARROW[name])
  config.model.kwargs[{"fast": "conv_impl", "fused": "scan_impl"}[forced]] = forced
  (_, model, x), = _models_and_inputs(_run(config, tmp_path, monkeypatch))
  fn, (variables, x2) = _forward_mode(model, x)
  primal, _, jac = fn(variables, x2)
  params = variables["params"]

  def scaled(s):
    p = jax.tree.map(lambda v: v * s[0], params)
    xs = x2 * s[1] if jnp.issubdtype(x2.dtype, jnp.floating) else x2
    return model.apply(dict(variables, params=p), xs, train=False)[0]
  ones = jnp.ones((2,), jnp.float32)
  rev = jax.jit(jax.jacrev(scaled))(ones)  # through the custom VJP
  np.testing.assert_allclose(np.asarray(jac), np.asarray(rev), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(primal), np.asarray(jax.jit(scaled)(ones)),
                             rtol=1e-5, atol=1e-6)


def test_forward_mode_falls_back_under_jvp_only():
  """The fast path itself still runs outside forward mode (reverse mode)."""
  from jaxdl.ops import layers  # pylint: disable=g-import-not-at-top
  conv, _, _ = layers.select("fast", "--conv_impl")
  module = conv(4, (3, 3))
  x = jnp.ones((2, 6, 6, 3))
  variables = module.init(jax.random.PRNGKey(0), x)
  assert "custom_vjp" in str(jax.make_jaxpr(lambda v: module.apply(v, x))(variables))
  jvp_jaxpr = str(jax.make_jaxpr(lambda v: jax.jvp(lambda w: module.apply(w, x),
                                                   (v,), (v,)))(variables))
  assert "custom_vjp" not in jvp_jaxpr and "conv_general_dilated" in jvp_jaxpr
