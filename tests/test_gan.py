"""GAN on real MNIST, the Frechet distance, and the FID classifier cache."""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import task_steps
from jaxdl import fid, models, parallel
from jaxdl.train.engine import Engine
from jaxdl.train.gan import GANTask
from jaxdl.train.state import TrainState


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(500, 4))
  mu, sigma = fid.feature_stats(f)
  assert mu.shape == (4,) and sigma.shape == (4, 4)
  np.testing.assert_allclose(sigma, np.cov(f.T), rtol=1e-12)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6
  # Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(fid.frechet_distance(m1, np.diag(a), m2, np.diag(b)), expected,
                             rtol=1e-9)
  # A rotated copy of a covariance has the same distance as the unrotated pair.
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  np.testing.assert_allclose(
      fid.frechet_distance(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T),
      expected, rtol=1e-6)
  # Singular covariances (fewer samples than dimensions) still give a number.
  few = rng.normal(size=(3, 10))
  m, s = fid.feature_stats(few)
  assert np.isfinite(fid.frechet_distance(m, s, np.zeros(10), np.eye(10)))


def test_dcgan_models():
  # The default (brief) layout, by shape only: z 100 -> Dense 7*7*128 -> ... -> 28x28x1.
  g = models.get_model("dcgan_generator")
  shapes = jax.eval_shape(g.init, jax.random.PRNGKey(0), jnp.zeros((2, 100)))
  assert shapes["params"]["Dense_0"]["kernel"].shape == (100, 7 * 7 * 128)
  assert shapes["params"]["ConvTranspose_0"]["kernel"].shape == (5, 5, 128, 64)
  assert shapes["params"]["ConvTranspose_1"]["kernel"].shape == (5, 5, 64, 1)
  assert "batch_stats" in shapes
  d_shapes = jax.eval_shape(models.get_model("dcgan_discriminator").init,
                            jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
  assert d_shapes["params"]["Conv_1"]["kernel"].shape == (4, 4, 64, 128)
  # A small one, run: tanh range, batch-norm statistics returned as model state.
  g = models.get_model("dcgan_generator", features=(16, 8), kernel_size=3)
  d = models.get_model("dcgan_discriminator", features=(8, 16))
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 100))
  gv = jax.jit(g.init)(jax.random.PRNGKey(1), z)
  img, state = jax.jit(lambda v, z: g.apply(v, z, train=True))(gv, z)
  assert img.shape == (3, 28, 28, 1) and float(jnp.abs(img).max()) <= 1.0
  assert not np.allclose(state["batch_stats"]["BatchNorm_0"]["mean"],
                         gv["batch_stats"]["BatchNorm_0"]["mean"])
  dv = jax.jit(d.init)(jax.random.PRNGKey(2), img)
  logits, _ = jax.jit(d.apply)(dv, img)
  assert logits.shape == (3,)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
  from jaxdl.data import sources
  train, test, info = sources.load_image_dataset("mnist", mnist_dir)
  return (np.asarray(train.arrays[0][:20000], np.float32) / 255.0,
          np.asarray(train.arrays[1][:20000]),
          np.asarray(test.arrays[0][:2000], np.float32) / 255.0,
          np.asarray(test.arrays[1][:2000]), info)


def _config(workdir):
  return ml_collections.ConfigDict({
      "gan": {"generator_kwargs": {"features": (64, 32), "kernel_size": 4},
              "discriminator_kwargs": {"features": (32, 64)},
              "fid_num_samples": 2000, "fid_reference_size": 2000,
              "fid_classifier_steps": 300,
              "fid_classifier_path": os.path.join(workdir, "fid_classifier.msgpack")},
      "optimizer": {"name": "adam", "learning_rate": 5e-4, "b1": 0.5}})


