"""GAN training (Goodfellow et al. 2014) with the non-saturating generator loss.

One `train_update` = one discriminator step then one generator step, each with
its own optax optimizer. params, opt_state and model_state are dicts
{'generator': ..., 'discriminator': ...}. Real images arrive in [0, 1] and are
mapped to [-1, 1] (the generator's tanh range) here.

Config fields (defaults in brackets):
  gan.latent_dim [100]            size of z ~ N(0, I)
  gan.generator ['dcgan_generator'], gan.generator_kwargs [{}]
  gan.discriminator ['dcgan_discriminator'], gan.discriminator_kwargs [{}]
  gan.g_optimizer, gan.d_optimizer  optimizer configs (see jaxdl.train.optim);
      each defaults to `config.optimizer` when that exists, else Adam(2e-4, b1=0.5)
  gan.sample_seed [0]             seed of the fixed noise for grids/eval
  gan.num_grid_samples [64]       8x8 grid `workdir/samples_{step:06d}.png`
  gan.fid [True]                  compute the Frechet distance in on_evaluate
  gan.fid_num_samples [5000], gan.fid_reference_size [10000] (real test images)
  gan.fid_classifier_path ['']    msgpack of a FeatureClassifier; default
      `workdir/fid_classifier.msgpack`, trained there on first use
  gan.fid_classifier_steps [500]
  dataset, data_dir               where the real images for FID come from
      (or call `set_reference_data`).
`default_config()` returns the `gan` section with these fields (optimizers set
to the DCGAN values). Inputs must not be mean/std-normalised (config.normalize).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import fid, images, models, parallel
from jaxdl.train import optim
from jaxdl.train.task import Task

_DEFAULT_OPT = {"name": "adam", "learning_rate": 2e-4, "b1": 0.5}


def _section(config: Any, name: str) -> ml_collections.ConfigDict:
  sec = config.get(name, None) if hasattr(config, "get") else None
  return ml_collections.ConfigDict(sec if sec is not None else {})


def _optimizer(cfg: Any, fallback: Any, total_steps: int):
  cfg = cfg if cfg is not None else fallback
  cfg = ml_collections.ConfigDict(cfg if cfg is not None else _DEFAULT_OPT)
  return optim.make_optimizer(cfg, total_steps)


def default_config() -> ml_collections.ConfigDict:
  """The `gan` section with every field at its default, for experiment configs
  (so `--config.gan.*` flags can override them). The optimizers are set to the
  DCGAN values here rather than falling back to `config.optimizer`."""
  return ml_collections.ConfigDict(dict(
      latent_dim=100, generator="dcgan_generator",
      generator_kwargs=ml_collections.ConfigDict(),
      discriminator="dcgan_discriminator",
      discriminator_kwargs=ml_collections.ConfigDict(),
      g_optimizer=ml_collections.ConfigDict(_DEFAULT_OPT),
      d_optimizer=ml_collections.ConfigDict(_DEFAULT_OPT),
      sample_seed=0, num_grid_samples=64, fid=True, fid_num_samples=5000,
      fid_reference_size=10000, fid_classifier_path="", fid_classifier_steps=500))


class GANTask(Task):
  """DCGAN on image batches; see the module docstring for the config."""

  name = "gan"
  best_metric = "frechet_distance"  # from on_evaluate
  best_mode = "min"

  def __init__(self, config: Any, info: dict, total_steps: int = 0):
    self.config, self.info = config, info
    g = _section(config, "gan")
    self.latent_dim = int(g.get("latent_dim", 100))
    gkw = dict(g.get("generator_kwargs", None) or {})
    if "input_shape" in info:
      gkw.setdefault("output_shape", tuple(info["input_shape"]))
    self.generator = models.get_model(g.get("generator", "dcgan_generator"), **gkw)
    self.discriminator = models.get_model(g.get("discriminator", "dcgan_discriminator"),
                                          **dict(g.get("discriminator_kwargs", None) or {}))
    base = config.get("optimizer", None) if hasattr(config, "get") else None
    self.g_tx, self.schedule = _optimizer(g.get("g_optimizer", None), base, total_steps)
    self.d_tx, _ = _optimizer(g.get("d_optimizer", None), base, total_steps)
    self.sample_seed = int(g.get("sample_seed", 0))
    self.num_grid_samples = int(g.get("num_grid_samples", 64))
    self.use_fid = bool(g.get("fid", True))
    self.fid_num_samples = int(g.get("fid_num_samples", 5000))
    self.fid_reference_size = int(g.get("fid_reference_size", 10000))
    self.fid_classifier_path = g.get("fid_classifier_path", "") or ""
    self.fid_classifier_steps = int(g.get("fid_classifier_steps", 500))
    self._reference = None  # (train_x, train_y, test_x)
    self._scorer = None
    self._generate = jax.jit(self._generate_fn)

  # --- pure functions -------------------------------------------------------

  def noise(self, key: jax.Array, n: int) -> jax.Array:
    return jax.random.normal(key, (n, self.latent_dim), jnp.float32)

  def init(self, key, batch):
    kg, kd = jax.random.split(key)
    x = batch["inputs"]
    g_vars = self.generator.init(kg, jnp.zeros((1, self.latent_dim), jnp.float32))
    d_vars = self.discriminator.init(kd, jnp.zeros((1,) + tuple(x.shape[1:]), jnp.float32))
    gp, gs = models.split_variables(g_vars)
    dp, ds = models.split_variables(d_vars)
    params = {"generator": gp, "discriminator": dp}
    opt_state = {"generator": self.g_tx.init(gp), "discriminator": self.d_tx.init(dp)}
    return params, opt_state, {"generator": gs, "discriminator": ds}

  def _g(self, params, state, z, train):
    return self.generator.apply({"params": params, **state}, z, train=train)

  def _d(self, params, state, x, train):
    return self.discriminator.apply({"params": params, **state}, x, train=train)

  def train_update(self, state, batch, key):
    x = batch["inputs"].astype(jnp.float32) * 2.0 - 1.0
    n = x.shape[0]
    kd, kg = jax.random.split(key)
    gp, dp = state.params["generator"], state.params["discriminator"]
    gs, ds = state.model_state["generator"], state.model_state["discriminator"]

    # Discriminator: minimise -log D(x) - log(1 - D(G(z))).
    fake, gs = self._g(gp, gs, self.noise(kd, n), True)
    fake = jax.lax.stop_gradient(fake)

    def d_loss_fn(dp):
      real_logits, ds1 = self._d(dp, ds, x, True)
      fake_logits, ds2 = self._d(dp, ds1, fake, True)
      loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
      return loss, (ds2, real_logits, fake_logits)

    (d_loss, (ds, real_logits, fake_logits)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(dp)
    d_updates, d_opt = self.d_tx.update(d_grads, state.opt_state["discriminator"], dp)
    dp = optax.apply_updates(dp, d_updates)

    # Generator (non-saturating): minimise -log D(G(z)) against the new D.
    def g_loss_fn(gp):
      fake, gs1 = self._g(gp, gs, self.noise(kg, n), True)
      logits, _ = self._d(dp, ds, fake, True)
      return jnp.mean(jax.nn.softplus(-logits)), (gs1, logits)

    (g_loss, (gs, g_logits)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(gp)
    g_updates, g_opt = self.g_tx.update(g_grads, state.opt_state["generator"], gp)
    gp = optax.apply_updates(gp, g_updates)

    new_state = state.replace(
        params={"generator": gp, "discriminator": dp},
        opt_state={"generator": g_opt, "discriminator": d_opt},
        model_state={"generator": gs, "discriminator": ds})
    metrics = {
        "d_loss": d_loss, "g_loss": g_loss,
        "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),   # D(x)
        "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),   # D(G(z)) before the D step
        "d_fake_after": jnp.mean(jax.nn.sigmoid(g_logits)),
        "d_grad_norm": optax.tree.norm(d_grads),
        "g_grad_norm": optax.tree.norm(g_grads),
        "learning_rate": self.schedule(state.step),
    }
    return new_state, metrics

  def eval_metrics(self, state, batch):
    """D on held-out real images and on fixed-noise samples (per-example sums)."""
    x = batch["inputs"].astype(jnp.float32) * 2.0 - 1.0
    mask = batch["mask"]
    gp, dp = state.params["generator"], state.params["discriminator"]
    gs, ds = state.model_state["generator"], state.model_state["discriminator"]
    real_logits, _ = self._d(dp, ds, x, False)
    z = self.noise(jax.random.PRNGKey(self.sample_seed + 1), x.shape[0])
    fake, _ = self._g(gp, gs, z, False)
    fake_logits, _ = self._d(dp, ds, fake, False)
    d_loss = jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)
    return {"d_real": jnp.sum(mask * jax.nn.sigmoid(real_logits)),
            "d_fake": jnp.sum(mask * jax.nn.sigmoid(fake_logits)),
            "d_loss": jnp.sum(mask * d_loss),
            "g_loss": jnp.sum(mask * jax.nn.softplus(-fake_logits))}

  def _generate_fn(self, g_params, g_state, z):
    out, _ = self._g(g_params, g_state, z, False)
    return (out + 1.0) * 0.5

  # --- host side ------------------------------------------------------------

  def sample(self, state, n: int, seed: int | None = None, chunk: int = 500) -> np.ndarray:
    """n generator samples in [0, 1] (eval-mode batch norm) from a fixed seed."""
    gp = parallel.to_host(state.params["generator"])
    gs = parallel.to_host(state.model_state["generator"])
    seed = self.sample_seed if seed is None else seed
    z = np.asarray(self.noise(jax.random.PRNGKey(seed), n))
    out = []
    for s in range(0, n, chunk):
      zc = z[s:s + chunk]
      pad = chunk - len(zc) if n > chunk else 0  # one compiled shape per run
      if pad:
        zc = np.concatenate([zc, np.zeros((pad, zc.shape[1]), zc.dtype)])
      out.append(np.asarray(self._generate(gp, gs, zc))[:len(zc) - pad])
    return np.concatenate(out)

  def set_reference_data(self, train_images: np.ndarray, train_labels: np.ndarray,
                         test_images: np.ndarray) -> None:
    """Real float [N, H, W, C] images in [0, 1] for the FID classifier and statistics."""
    self._reference = (np.asarray(train_images, np.float32),
                       np.asarray(train_labels, np.int32),
                       np.asarray(test_images, np.float32))
    self._scorer = None

  def scorer(self, workdir: str) -> fid.FIDScorer | None:
    """The FID scorer (classifier loaded from or trained into the workdir), or None."""
    if self._scorer is not None:
      return self._scorer
    if self._reference is None:
      train = images.reference_images(self.config, "train")
      test = images.reference_images(self.config, "test")
      if train is None or test is None:
        return None
      self._reference = (train[0], train[1], test[0])
    tx, ty, test_x = self._reference
    path = self.fid_classifier_path or os.path.join(workdir, "fid_classifier.msgpack")
    params = fid.load_or_train_classifier(
        path, tx, ty, jax.random.PRNGKey(1234), steps=self.fid_classifier_steps,
        num_classes=int(self.info.get("num_classes", 10)),
        write=jax.process_index() == 0)
    self._scorer = fid.FIDScorer(params, test_x[:self.fid_reference_size],
                                 num_classes=int(self.info.get("num_classes", 10)))
    return self._scorer

  def on_evaluate(self, state, workdir, step):
    out = {}
    grid = self.sample(state, self.num_grid_samples)
    if jax.process_index() == 0:
      images.save_grid_png(os.path.join(workdir, f"samples_{int(step):06d}.png"), grid)
    if self.use_fid:
      scorer = self.scorer(workdir)
      if scorer is not None:
        out.update(scorer.score(self.sample(state, self.fid_num_samples,
                                            seed=self.sample_seed + 2)))
    return out


TASKS = {"gan": GANTask}
