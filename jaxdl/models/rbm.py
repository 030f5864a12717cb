"""Bernoulli-Bernoulli restricted Boltzmann machine as pure functions.

Parameters (a flax 'params' dict, created by the `RBM` linen module):
    W   [V, H]  visible-hidden weights (N(0, 0.01^2) as in Hinton's guide),
    b_v [V]     visible biases,   b_h [H]  hidden biases.
Energy E(v, h) = -v.b_v - h.b_h - v W h; summing h out gives the free energy
    F(v) = -v.b_v - sum_j softplus(b_h_j + (v W)_j),
and p(v) = exp(-F(v)) / Z. The log-likelihood gradient is
    -d/dtheta [F(v_data) - F(v_model)]
(data term minus model term), so descending the mean of
F(v_data) - F(stop_gradient(v_neg)) with any optax optimizer is (P)CD
learning; `jax.grad` writes the usual <v h>_data - <v h>_model updates for us.

W is one matrix used in both directions (v -> h and h -> v), which is why it is
a raw `self.param` and not an `nn.Dense`. Everything below works on the params
dict alone and imports without the rest of jaxdl.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.base import Model, from_flax

Params = dict[str, Any]


class RBM(nn.Module):
  """Holds W, b_v, b_h; calling it gives p(h = 1 | v) (the RBM as a feature layer)."""

  n_visible: int = 784
  n_hidden: int = 500
  weight_std: float = 0.01

  def setup(self):
    self.W = self.param("W", nn.initializers.normal(self.weight_std),
                        (self.n_visible, self.n_hidden))
    self.b_v = self.param("b_v", nn.initializers.zeros, (self.n_visible,))
    self.b_h = self.param("b_h", nn.initializers.zeros, (self.n_hidden,))

  def __call__(self, v, *, train: bool = False):
    del train
    v = v.reshape((v.shape[0], -1))
    return jax.nn.sigmoid(v @ self.W + self.b_h)


def flatten(v: jax.Array) -> jax.Array:
  return v.reshape((v.shape[0], -1))


def free_energy(params: Params, v: jax.Array) -> jax.Array:
  """F(v) per example: -v.b_v - sum_j softplus(b_h + v W). v [B, V] (or [B, ...])."""
  v = flatten(v)
  return -v @ params["b_v"] - jnp.sum(jax.nn.softplus(v @ params["W"] + params["b_h"]), -1)


def p_h_given_v(params: Params, v: jax.Array) -> jax.Array:
  """p(h_j = 1 | v) = sigmoid(b_h + v W), [B, H]."""
  return jax.nn.sigmoid(flatten(v) @ params["W"] + params["b_h"])


def p_v_given_h(params: Params, h: jax.Array) -> jax.Array:
  """p(v_i = 1 | h) = sigmoid(b_v + W h), [B, V]."""
  return jax.nn.sigmoid(h @ params["W"].T + params["b_v"])


def sample_bernoulli(key: jax.Array, p: jax.Array) -> jax.Array:
  return jax.random.bernoulli(key, p).astype(p.dtype)


def gibbs_step(params: Params, v: jax.Array, key: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """One v -> h -> v' sweep: (binary sample v' [B, V], its probabilities p(v'|h))."""
  kh, kv = jax.random.split(key)
  h = sample_bernoulli(kh, p_h_given_v(params, v))
  pv = p_v_given_h(params, h)
  return sample_bernoulli(kv, pv), pv


def gibbs_chain(params: Params, v: jax.Array, key: jax.Array, k: int = 1
                ) -> tuple[jax.Array, jax.Array]:
  """k Gibbs sweeps from v: (last binary sample, its probabilities)."""
  v = flatten(v)

  def body(carry, kk):
    v, _ = carry
    return gibbs_step(params, v, kk), None

  (v_s, p_v), _ = jax.lax.scan(body, (v, v), jax.random.split(key, k))
  return v_s, p_v


def contrastive_loss(params: Params, v_data: jax.Array, v_neg: jax.Array) -> jax.Array:
  """mean F(v_data) - mean F(v_neg), the negatives held fixed (stop_gradient).

  Its gradient is the negative of the (CD/PCD) log-likelihood gradient
  estimate; its value is the free-energy gap between data and samples.
  """
  return (jnp.mean(free_energy(params, v_data))
          - jnp.mean(free_energy(params, jax.lax.stop_gradient(v_neg))))


def cd_gradients(params: Params, v_data: jax.Array, key: jax.Array, k: int = 1
                 ) -> tuple[Params, jax.Array]:
  """CD-k: negatives from k Gibbs sweeps started at the data. (grads, v_neg)."""
  v_data = flatten(v_data)
  v_neg, _ = gibbs_chain(params, v_data, key, k)
  grads = jax.grad(contrastive_loss)(params, v_data, v_neg)
  return grads, v_neg


def pcd_gradients(params: Params, v_data: jax.Array, chains: jax.Array,
                  key: jax.Array, k: int = 1) -> tuple[Params, jax.Array]:
  """Persistent CD (Tieleman 2008): the chains carry over between updates.

  Returns (grads, new chains); the new chains are the negatives. The number of
  chains need not equal the batch size.
  """
  new_chains, _ = gibbs_chain(params, chains, key, k)
  grads = jax.grad(contrastive_loss)(params, flatten(v_data), new_chains)
  return grads, new_chains


def reconstruction(params: Params, v: jax.Array) -> jax.Array:
  """Mean-field reconstruction p(v | h = p(h | v)), deterministic, [B, V]."""
  return p_v_given_h(params, p_h_given_v(params, v))


def reconstruction_error(params: Params, v: jax.Array) -> jax.Array:
  """Per-example mean squared error of the mean-field reconstruction, [B]."""
  v = flatten(v)
  d = reconstruction(params, v) - v
  return jnp.mean(d * d, -1)


def _softplus_difference(a: jax.Array, d: jax.Array) -> jax.Array:
  """softplus(a + d) - softplus(a), without subtracting two large numbers.

  = log1p(sigmoid(a) * expm1(d)); for a > 0 the same identity applied to
  softplus(x) = x + softplus(-x) gives d + log1p(sigmoid(-a) * expm1(-d)), so the
  log1p argument always stays above -1/2 (no log1p(-1 + tiny) for a >> 0, d << 0).
  For |d| > 20 (expm1 would overflow near 88) the plain difference is as exact
  as a + d itself.
  """
  pos = a > 0
  dc = jnp.clip(d, -20, 20)
  r = jnp.log1p(jax.nn.sigmoid(-jnp.abs(a)) * jnp.expm1(jnp.where(pos, -dc, dc)))
  small = jnp.where(pos, dc + r, r)
  return jnp.where(jnp.abs(d) > 20, jax.nn.softplus(a + d) - jax.nn.softplus(a), small)


def pseudo_likelihood(params: Params, v: jax.Array, key: jax.Array) -> jax.Array:
  """Stochastic pseudo-log-likelihood per example, [B] (nats, <= 0).

  As scikit-learn's BernoulliRBM.score_samples: flip one uniformly chosen bit
  i per example and return V * log sigmoid(F(v_flipped) - F(v)), an unbiased
  estimate of sum_i log p(v_i | v_-i) for binary v.

  F(v') - F(v) is computed directly, not as a difference of two free energies
  (|F| is in the hundreds at 784 x 500, so float32 lost 0.03-0.07 nats per
  example that way). With d = 1 - 2 v_i the change of v_i and a = b_h + v W,
  F(v') - F(v) = -d b_v_i - sum_j [softplus(a_j + d W_ij) - softplus(a_j)].
  """
  v = flatten(v)
  b, n = v.shape
  idx = jax.random.randint(key, (b,), 0, n)
  d = 1 - 2 * jnp.take_along_axis(v, idx[:, None], 1)  # [B, 1]: +1 sets v_i, -1 clears it
  a = v @ params["W"] + params["b_h"]
  gap = (-d[:, 0] * params["b_v"][idx]
         - jnp.sum(_softplus_difference(a, d * params["W"][idx]), -1))
  return n * jax.nn.log_sigmoid(gap)


def make_rbm(n_visible: int = 784, n_hidden: int = 500, weight_std: float = 0.01) -> Model:
  """`apply` returns p(h|v); the sampling/learning functions above take params."""
  return from_flax(RBM(n_visible, n_hidden, weight_std), name="rbm")


MODELS = {"rbm": make_rbm}

EXAMPLES = {"rbm": ("mnist_dbn", {"task": "rbm", "model.kwargs": {"n_hidden": 64}})}