def test_gan_task_in_the_sharded_engine(mnist, tmp_path):
  """A few steps through the engine (batch sharded over 4 devices, batch norm
  statistics in model_state), eval sums and the sample grid."""
  x, _, xt, _, info = mnist
  cfg = _config(str(tmp_path))
  cfg.gan.fid = False
  task = GANTask(cfg, info)
  mesh = parallel.make_mesh()
  engine = Engine(task, mesh, {"inputs": x[:64]})
  state = engine.init_state(0)
  assert set(state.params) == set(state.opt_state) == {"generator", "discriminator"}
  bs0 = parallel.to_host(state.model_state["generator"]["batch_stats"])
  for s in range(3):
    batch = parallel.global_batch({"inputs": x[64 * s:64 * s + 64]}, mesh)
    state, m = engine.train_step(state, batch)
    jax.block_until_ready(m)  # no unbounded run-ahead (see test_dbn)
  assert set(m) >= {"d_loss", "g_loss", "d_real", "d_fake"}
  assert 0 < float(m["d_real"]) < 1 and 0 < float(m["d_fake"]) < 1
  bs1 = parallel.to_host(state.model_state["generator"]["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(bs0), jax.tree.leaves(bs1)))
  ev = engine.evaluate(state, [{"inputs": xt[:64], "mask": np.ones(64, np.float32)}])
  assert set(ev) >= {"d_real", "d_fake", "d_loss", "g_loss"} and 0 < ev["d_real"] < 1
  out = task.on_evaluate(state, str(tmp_path), 3)
  assert set(out) == {"samples"} and not os.listdir(tmp_path)  # a task writes no file
  assert out["samples"].shape == (8 * 28 + 9 * 2, 8 * 28 + 9 * 2, 1)


@pytest.mark.slow
def test_short_gan_run_covers_all_digits(mnist, tmp_path, monkeypatch):
  """250 steps, batch 64, of a half-width DCGAN (G 64/32 channels, 4x4 kernels;
  D 32/64) with Adam(5e-4, b1=0.5) on 20k MNIST training images (one device,
  plain jit). FID features: a small CNN trained 300 steps, 2000 samples vs
  2000 test images. Measured: Frechet distance 485 (untrained) -> 65; class
  shares 0.044..0.174, all 10 digits; ~50 s on 2 loaded cores (classifier 12 s,
  steps 36 s). With other seeds (script, same settings): FD ~500 -> 63..65,
  smallest class share 0.01..0.03, largest 0.18..0.19."""
  x, y, xt, yt, info = mnist
  workdir = str(tmp_path)
  task = GANTask(_config(workdir), info)
  task.set_reference_data(x, y, xt)
  t0 = time.time()
  scorer = task.scorer(workdir)
  assert os.path.exists(os.path.join(workdir, "fid_classifier.msgpack"))
  assert scorer.accuracy(xt, yt) > 0.95
  t1 = time.time()

  state, step = task_steps(task, {"inputs": x[:64]})

  untrained = task.on_evaluate(state, workdir, 0)
  rng = np.random.default_rng(0)
  for _ in range(250):
    state, m = step(state, x[rng.integers(0, len(x), 64)])
  jax.block_until_ready(m)
  t2 = time.time()
  trained = task.on_evaluate(state, workdir, 250)
  shares = [trained[f"class_share_{c}"] for c in range(10)]
  print(f"GAN test: classifier {t1 - t0:.0f} s, 250 steps {t2 - t1:.0f} s, total "
        f"{time.time() - t0:.0f} s; FD {untrained['frechet_distance']:.1f} -> "
        f"{trained['frechet_distance']:.1f}; shares {np.round(shares, 3)}")
  assert min(shares) >= 0.005, shares         # every digit: >= 10 of 2000 samples
  assert trained["max_class_share"] <= 0.25, shares
  assert trained["frechet_distance"] < 0.5 * untrained["frechet_distance"], (untrained, trained)
  assert trained["samples"].shape == (8 * 28 + 9 * 2, 8 * 28 + 9 * 2, 1)

  # A resumed run reuses the cached classifier instead of training another.
  def no_training(*a, **k):
    raise AssertionError("classifier retrained")
  monkeypatch.setattr(fid, "train_classifier", no_training)
  again = GANTask(_config(workdir), info)
  again.set_reference_data(x, y, xt)
  samples = task.sample(state, 500)
  np.testing.assert_allclose(again.scorer(workdir).score(samples)["frechet_distance"],
                             scorer.score(samples)["frechet_distance"], rtol=1e-5)
