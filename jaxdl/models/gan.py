"""DCGAN-style generator and discriminator for 28x28x1 images (Radford et al. 2016).

Generator: z [B, latent_dim] -> Dense 7*7*f0 -> (BatchNorm) ReLU -> reshape
-> ConvTranspose f1 kxk stride 2 -> (BatchNorm) ReLU -> ConvTranspose C kxk
stride 2 (k = 5) -> tanh: [B, 28, 28, C] in [-1, 1]. With `batch_norm=True` the running
statistics live in the 'batch_stats' collection (the task's model_state).
Discriminator: Conv f0 4x4/2 LeakyReLU -> Conv f1 4x4/2 LeakyReLU -> Dense 1:
one logit per image, no batch norm (so D(real) and D(fake) do not couple).

`conv_impl` 'auto' (the default, both nets) computes the same layers through
`jaxdl.ops` on CPU and through flax's layers elsewhere; 'fast' uses `jaxdl.ops`
everywhere (`jaxdl.ops.platform`). The `jaxdl.ops` path:
transposed convolutions as one GEMM + col2im (no multiplications by the
zeros XLA inserts between input pixels) and convolutions as im2col + GEMM,
both with matrix-product gradients. Parameters, their names and the outputs
are those of 'xla' (flax's layers); only the lowering changes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.models.base import Model, from_flax
from jaxdl.ops import layers


def _layers(conv_impl: str):
  """(Conv, ConvTranspose) classes for the chosen lowering."""
  conv, conv_transpose, _ = layers.select(conv_impl, "--config.gan.generator_kwargs.conv_impl")
  return conv, conv_transpose


class Generator(nn.Module):
  features: Sequence[int] = (128, 64)
  output_shape: Sequence[int] = (28, 28, 1)
  batch_norm: bool = True
  kernel_size: int = 5
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, z, *, train: bool):
    _, conv_transpose = _layers(self.conv_impl)
    h, w, c = self.output_shape
    if h % 4 or w % 4:
      raise ValueError(f"output_shape {tuple(self.output_shape)}: height and width "
                       "must be multiples of 4 (two stride-2 upsamplings)")
    f0, f1 = self.features
    x = nn.Dense((h // 4) * (w // 4) * f0)(z.reshape((z.shape[0], -1)))
    x = x.reshape((z.shape[0], h // 4, w // 4, f0))
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       use_fast_variance=False)(x)
    x = nn.relu(x)
    k = (self.kernel_size, self.kernel_size)
    x = conv_transpose(f1, k, strides=(2, 2), padding="SAME")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       use_fast_variance=False)(x)
    x = nn.relu(x)
    x = conv_transpose(c, k, strides=(2, 2), padding="SAME")(x)
    return jnp.tanh(x)


class Discriminator(nn.Module):
  features: Sequence[int] = (64, 128)
  negative_slope: float = 0.2
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    conv, _ = _layers(self.conv_impl)
    for f in self.features:
      x = conv(f, (4, 4), strides=(2, 2), padding="SAME")(x)
      x = nn.leaky_relu(x, self.negative_slope)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(1)(x)[:, 0]


def make_generator(features=(128, 64), output_shape=(28, 28, 1), batch_norm=True,
                   kernel_size=5, conv_impl="auto") -> Model:
  """Example input for init: z of shape [B, latent_dim] (latent_dim 100 by default).

  The transposed convolutions dominate a CPU step (about 6x the discriminator's
  cost at the default widths); `features=(64, 32), kernel_size=4` is ~5x cheaper.
  """
  return from_flax(Generator(tuple(features), tuple(output_shape), batch_norm,
                             kernel_size, conv_impl),
                   name="dcgan_generator")


def make_discriminator(features=(64, 128), negative_slope=0.2,
                       conv_impl="auto") -> Model:
  return from_flax(Discriminator(tuple(features), negative_slope, conv_impl),
                   name="dcgan_discriminator")


MODELS = {"dcgan_generator": make_generator, "dcgan_discriminator": make_discriminator}

EXAMPLES = {"dcgan_generator": ("mnist_gan", {}), "dcgan_discriminator": ("mnist_gan", {})}
