"""Numerics against float64 NumPy: normalisation variance, RBM pseudo-likelihood.

Both bugs were float32 cancellations: E[x^2] - E[x]^2 when |mean| >> std, and
F(v') - F(v) as a difference of two large free energies.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.models import rbm


def _feed_offset_inputs(model, variables, x, layer_type, *, train):
  """Runs `model` with every `layer_type` call's input replaced by 1000 + N(0, 1)
  in float32, so each layer is tested as the model configures it, whatever comes
  before it. Returns [(module path, input, output, the layer's variables after
  the call)], arrays as float64 NumPy. Eager: compiling a ResNet costs more."""
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    if not isinstance(context.module, layer_type) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    key = jax.random.fold_in(jax.random.PRNGKey(1), len(calls))
    xin = 1000 + jax.random.normal(key, args[0].shape, jnp.float32)
    out = next_fun(xin, *args[1:], **kwargs)
    calls.append((context.module.path,
                  *jax.tree.map(lambda a: np.asarray(a, np.float64),
                                (xin, out, context.module.variables))))
    return out

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, train=train)
  return calls


def _random_variables(model, example):
  """Variables of `model`'s layout: params N(0, 0.5^2), batch stats as init makes
  them (mean 0, var 1). Eager `model.init` compiles every initializer (~25 s for
  a small ResNet on a loaded CPU); eval_shape only traces."""
  rng = np.random.default_rng(0)

  def fill(path, s):
    if path[-1].key in ("mean", "var"):
      return np.full(s.shape, float(path[-1].key == "var"), s.dtype)
    return rng.normal(0, 0.5, s.shape).astype(s.dtype)

  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), example)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _normalised(x, axes, eps):
  x = np.asarray(x, np.float64)
  mu = x.mean(axes, keepdims=True)
  var = ((x - mu) ** 2).mean(axes, keepdims=True)  # two-pass, in float64
  return (x - mu) / np.sqrt(var + eps), var


@pytest.mark.parametrize("name,kwargs,example", [
    ("resnet", {"blocks_per_stage": 1, "width": 4}, np.zeros((16, 8, 8, 3), np.float32)),
    ("dcgan_generator", {"features": (8, 4), "kernel_size": 3, "output_shape": (8, 8, 1)},
     np.zeros((16, 10), np.float32)),
])
def test_batch_norm_matches_float64_when_mean_dominates(name, kwargs, example):
  # 1000 + N(0, 1): with flax's default one-pass E[x^2] - E[x]^2 the outputs were
  # off by up to 0.28 here; two-pass (use_fast_variance=False): <= 6e-4, the
  # running variance to ~1e-7.
  m = models.get_model(name, **kwargs)
  variables = _random_variables(m, example)
  calls = _feed_offset_inputs(m, variables, example, nn.BatchNorm, train=True)
  assert len(calls) >= 2, [c[0] for c in calls]
  for path, xin, out, v in calls:
    axes = tuple(range(xin.ndim - 1))
    z, var = _normalised(xin, axes, 1e-5)
    want = z * np.asarray(v["params"]["scale"]) + np.asarray(v["params"]["bias"])
    np.testing.assert_allclose(out, want, atol=2e-3, err_msg=str(path))
    # The running variance eval uses: momentum 0.9 from the initial 1.
    np.testing.assert_allclose(v["batch_stats"]["var"], 0.9 + 0.1 * var.ravel(),
                               rtol=1e-5, err_msg=str(path))


def test_layer_norm_matches_float64_when_mean_dominates():
  # The same cancellation over the feature axis in the transformer's LayerNorms.
  m = models.get_model("transformer_classifier", vocab_size=50, d_model=64, num_heads=2,
                       num_layers=1, mlp_dim=32, max_len=16)
  tokens = np.ones((4, 16), np.int32)
  variables = _random_variables(m, tokens)
  calls = _feed_offset_inputs(m, variables, tokens, nn.LayerNorm, train=False)
  assert len(calls) >= 3, [c[0] for c in calls]
  for path, xin, out, v in calls:
    z, _ = _normalised(xin, (-1,), 1e-6)
    want = z * np.asarray(v["params"]["scale"]) + np.asarray(v["params"]["bias"])
    np.testing.assert_allclose(out, want, atol=2e-3, err_msg=str(path))


def _np_free_energy(W, b_v, b_h, v):
  return -v @ b_v - np.logaddexp(0, b_h + v @ W).sum(-1)


def test_rbm_pseudo_likelihood_matches_float64_at_mnist_size():
  # 784 x 500 with N(0, 0.01^2) weights plus 5% trained-like N(0, 1) ones and
  # biases of a trained MNIST RBM's scale. |F| is in the hundreds, so F(v') - F(v)
  # as a difference of float32 free energies was off by up to 0.031 nats per
  # example here (x 784); the direct one-bit difference by <= 3.3e-4 (mean 7e-5),
  # the float32 rounding of results of up to ~4100 nats.
  rng = np.random.default_rng(0)
  V, H, B = 784, 500, 64
  W = rng.normal(0, 0.01, (V, H)) + (rng.random((V, H)) < 0.05) * rng.normal(0, 1, (V, H))
  b_v, b_h = rng.normal(-2, 1.5, V), rng.normal(-1, 1, H)
  v = (rng.random((B, V)) < 0.15).astype(np.float64)
  params = {"W": jnp.asarray(W, jnp.float32), "b_v": jnp.asarray(b_v, jnp.float32),
            "b_h": jnp.asarray(b_h, jnp.float32)}
  key = jax.random.PRNGKey(3)
  pl = np.asarray(rbm.pseudo_likelihood(params, jnp.asarray(v, jnp.float32), key))
  # The same bits, the same float32-rounded parameters, in float64.
  W, b_v, b_h = (np.asarray(params[k], np.float64) for k in ("W", "b_v", "b_h"))
  idx = np.asarray(jax.random.randint(key, (B,), 0, V))
  v_flip = v.copy()
  v_flip[np.arange(B), idx] = 1 - v_flip[np.arange(B), idx]
  gap = _np_free_energy(W, b_v, b_h, v_flip) - _np_free_energy(W, b_v, b_h, v)
  want = -V * np.logaddexp(0, -gap)  # V log sigmoid(F(v') - F(v))
  err = np.abs(pl - want)
  assert err.max() < 1e-3, (err.max(), err.mean())
