"""DCGAN on MNIST (or Fashion-MNIST): non-saturating loss, Adam(2e-4, b1=0.5) for both nets.

Evaluation writes a fixed-noise sample grid and reports the Frechet distance on
the features of a jaxdl MNIST classifier plus the share of samples per class.
"""

import ml_collections

from jaxdl.configs import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "gan"
  c.dataset = "mnist"
  c.data_dir = "../shared/data/mnist"
  c.model.name = "dcgan_generator"  # informational: the GAN's nets are below
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.5
  c.batch_size = 64
  c.num_epochs = 5
  c.log_every = 100
  c.gan = ml_collections.ConfigDict(dict(
      latent_dim=100, generator="dcgan_generator", discriminator="dcgan_discriminator",
      sample_seed=0, num_grid_samples=64, fid=True, fid_num_samples=5000,
      fid_reference_size=10000, fid_classifier_path="", fid_classifier_steps=500,
      # 'auto': the fast lowering on CPU only (jaxdl.ops.platform); 'xla' or 'fast'.
      generator_kwargs=ml_collections.ConfigDict(dict(conv_impl="auto")),
      discriminator_kwargs=ml_collections.ConfigDict(dict(conv_impl="auto"))))
  return c
