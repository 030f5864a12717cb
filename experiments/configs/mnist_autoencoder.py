"""Autoencoders on MNIST: dense (default), convolutional (--config.model.name=
conv_autoencoder) or a VAE (--config.task=vae --config.model.name=vae)."""

import ml_collections

from jaxdl.configs import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "autoencoder"
  c.dataset = "mnist"
  c.data_dir = "../shared/data/mnist"
  c.model.name = "dense_autoencoder"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 10
  c.log_every = 100
  c.ae = ml_collections.ConfigDict(dict(loss="bce", kl_weight=1.0, gaussian_var=0.1,
                                        num_images=64, sample_seed=0))
  return c
