"""MNIST MLP: Flatten, Dense 128 ReLU, Dropout 0.2, Dense 10; Adam."""

import ml_collections

from jaxdl.configs import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = "mnist"
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict(dict(hidden=(128,), dropout=0.2))
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 5
  c.log_every = 200
  return c
