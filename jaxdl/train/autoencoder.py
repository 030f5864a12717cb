"""Autoencoder (MSE or BCE reconstruction) and VAE (negative ELBO) training.

Config fields (defaults in brackets):
  model.name ['dense_autoencoder'; 'vae' for task 'vae'] ('dense_autoencoder' |
      'conv_autoencoder' | 'vae'), model.kwargs
      (the VAE's output_shape defaults to info['input_shape'])
  ae.loss ['bce']  AE reconstruction loss (else `loss` when it is 'bce', 'mse'
                   or 'sigmoid_binary_cross_entropy'): 'bce' (sigmoid cross-entropy of the
                   logits, summed over pixels) or 'mse' (of sigmoid(logits),
                   mean over pixels). The VAE always uses its likelihood:
                   Bernoulli (BCE summed over pixels) or Gaussian
                   (0.5 * ||x - mean||^2 / ae.gaussian_var summed, plus its constant).
  ae.kl_weight [1.0]     beta of a beta-VAE (1 = the ELBO)
  ae.gaussian_var [0.1]  fixed decoder variance of the Gaussian VAE
  ae.num_images [64]     images in the PNG grids
  ae.sample_seed [0]
  optimizer              see jaxdl.train.optim [Adam 1e-3]
  dataset, data_dir      real images for the reconstruction grid (or
                         `set_reference_images`).

Metrics: 'loss' (what is minimised; for the VAE the negative ELBO in nats per
image), 'mse' (per-pixel squared error of the reconstruction in [0, 1], all
models), and for the VAE 'recon_loss', 'kl' (>= 0) and 'elbo' (= -loss).
on_evaluate writes `recon_{step:06d}.png` (rows of originals above their
reconstructions) and, for the VAE, `samples_{step:06d}.png` (decoded z ~ N(0, I)).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import images, models, ops, parallel
from jaxdl.train.task import Task, section

AE_MODELS = ("dense_autoencoder", "conv_autoencoder", "vae")


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, [B] (>= 0)."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mean * mean - 1.0 - logvar, -1)


def default_config() -> ml_collections.ConfigDict:
  """The `ae` section at its defaults (for experiment configs and flag overrides)."""
  return ml_collections.ConfigDict(dict(loss="bce", kl_weight=1.0, gaussian_var=0.1,
                                        num_images=64, sample_seed=0))


class AutoencoderTask(Task):
  """Trains an autoencoder or a VAE from `jaxdl.models.autoencoder`."""

  name = "autoencoder"
  best_metric = "loss"
  best_mode = "min"
  default_model = "dense_autoencoder"
  wants_reference_images = True  # the reconstruction grid's originals

  def __init__(self, config: Any, info: dict, total_steps: int = 0):
    self.config, self.info = config, info
    self.input_shape = tuple(info.get("input_shape", (28, 28, 1)))
    model_cfg = config.get("model", None)
    name = model_cfg.get("name", None) if model_cfg is not None else None
    kwargs = dict((model_cfg.get("kwargs", None) or {}) if model_cfg is not None else {})
    if name not in AE_MODELS:
      # The base config names a classifier ('mlp'); its kwargs do not apply.
      if name:
        logging.warning("model.name=%r is not an autoencoder; using %r (choose one of %s "
                        "with --config.model.name=...)", name, self.default_model, AE_MODELS)
      name, kwargs = self.default_model, {}
    self.is_vae = name == "vae"
    self.likelihood = None
    if self.is_vae:
      kwargs.setdefault("output_shape", self.input_shape)
      self.likelihood = kwargs.get("likelihood", "bernoulli")
    self.model = models.get_model(name, **kwargs)
    a = section(config, "ae", default_config())
    given = config.get("ae", None) if hasattr(config, "get") else None
    if not (given and "loss" in given) and config.get("loss", None) in (
        "bce", "mse", "sigmoid_binary_cross_entropy"):
      a.loss = config.loss  # an autoencoder loss named at the top level
    loss = {"sigmoid_binary_cross_entropy": "bce"}.get(a.loss, a.loss)
    if loss not in ("bce", "mse"):
      raise ValueError(f"unknown autoencoder loss {loss!r}: 'bce' or 'mse' "
                       "(--config.ae.loss=...)")
    self.loss_name = loss
    self.kl_weight = float(a.kl_weight)
    self.gaussian_var = float(a.gaussian_var)
    self.num_images = int(a.num_images)
    self.sample_seed = int(a.sample_seed)
    self._reference = None
    self._recon = jax.jit(self._recon_fn)
    self._decode = jax.jit(self._decode_fn)
    if self.is_vae:
      self.shown_metrics = ("loss", "kl")
    else:
      self.shown_metrics = ("loss", "mse")

  def init(self, key, batch):
    x = batch["inputs"]
    variables = self.model.init(key, jnp.zeros((1,) + tuple(x.shape[1:]), jnp.float32))
    return models.split_variables(variables)

  def _apply(self, params, model_state, x, *, train, key=None):
    out, model_state = self.model.apply({"params": params, **model_state}, x, train=train,
                                        rngs=models.make_rngs(self.model, key))
    return {k: v.astype(jnp.float32) for k, v in out.items()}, model_state

  def _losses(self, out, x):
    """Per-example terms: {'loss', 'mse', ...} each [B]."""
    # Per-example sums through ops.row_sum: XLA:CPU's own sum over [B, H, W, 1]
    # is ~25x slower (jaxdl/ops/reduce.py).
    gaussian = self.is_vae and self.likelihood == "gaussian"
    recon = out["recon_mean"] if gaussian else jax.nn.sigmoid(out["recon_logits"])
    m = {"mse": ops.row_mean((recon - x) ** 2)}
    if gaussian:
      d2 = ops.row_sum((recon - x) ** 2)
      n = math.prod(x.shape[1:])
      var = self.gaussian_var
      recon_loss = 0.5 * d2 / var + 0.5 * n * math.log(2 * math.pi * var)
    elif self.is_vae or self.loss_name == "bce":
      bce = ops.row_sum(optax.sigmoid_binary_cross_entropy(out["recon_logits"], x))
      recon_loss = bce if self.is_vae else bce / math.prod(x.shape[1:])
    else:
      recon_loss = m["mse"]
    if self.is_vae:
      kl = gaussian_kl(out["mean"], out["logvar"])
      m.update(recon_loss=recon_loss, kl=kl, loss=recon_loss + self.kl_weight * kl,
               elbo=-(recon_loss + kl))
    else:
      m["loss"] = recon_loss
    return m

  def loss(self, params, model_state, batch, key):
    x = batch["inputs"]
    out, model_state = self._apply(params, model_state, x, train=True, key=key)
    m = {k: jnp.mean(v) for k, v in self._losses(out, x.astype(jnp.float32)).items()}
    return m["loss"], (model_state, m)

  def eval_metrics(self, state, batch):
    """Per-example sums; the VAE's z is sampled with a fixed key (one-sample ELBO)."""
    x = batch["inputs"].astype(jnp.float32)
    key = jax.random.PRNGKey(self.sample_seed + 1) if self.is_vae else None
    out, _ = self._apply(state.params, state.model_state, x, train=False, key=key)
    m = self._losses(out, x)
    return {k: jnp.sum(batch["mask"] * v) for k, v in m.items()}

  # --- host side ------------------------------------------------------------

  def _recon_fn(self, params, model_state, x):
    out, _ = self._apply(params, model_state, x, train=False)  # z = mean for the VAE
    if "recon_mean" in out:
      return out["recon_mean"]
    return jax.nn.sigmoid(out["recon_logits"])

  def _decode_fn(self, params, z):
    out = self.model.module.apply({"params": params}, z, method="decode")
    return out if self.likelihood == "gaussian" else jax.nn.sigmoid(out)

  def reconstruct(self, state, x: np.ndarray) -> np.ndarray:
    """Deterministic reconstructions in [0, 1] of float images x."""
    params = parallel.to_host(state.params)
    model_state = parallel.to_host(state.model_state)
    return np.asarray(self._recon(params, model_state, jnp.asarray(x, jnp.float32)))

  def sample(self, state, n: int, seed: int | None = None) -> np.ndarray:
    """VAE samples: decoder means/probabilities for z ~ N(0, I)."""
    if not self.is_vae:
      raise ValueError("only the VAE has a prior to sample from")
    seed = self.sample_seed if seed is None else seed
    latent = self.model.module.latent_dim
    z = jax.random.normal(jax.random.PRNGKey(seed), (n, latent))
    return np.asarray(self._decode(parallel.to_host(state.params), z))

  def set_reference_images(self, x: np.ndarray) -> None:
    """Float [N, H, W, C] images in [0, 1] whose reconstructions are drawn."""
    self._reference = np.asarray(x, np.float32)

  def set_reference_data(self, train_images, train_labels, test_images) -> None:
    self.set_reference_images(test_images[:self.num_images])

  def on_evaluate(self, state, workdir, step):
    """reference_mse, and the grids 'recon' (rows of originals above their
    reconstructions) and, for the VAE, 'samples' (decoded z ~ N(0, I))."""
    out = {}
    if self._reference is not None:
      x = self._reference[:self.num_images]
      r = self.reconstruct(state, x)
      out["reference_mse"] = float(np.mean((r - x) ** 2))
      ncols = int(math.ceil(math.sqrt(len(x))))
      rows = []
      for s in range(0, len(x), ncols):
        rows += [x[s:s + ncols], r[s:s + ncols]]
      pairs = np.concatenate([np.pad(b, ((0, ncols - len(b)),) + ((0, 0),) * 3) for b in rows])
      out["recon"] = images.make_grid(pairs, ncols=ncols)
    if self.is_vae:
      out["samples"] = images.make_grid(self.sample(state, self.num_images))
    return out


class VAETask(AutoencoderTask):
  """The same task with the VAE as the default model (`--config.task=vae`)."""
  name = "vae"
  default_model = "vae"


TASKS = {"autoencoder": AutoencoderTask, "vae": VAETask}
