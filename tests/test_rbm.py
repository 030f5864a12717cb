"""RBM: conditionals and free energy vs NumPy, CD/PCD learning on real MNIST."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import task_steps
from jaxdl import models, parallel
from jaxdl.models import rbm
from jaxdl.train.engine import Engine
from jaxdl.train.rbm import RBMTask


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_free_energy(W, bv, bh, v):
  # F(v) = -v.b_v - sum_j log(1 + exp(b_h_j + sum_i v_i W_ij)), written out.
  out = np.zeros(v.shape[0])
  for n in range(v.shape[0]):
    act = bh + v[n] @ W
    out[n] = -np.dot(v[n], bv) - np.sum(np.log1p(np.exp(act)))
  return out


@pytest.fixture(scope="module")
def small_params():
  rng = np.random.default_rng(0)
  V, H = 12, 7
  return {"W": rng.normal(0, 0.5, (V, H)).astype(np.float32),
          "b_v": rng.normal(0, 0.3, V).astype(np.float32),
          "b_h": rng.normal(0, 0.3, H).astype(np.float32)}


@pytest.fixture(scope="module")
def mnist_train(mnist_dir):
  from jaxdl.data import sources
  train, _, info = sources.load_image_dataset("mnist", mnist_dir)
  x, y = train.arrays
  return np.asarray(x[:3000], np.float32) / 255.0, np.asarray(y[:3000]), info


def test_conditionals_and_free_energy_match_numpy(small_params):
  p = small_params
  rng = np.random.default_rng(1)
  v = (rng.random((5, 12)) < 0.5).astype(np.float32)
  h = (rng.random((5, 7)) < 0.5).astype(np.float32)
  ph = np.array([[_np_sigmoid(p["b_h"][j] + sum(v[n, i] * p["W"][i, j] for i in range(12)))
                  for j in range(7)] for n in range(5)])
  pv = np.array([[_np_sigmoid(p["b_v"][i] + sum(p["W"][i, j] * h[n, j] for j in range(7)))
                  for i in range(12)] for n in range(5)])
  jp = jax.tree.map(jnp.asarray, p)
  np.testing.assert_allclose(rbm.p_h_given_v(jp, v), ph, atol=1e-5)
  np.testing.assert_allclose(rbm.p_v_given_h(jp, h), pv, atol=1e-5)
  np.testing.assert_allclose(rbm.free_energy(jp, v),
                             _np_free_energy(p["W"], p["b_v"], p["b_h"], v), rtol=1e-5, atol=1e-5)
  # F is the marginal over h of the energy: check with brute force on tiny H.
  Ws, bv, bh = p["W"][:, :3], p["b_v"], p["b_h"][:3]
  hs = np.array([[(k >> j) & 1 for j in range(3)] for k in range(8)], np.float64)
  energy = (v @ bv)[:, None] + (hs @ bh)[None] + v @ Ws @ hs.T  # -E(v, h), [5, 8]
  brute = -np.log(np.sum(np.exp(energy), 1))
  small = {"W": jnp.asarray(Ws), "b_v": jnp.asarray(bv), "b_h": jnp.asarray(bh)}
  np.testing.assert_allclose(rbm.free_energy(small, v), brute, rtol=1e-5, atol=1e-5)


def test_cd_gradient_is_data_minus_model_statistics(small_params):
  """grad of F(data) - F(sg(neg)) equals -(<v h>_data - <v h>_model), as in the textbook."""
  jp = jax.tree.map(jnp.asarray, small_params)
  rng = np.random.default_rng(2)
  v = (rng.random((6, 12)) < 0.5).astype(np.float32)
  key = jax.random.PRNGKey(3)
  grads, v_neg = rbm.cd_gradients(jp, v, key, k=2)
  v_neg = np.asarray(v_neg)
  assert set(np.unique(v_neg)) <= {0.0, 1.0}
  p = small_params
  ph_d = _np_sigmoid(v @ p["W"] + p["b_h"])
  ph_m = _np_sigmoid(v_neg @ p["W"] + p["b_h"])
  np.testing.assert_allclose(grads["W"], -(v.T @ ph_d - v_neg.T @ ph_m) / 6, atol=1e-5)
  np.testing.assert_allclose(grads["b_v"], -(v.mean(0) - v_neg.mean(0)), atol=1e-5)
  np.testing.assert_allclose(grads["b_h"], -(ph_d.mean(0) - ph_m.mean(0)), atol=1e-5)
  # The negatives are the result of k=2 Gibbs sweeps with the same key.
  np.testing.assert_array_equal(v_neg, rbm.gibbs_chain(jp, v, key, 2)[0])


def test_pseudo_likelihood_matches_numpy(small_params):
  p = small_params
  jp = jax.tree.map(jnp.asarray, p)
  rng = np.random.default_rng(4)
  v = (rng.random((8, 12)) < 0.5).astype(np.float32)
  key = jax.random.PRNGKey(5)
  pl = np.asarray(rbm.pseudo_likelihood(jp, v, key))
  idx = np.asarray(jax.random.randint(key, (8,), 0, 12))  # the bits it flips
  v_ = v.copy()
  v_[np.arange(8), idx] = 1 - v_[np.arange(8), idx]
  fe = _np_free_energy(p["W"], p["b_v"], p["b_h"], v)
  fe_ = _np_free_energy(p["W"], p["b_v"], p["b_h"], v_)
  np.testing.assert_allclose(pl, 12 * -np.log1p(np.exp(-(fe_ - fe))), rtol=1e-5)
  assert (pl < 0).all()


def test_registry_and_layout():
  m = models.get_model("rbm", n_visible=20, n_hidden=5)
  variables = m.init(jax.random.PRNGKey(0), jnp.zeros((2, 20)))
  assert jax.tree.map(jnp.shape, variables["params"]) == {"W": (20, 5), "b_v": (20,), "b_h": (5,)}
  out, _ = m.apply(variables, jnp.ones((2, 20)))
  np.testing.assert_allclose(out, rbm.p_h_given_v(variables["params"], jnp.ones((2, 20))))


@pytest.mark.slow
def test_cd1_lowers_reconstruction_error_on_mnist(mnist_train):
  """100 CD-1 steps, batch 64, from the first 3000 MNIST training images used as
  Bernoulli probabilities (not binarised); momentum SGD lr 0.05."""
  x, _, info = mnist_train
  cfg = ml_collections.ConfigDict({"model": {"kwargs": {"n_hidden": 64}},
                                   "rbm": {"cd_k": 1, "binarize": "none"}})
  task = RBMTask(cfg, info)
  state, step = task_steps(task, {"inputs": x[:64]})

  held = {"inputs": x[2000:2500], "mask": np.ones(500, np.float32)}
  before = {k: float(v) / 500 for k, v in jax.jit(task.eval_metrics)(state, held).items()}
  rng = np.random.default_rng(0)
  for _ in range(100):
    state, m = step(state, x[rng.integers(0, 2000, 64)])
  after = {k: float(v) / 500 for k, v in jax.jit(task.eval_metrics)(state, held).items()}
  # Measured: recon error 0.231 -> 0.039; pseudo-likelihood -543 -> -144.
  assert after["recon_error"] < 0.5 * before["recon_error"], (before, after)
  assert after["pseudo_likelihood"] > before["pseudo_likelihood"] + 100, (before, after)
  assert np.isfinite(after["free_energy_gap"])


def test_pcd_chains_live_in_model_state_and_run_sharded(mnist_train, tmp_path):
  x, _, info = mnist_train
  cfg = ml_collections.ConfigDict({"model": {"kwargs": {"n_hidden": 32}},
                                   "rbm": {"persistent": True, "num_chains": 16, "cd_k": 1}})
  task = RBMTask(cfg, info)
  mesh = parallel.make_mesh()
  engine = Engine(task, mesh, {"inputs": x[:64]})
  state = engine.init_state(0)
  chains0 = np.asarray(parallel.to_host(state.model_state["chains"]))
  assert chains0.shape == (16, 784)
  state, m = engine.train_step(state, parallel.global_batch({"inputs": x[:64]}, mesh))
  chains1 = np.asarray(parallel.to_host(state.model_state["chains"]))
  assert chains1.shape == (16, 784) and not np.array_equal(chains0, chains1)
  assert set(np.unique(chains1)) <= {0.0, 1.0}
  assert np.isfinite(float(m["recon_error"]))
  # The next update continues these chains: replay its Gibbs sweep by hand.
  params1 = parallel.to_host(state.params)
  rng = parallel.to_host(state.rng)
  state, _ = engine.train_step(state, parallel.global_batch({"inputs": x[64:128]}, mesh))
  _, kg = jax.random.split(jax.random.fold_in(rng, 1))
  expected, _ = rbm.gibbs_chain(params1, chains1, kg, 1)
  chains2 = np.asarray(parallel.to_host(state.model_state["chains"]))
  assert np.mean(chains2 == np.asarray(expected)) > 0.999
  ev = engine.evaluate(state, [{"inputs": x[:64], "mask": np.ones(64, np.float32)}])
  assert set(ev) >= {"recon_error", "free_energy", "free_energy_gap", "pseudo_likelihood"}
  out = task.on_evaluate(state, str(tmp_path), 1)
  assert out["filters"].shape[1] > 28 * 5 and out["chains"].ndim == 3
