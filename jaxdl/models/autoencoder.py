"""Autoencoders: dense, convolutional, and a variational one (Kingma & Welling 2014).

Every model's `apply` returns a dict, so one task computes every loss:
    'recon_logits' [B, H, W, C]  decoder output before the sigmoid (Bernoulli
                                 likelihood / BCE; sigmoid of it is the image),
    'recon_mean'   [B, H, W, C]  (VAE with a Gaussian decoder, instead of logits),
    'latent'       [B, Z]        the code (AE) or the sampled z (VAE),
    'mean', 'logvar' [B, Z]      the Gaussian posterior q(z|x) (VAE only).
The VAE samples z = mean + exp(logvar / 2) * eps with eps drawn from the
'latent' rng stream when one is passed in `rngs`, and uses z = mean otherwise
(deterministic reconstructions). `VAE.decode` maps z to the decoder output.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.models.base import Model, from_flax
from jaxdl.ops import layers


class DenseAutoencoder(nn.Module):
  hidden: Sequence[int] = (256,)
  latent_dim: int = 32

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    shape = x.shape
    h = x.reshape((shape[0], -1))
    for w in self.hidden:
      h = nn.relu(nn.Dense(w)(h))
    z = nn.Dense(self.latent_dim, name="code")(h)
    h = z
    for w in reversed(self.hidden):
      h = nn.relu(nn.Dense(w)(h))
    logits = nn.Dense(int(np.prod(shape[1:])), name="output")(h)
    return {"recon_logits": logits.reshape(shape), "latent": z}


class ConvAutoencoder(nn.Module):
  """Conv f0/2, Conv f1/2, Dense latent, Dense, ConvT f0/2, ConvT C/2 (H, W % 4 == 0).

  `conv_impl` 'auto' (the default: on CPU 2.9x the 'xla' step, see
  docs/performance.md; flax's layers on other platforms) computes the same
  layers and parameters through `jaxdl.ops` on CPU, as `dcgan_generator` does:
  transposed convolutions as one GEMM + col2im, convolutions by
  `ops.conv_general_dilated`'s policy. 'fast' does so everywhere, 'xla' is
  flax's own layers everywhere.
  """
  features: Sequence[int] = (32, 64)
  latent_dim: int = 32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    conv, conv_transpose, _ = layers.select(self.conv_impl,
                                            "--config.model.kwargs.conv_impl")
    b, hh, ww, c = x.shape
    if hh % 4 or ww % 4:
      raise ValueError(f"conv_autoencoder needs height and width divisible by 4, got {x.shape}")
    f0, f1 = self.features
    h = nn.relu(conv(f0, (3, 3), strides=2)(x))
    h = nn.relu(conv(f1, (3, 3), strides=2)(h))
    z = nn.Dense(self.latent_dim, name="code")(h.reshape((b, -1)))
    h = nn.relu(nn.Dense((hh // 4) * (ww // 4) * f1)(z)).reshape((b, hh // 4, ww // 4, f1))
    h = nn.relu(conv_transpose(f0, (3, 3), strides=(2, 2), padding="SAME")(h))
    logits = conv_transpose(c, (3, 3), strides=(2, 2), padding="SAME", name="output")(h)
    return {"recon_logits": logits, "latent": z}


class VAE(nn.Module):
  """Dense Gaussian encoder -> (mean, logvar); dense Bernoulli or Gaussian decoder."""
  hidden: Sequence[int] = (512,)
  latent_dim: int = 20
  output_shape: Sequence[int] = (28, 28, 1)
  likelihood: str = "bernoulli"  # or 'gaussian' (decoder outputs the mean)

  def setup(self):
    if self.likelihood not in ("bernoulli", "gaussian"):
      raise ValueError(f"unknown likelihood {self.likelihood!r}: 'bernoulli' or 'gaussian'")
    self.enc = [nn.Dense(w, name=f"enc_{i}") for i, w in enumerate(self.hidden)]
    self.enc_mean = nn.Dense(self.latent_dim, name="enc_mean")
    self.enc_logvar = nn.Dense(self.latent_dim, name="enc_logvar")
    self.dec = [nn.Dense(w, name=f"dec_{i}") for i, w in enumerate(reversed(self.hidden))]
    self.dec_out = nn.Dense(int(np.prod(self.output_shape)), name="dec_out")

  def encode(self, x):
    h = x.reshape((x.shape[0], -1))
    for layer in self.enc:
      h = nn.relu(layer(h))
    return self.enc_mean(h), self.enc_logvar(h)

  def decode(self, z):
    h = z
    for layer in self.dec:
      h = nn.relu(layer(h))
    out = self.dec_out(h).reshape((z.shape[0],) + tuple(self.output_shape))
    return jax.nn.sigmoid(out) if self.likelihood == "gaussian" else out

  def __call__(self, x, *, train: bool):
    del train
    mean, logvar = self.encode(x)
    if self.has_rng("latent"):
      eps = jax.random.normal(self.make_rng("latent"), mean.shape, mean.dtype)
      z = mean + jnp.exp(0.5 * logvar) * eps
    else:
      z = mean
    out = self.decode(z)
    key = "recon_mean" if self.likelihood == "gaussian" else "recon_logits"
    return {key: out, "mean": mean, "logvar": logvar, "latent": z}


def make_dense_autoencoder(hidden=(256,), latent_dim=32) -> Model:
  return from_flax(DenseAutoencoder(tuple(hidden), latent_dim), name="dense_autoencoder")


def make_conv_autoencoder(features=(32, 64), latent_dim=32, conv_impl="auto") -> Model:
  return from_flax(ConvAutoencoder(tuple(features), latent_dim, conv_impl),
                   name="conv_autoencoder")


def make_vae(hidden=(512,), latent_dim=20, output_shape=(28, 28, 1),
             likelihood="bernoulli") -> Model:
  return from_flax(VAE(tuple(hidden), latent_dim, tuple(output_shape), likelihood),
                   rng_names=("dropout", "latent"), name="vae")


MODELS = {"dense_autoencoder": make_dense_autoencoder,
          "conv_autoencoder": make_conv_autoencoder,
          "vae": make_vae}

# Each model's example run (an experiment config and overrides) for the
# registry-driven tests and the benchmark: `jaxdl.models.examples()`.
EXAMPLES = {"dense_autoencoder": ("mnist_autoencoder", {}),
            "conv_autoencoder": ("mnist_autoencoder", {"model.name": "conv_autoencoder"}),
            "vae": ("mnist_autoencoder", {"task": "vae", "model.name": "vae"})}
