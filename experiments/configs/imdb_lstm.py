"""IMDB LSTM, the seeds' Keras model: Embedding(10000, 128), SpatialDropout1D(0.4),
LSTM(100, dropout=0.2, recurrent_dropout=0.2), Dense(1, sigmoid) (binary
cross-entropy on the logit), Adam; reviews padded/truncated to 100 words.
The LSTM's dropout masks are one per sequence, shared by the four gates
(Keras draws one per gate when recurrent_dropout > 0: jaxdl.models.lstm); its
scan is the model's default ('auto': jaxdl.ops.platform)."""

import ml_collections

from jaxdl.configs import base_config


def imdb_base() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = "imdb"
  c.data_dir = "data/imdb"      # holds aclImdb_v1.tar.gz
  c.imdb_source = "archive"     # or 'tfds' (imdb_reviews prepared as array_record)
  c.num_words = 10000           # vocabulary: the most frequent training words
  c.maxlen = 100
  c.truncating = "pre"          # keep each review's last maxlen words, as Keras does
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
  c.batch_size = 32             # the Keras program's (batch 64: 0.848 at best, 0.844 last)
  c.model.name = "lstm_classifier"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      vocab_size=10000, embed_dim=128, hidden_size=100, spatial_dropout=0.4,
      dropout=0.2, recurrent_dropout=0.2, num_layers=1, bidirectional=False,
      unroll=1))
  return c
