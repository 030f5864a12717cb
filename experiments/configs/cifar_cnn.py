"""CIFAR-10 CNN: Conv 32, MaxPool, Conv 64, MaxPool, Conv 64, Flatten, Dense 64, Dense 10."""

import ml_collections

from jaxdl.configs import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = "cifar10"
  c.model.name = "cnn"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      features=(32, 64, 64), dense=64, padding="VALID",
      conv_impl="auto"))  # the fast lowering on CPU only (jaxdl.ops.platform)
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 10
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.log_every = 100
  return c
