"""IMDB Transformer: the pre-LN encoder sequence classifier on the IMDB data."""

import ml_collections

from experiments.configs.imdb_lstm import imdb_base


def get_config() -> ml_collections.ConfigDict:
  c = imdb_base()
  c.maxlen = 200                # the last 200 words of each review (truncating='pre')
  c.num_epochs = 2              # the held-out loss rises after the second epoch
  c.model.name = "transformer_classifier"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      vocab_size=10000, d_model=128, num_heads=4, num_layers=2, mlp_dim=512,
      max_len=512, dropout_rate=0.1, positions="learned"))
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-4
  c.optimizer.weight_decay = 1e-2
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  return c
