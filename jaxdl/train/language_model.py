"""Causal language modelling: next-token cross-entropy on `batch['inputs']`.

Inputs are int32 token ids [B, T] with 0 as padding; position t predicts token
t+1, and padded targets are masked out (position 0's token is never a target:
there is no start token).

Evaluation reports token means over the whole split (every real target counts
once, however the reviews' lengths differ): `loss` (nats per token),
`accuracy` (next-token argmax) and `perplexity` = exp(loss).

Samples (config section `lm`, optional): at every evaluation the model
continues each of `lm.prompts` by `lm.sample_tokens` tokens, greedily and at
`lm.temperature`, with the jitted KV-cache loop of
`jaxdl.models.transformer.generate`; padding and the out-of-vocabulary id
are never drawn (an <unk> says nothing in a sample; it still counts in the
perplexity). The words come from the run's tokenizer
(`workdir/tokenizer.json`, written by the text dataset). The result is
`workdir/samples_{step:06d}.txt`, which the training loop also sends to
TensorBoard as text. The sampling key is `sample_key(config.seed, step)`: a
function of the seed and the step only, so a resumed run writes the same
samples as an uninterrupted one.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import models, parallel
from jaxdl.configs import ConfigError
from jaxdl.data import text
from jaxdl.models import transformer
from jaxdl.train.task import Task, section

# Folded into the seed's key so the sampling stream is not one of training's.
_SAMPLE_STREAM = 0x53414D50  # "SAMP"


def sample_key(seed: int, step: int) -> jax.Array:
  """The key of the samples written at `step`: fold_in(fold_in(PRNGKey(seed),
  'SAMP'), step)."""
  return jax.random.fold_in(
      jax.random.fold_in(jax.random.PRNGKey(seed), _SAMPLE_STREAM), step)


def ids_to_words(ids, tokenizer: text.Tokenizer) -> str:
  """Token ids -> space-separated words (OOV -> '<unk>', padding dropped)."""
  words = []
  for i in ids:
    i = int(i)
    if i == text.PAD_ID:
      continue
    words.append("<unk>" if i == text.OOV_ID or i - 2 >= len(tokenizer.words)
                 else tokenizer.words[i - 2])
  return " ".join(words)


def default_config() -> ml_collections.ConfigDict:
  """The `lm` section at its defaults: no prompts (no samples written); each
  prompt continued by `sample_tokens` tokens, greedily and at `temperature`."""
  return ml_collections.ConfigDict(dict(prompts=(), sample_tokens=32, temperature=1.0))


class LanguageModelTask(Task):
  """Config: model.name (e.g. 'transformer_lm'), model.kwargs, optimizer, and
  the optional `lm` section (prompts, sample_tokens, temperature)."""

  name = "language_model"
  best_metric = "loss"
  best_mode = "min"

  def __init__(self, config, info, total_steps: int = 0):
    kwargs = dict(config.model.get("kwargs", {}))
    if "vocab_size" in info:
      kwargs.setdefault("vocab_size", info["vocab_size"])
    self.config = config
    self.model = models.get_model(config.model.name, **kwargs)
    self.seed = int(config.seed)
    lm = section(config, "lm", default_config())
    self.prompts = tuple(lm.prompts)
    self.sample_tokens = int(lm.sample_tokens)
    self.temperature = float(lm.temperature)
    self._tokenizer = None
    if self.prompts:
      self._check_sampling(config)

  def _check_sampling(self, config) -> None:
    module = self.model.module
    if not hasattr(module, "decode"):
      raise ConfigError(f"lm.prompts: model {config.model.name!r} has no decode mode "
                        "to sample with; use transformer_lm or pass --config.lm.prompts=()")
    if self.sample_tokens < 1:
      raise ConfigError(f"lm.sample_tokens={self.sample_tokens} must be >= 1; pass "
                        "e.g. --config.lm.sample_tokens=32")
    if not self.temperature > 0:
      raise ConfigError(f"lm.temperature={self.temperature} must be > 0 (the greedy "
                        "continuation is always written); pass e.g. --config.lm.temperature=0.8")
    lengths = [len(text.text_to_words(p)) for p in self.prompts]
    if min(lengths) == 0:
      bad = self.prompts[lengths.index(0)]
      raise ConfigError(f"lm.prompts: {bad!r} has no words; give each prompt at least one")
    width = max(lengths) + self.sample_tokens
    if width > module.max_len:
      raise ConfigError(f"lm.sample_tokens={self.sample_tokens} + the longest prompt "
                        f"({max(lengths)} words) = {width} > model max_len="
                        f"{module.max_len}; pass a smaller --config.lm.sample_tokens")
    self._generate = jax.jit(
        lambda params, *args: transformer.generate(
            module, params, *args, banned=(text.PAD_ID, text.OOV_ID))[0])

  def init(self, key, batch):
    x = batch["inputs"]
    variables = self.model.init(key, jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype))
    return models.split_variables(variables)

  def _token_losses(self, params, model_state, tokens, *, train, key=None):
    logits, model_state = self.model.apply({"params": params, **model_state}, tokens,
                                           train=train, rngs=models.make_rngs(self.model, key))
    logits = logits.astype(jnp.float32)
    targets = tokens[:, 1:]
    logits = logits[:, :-1]
    mask = (targets != 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return ce * mask, correct * mask, mask, model_state

  def loss(self, params, model_state, batch, key):
    ce, correct, mask, model_state = self._token_losses(
        params, model_state, batch["inputs"], train=True, key=key)
    n = jnp.maximum(mask.sum(), 1.0)
    return ce.sum() / n, (model_state, {"accuracy": correct.sum() / n})

  def loss_weight(self, batch):
    """The loss is a mean over real target tokens: micro-batches weigh by them."""
    return jnp.sum(batch["inputs"][:, 1:] != 0).astype(jnp.float32)

  def eval_metrics(self, state, batch):
    ce, correct, mask, _ = self._token_losses(state.params, state.model_state,
                                              batch["inputs"], train=False)
    # Token sums of real rows; `finalize_eval` turns them into token means.
    w = batch["mask"][:, None]
    return {"token_loss": jnp.sum(w * ce), "token_correct": jnp.sum(w * correct),
            "tokens": jnp.sum(w * mask)}

  def finalize_eval(self, metrics):
    # The engine divided every sum by the example count: the ratios are exact.
    m = dict(metrics)
    n = m.pop("tokens")
    loss, correct = m.pop("token_loss"), m.pop("token_correct")
    if n <= 0:
      return dict(m, loss=math.nan, accuracy=math.nan, perplexity=math.nan)
    loss = loss / n
    return dict(m, loss=loss, accuracy=correct / n,
                perplexity=math.exp(loss) if loss < 700 else math.inf)

  def tokenizer(self, workdir: str) -> text.Tokenizer:
    if self._tokenizer is None:
      path = os.path.join(workdir, "tokenizer.json")
      if not os.path.exists(path):
        raise ConfigError(f"lm.prompts need the run's tokenizer, {path}, which only a "
                          "text dataset writes (--config.dataset=imdb); or pass "
                          "--config.lm.prompts=()")
      self._tokenizer = text.Tokenizer.load(path)
    return self._tokenizer

  def sample(self, state, workdir: str, step: int) -> list[tuple[str, str, str]]:
    """[(prompt as the model reads it, greedy continuation, sampled
    continuation)] for each of `lm.prompts`, at `step`."""
    tok = self.tokenizer(workdir)
    ids = [tok.encode(p) for p in self.prompts]
    width = max(len(i) for i in ids) + self.sample_tokens
    n = len(ids)
    prompts = np.zeros((2 * n, width), np.int32)  # greedy rows, then sampled rows
    for b, row in enumerate(ids + ids):
      prompts[b, :len(row)] = row
    lengths = np.array([len(i) for i in ids + ids], np.int32)
    temps = np.array([0.0] * n + [self.temperature] * n, np.float32)
    out = np.asarray(self._generate(parallel.to_host(state.params), prompts, lengths,
                                    temps, sample_key(self.seed, step)))
    cont = lambda b: ids_to_words(out[b, lengths[b]:lengths[b] + self.sample_tokens], tok)
    return [(ids_to_words(ids[b], tok), cont(b), cont(n + b)) for b in range(n)]

  def on_evaluate(self, state, workdir, step):
    """'samples': each prompt's greedy and sampled continuations, as text."""
    if not self.prompts:
      return {}
    rows = self.sample(state, workdir, step)
    lines = [f"step {int(step)}: {self.sample_tokens} tokens after each prompt "
             f"(greedy, then temperature {self.temperature:g}); sampling key = "
             f"fold_in(fold_in(PRNGKey(seed={self.seed}), {_SAMPLE_STREAM:#x}), "
             f"{int(step)})", ""]
    for given, (prompt, greedy, sampled) in zip(self.prompts, rows):
      lines += [f"prompt: {given}", f"  greedy: {prompt} | {greedy}",
                f"  T={self.temperature:g}: {prompt} | {sampled}", ""]
    return {"samples": "\n".join(lines)}


TASKS = {"language_model": LanguageModelTask}
