"""IMDB LM: the causal pre-LN Transformer (`transformer_lm`, tied embeddings)
trained on the IMDB review texts, word level with the IMDB tokenizer (the
5000 most frequent training words; rarer ones are one <unk> id), each review
cut to its first `maxlen` words. Evaluation: held-out perplexity over the test
split (exp of the mean token loss), and greedy and temperature-sampled
continuations of `lm.prompts` in workdir/samples_<step>.txt (and TensorBoard's
Text tab)."""

import ml_collections

from experiments.configs.imdb_lstm import imdb_base


def get_config() -> ml_collections.ConfigDict:
  c = imdb_base()
  c.task = "language_model"
  c.loss = "softmax_cross_entropy"  # next-token cross-entropy (the task's own)
  # Sized to train here in minutes (2 cores): the first 64 words of each
  # review, the 5,000 most frequent words, a 2-layer d_model 128 decoder.
  c.num_words = 5000
  c.maxlen = 64
  c.truncating = "post"         # each review's first words: the prompts start reviews
  c.model.name = "transformer_lm"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      vocab_size=5000, d_model=128, num_heads=4, num_layers=2, mlp_dim=512,
      max_len=64, dropout_rate=0.1, positions="learned", tie_embeddings=True))
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 1e-2
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 2
  c.lm = ml_collections.ConfigDict(dict(
      prompts=("this movie was", "i have never seen a film", "the acting",
               "if you like horror movies"),
      sample_tokens=32,
      temperature=0.8))
  return c
