"""GAN training (Goodfellow et al. 2014) with the non-saturating generator loss.

One `train_update` = one discriminator step then one generator step, each with
its own optax optimizer. params, opt_state and model_state are dicts
{'generator': ..., 'discriminator': ...}. Real images arrive in [0, 1] and are
mapped to [-1, 1] (the generator's tanh range) here.

Config fields (defaults in brackets):
  gan.latent_dim [100]            size of z ~ N(0, I)
  gan.generator ['dcgan_generator'], gan.generator_kwargs [{}]
  gan.discriminator ['dcgan_discriminator'], gan.discriminator_kwargs [{}]
  gan.g_optimizer, gan.d_optimizer  optimizer sections (see jaxdl.train.optim)
      [Adam(2e-4, b1=0.5) each]; `config.optimizer` is not used
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

from jaxdl import fid, images, models, parallel
from jaxdl.configs import optimizer_config
from jaxdl.train.task import ParamGroup, Task, section



def default_config() -> ml_collections.ConfigDict:
  """The `gan` section with every field at its default, for experiment configs
  (so `--config.gan.*` flags can override them); the optimizers are DCGAN's."""
  return ml_collections.ConfigDict(dict(
      latent_dim=100, generator="dcgan_generator",
      generator_kwargs=ml_collections.ConfigDict(),
      discriminator="dcgan_discriminator",
      discriminator_kwargs=ml_collections.ConfigDict(),
      g_optimizer=optimizer_config(name="adam", learning_rate=2e-4, b1=0.5),
      d_optimizer=optimizer_config(name="adam", learning_rate=2e-4, b1=0.5),
      sample_seed=0, num_grid_samples=64, fid=True, fid_num_samples=5000,
      fid_reference_size=10000, fid_classifier_path="", fid_classifier_steps=500))


class GANTask(Task):
  """DCGAN on image batches; see the module docstring for the config."""

  name = "gan"
  best_metric = "frechet_distance"  # from on_evaluate
  best_mode = "min"

  guarded_metrics = ("d_loss", "g_loss")
  shown_metrics = ("d_loss", "g_loss", "d_real", "d_fake")
  wants_reference_images = True

  def __init__(self, config: Any, info: dict, total_steps: int = 0):
    del total_steps
    self.config, self.info = config, info
    g = self.section = section(config, "gan", default_config())
    self.latent_dim = int(g.latent_dim)
    gkw = dict(g.generator_kwargs)
    if "input_shape" in info:
      gkw.setdefault("output_shape", tuple(info["input_shape"]))
    self.generator = models.get_model(g.generator, **gkw)
    self.discriminator = models.get_model(g.discriminator, **dict(g.discriminator_kwargs))
    self.sample_seed = int(g.sample_seed)
    self.num_grid_samples = int(g.num_grid_samples)
    self.use_fid = bool(g.fid)
    self.wants_reference_images = self.use_fid
    self.fid_num_samples = int(g.fid_num_samples)
    self.fid_reference_size = int(g.fid_reference_size)
    self.fid_classifier_path = g.fid_classifier_path
    self.fid_classifier_steps = int(g.fid_classifier_steps)
    self._reference = None  # (train_x, train_y, test_x)
    self._scorer = None
    self._generate = jax.jit(self._generate_fn)

  def param_groups(self):
    return {"generator": ParamGroup(self.section.g_optimizer, key="generator"),
            "discriminator": ParamGroup(self.section.d_optimizer, key="discriminator")}

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
    return {"generator": gp, "discriminator": dp}, {"generator": gs, "discriminator": ds}

  def _g(self, params, state, z, train):
    out, state = self.generator.apply({"params": params, **state}, z, train=train)
    return out.astype(jnp.float32), state

  def _d(self, params, state, x, train):
    out, state = self.discriminator.apply({"params": params, **state}, x, train=train)
    return out.astype(jnp.float32), state

  def train_update(self, ctx, state, batch, key):
    """One discriminator step, then one generator step against the new D; the
    noise of both is drawn for the whole batch first (so an accumulated step
    sees the same z as the whole batch)."""
    n = batch["inputs"].shape[0]
    kd, kg = jax.random.split(key)
    batch = dict(batch, z_d=self.noise(kd, n), z_g=self.noise(kg, n))
    gp, dp = state.params["generator"], state.params["discriminator"]
    gp_compute = ctx.compute(gp)  # the other network, cast once (not per micro-batch)

    # Discriminator: minimise -log D(x) - log(1 - D(G(z))).
    def d_loss_fn(dp, ms, b, _):
      x = b["inputs"] * 2.0 - 1.0
      fake, gs = self._g(gp_compute, ms["generator"], b["z_d"], True)
      fake = jax.lax.stop_gradient(fake).astype(x.dtype)
      real_logits, ds = self._d(dp, ms["discriminator"], x, True)
      fake_logits, ds = self._d(dp, ds, fake, True)
      loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
      return loss, ({"generator": gs, "discriminator": ds},
                    {"d_real": jnp.mean(jax.nn.sigmoid(real_logits)),   # D(x)
                     "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits))})  # D(G(z)) before

    d_grads, ms, dm = ctx.grads(d_loss_fn, dp, state.model_state, batch, None)
    dp, d_opt, d_stats = ctx.apply("discriminator", d_grads, dp,
                                   state.opt_state["discriminator"])

    # Generator (non-saturating): minimise -log D(G(z)) against the new D.
    dp_compute = ctx.compute(dp)

    def g_loss_fn(gp, ms, b, _):
      fake, gs = self._g(gp, ms["generator"], b["z_g"], True)
      logits, _ = self._d(dp_compute, ms["discriminator"], fake, True)
      return jnp.mean(jax.nn.softplus(-logits)), (
          {"generator": gs, "discriminator": ms["discriminator"]},
          {"d_fake_after": jnp.mean(jax.nn.sigmoid(logits))})

    g_grads, ms, gm = ctx.grads(g_loss_fn, gp, ms, batch, None)
    gp, g_opt, g_stats = ctx.apply("generator", g_grads, gp, state.opt_state["generator"])
    new_state = state.replace(
        params={"generator": gp, "discriminator": dp},
        opt_state={"generator": g_opt, "discriminator": d_opt}, model_state=ms)
    metrics = {"d_loss": dm.pop("loss"), "g_loss": gm.pop("loss"), **dm, **gm,
               "d_grad_norm": d_stats["grad_norm"], "g_grad_norm": g_stats["grad_norm"],
               "learning_rate": g_stats["learning_rate"]}
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
      return None  # no real images were handed over (set_reference_data)
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
    """'samples' (a grid of fixed-noise samples) and, with gan.fid, the
    Frechet distance and class shares of `FIDScorer.score`."""
    out = {"samples": images.make_grid(self.sample(state, self.num_grid_samples))}
    if self.use_fid:
      scorer = self.scorer(workdir)
      if scorer is not None:
        out.update(scorer.score(self.sample(state, self.fid_num_samples,
                                            seed=self.sample_seed + 2)))
    return out


TASKS = {"gan": GANTask}
