"""DCGAN on MNIST (or Fashion-MNIST): non-saturating loss, Adam(2e-4, b1=0.5) for both nets.

Evaluation writes a fixed-noise sample grid and reports the Frechet distance on
the features of a jaxdl MNIST classifier plus the share of samples per class.
"""

import ml_collections

from jaxdl.configs import base_config
from jaxdl.train import gan


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "gan"
  c.dataset = "mnist"
  c.data_dir = "../shared/data/mnist"
  c.model.name = "dcgan_generator"  # informational: the GAN's nets are below
  c.batch_size = 64
  c.num_epochs = 5
  c.log_every = 100
  # The GAN's two optimizers are gan.g_optimizer / gan.d_optimizer (Adam 2e-4,
  # b1=0.5 each); config.optimizer is not used.
  c.gan = gan.default_config()
  # 'auto': the fast lowering on CPU only (jaxdl.ops.platform); 'xla' or 'fast'.
  c.gan.generator_kwargs = ml_collections.ConfigDict(dict(conv_impl="auto"))
  c.gan.discriminator_kwargs = ml_collections.ConfigDict(dict(conv_impl="auto"))
  return c
