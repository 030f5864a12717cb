"""IMDB LSTM: Embedding(10000, 128), spatial dropout 0.4, LSTM 100, Dense 1
(sigmoid binary cross-entropy), Adam; reviews padded/truncated to 100 words."""

import ml_collections

from jaxdl.configs import base_config


def imdb_base() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = "imdb"
  c.data_dir = "data/imdb"      # holds aclImdb_v1.tar.gz
  c.imdb_source = "archive"     # or 'tfds' (imdb_reviews prepared as array_record)
  c.num_words = 10000           # vocabulary: the most frequent training words
  c.maxlen = 100
  c.loss = "sigmoid_binary_cross_entropy"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.grad_clip_norm = 1.0
  c.batch_size = 64
  c.num_epochs = 3
  c.log_every = 50
  return c


def get_config() -> ml_collections.ConfigDict:
  c = imdb_base()
  c.model.name = "lstm_classifier"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      vocab_size=10000, embed_dim=128, hidden_size=100, spatial_dropout=0.4,
      num_layers=1, bidirectional=False, unroll=1, scan_impl="fused"))
  return c
