"""Pre-LayerNorm Transformer encoder: a text classifier and a causal LM.

Each block is  x + Drop(MHSA(LN(x)))  then  x + Drop(MLP(LN(x))), with a final
LayerNorm after the stack (pre-LN needs it: the residual stream is never
normalised otherwise). Attention is `dot_product_attention`, a pure function
of arrays so it can be tested and reused alone; projections are
`nn.DenseGeneral`.

Token ids are int [B, T] with 0 = padding. Padding is masked as keys (no query
attends to a padding token), and the classifier mean-pools over real tokens
only, so appending padding changes nothing. The causal LM combines the padding
mask with a lower-triangular one and always lets a query see itself
(`causal_padding_mask`): a pad query then has one allowed key instead of none,
so position t depends on tokens <= t only, wherever the pads are.

`TransformerLM(decode=True)` is the same network fed one token at a time with
a cache of every layer's keys and values (flax's 'cache' collection, as in
`nn.MultiHeadDotProductAttention(decode=True)`); `generate` runs it in a
`lax.fori_loop` for greedy or temperature sampling.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.models.base import Model, from_flax


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None, *,
                          dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None) -> jax.Array:
  """softmax(Q K^T / sqrt(d_k)) V per head.

  Args:
    q: [B, Tq, heads, d_k]; k: [B, Tk, heads, d_k]; v: [B, Tk, heads, d_v].
    mask: bool, broadcastable to [B, heads, Tq, Tk] with the same rank (4);
      True = may attend. A query row with no allowed key gets uniform weights
      (finite, never NaN); callers ignore such rows.
    dropout_rate: dropout on the attention weights, applied only when
      `dropout_rng` is given.
    dropout_rng: key for that dropout.

  Returns:
    [B, Tq, heads, d_v].
  """
  d_k = q.shape[-1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(
      jnp.asarray(d_k, q.dtype))
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rng is not None and dropout_rate > 0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate),
                        jnp.zeros_like(weights))
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def padding_mask(tokens: jax.Array) -> jax.Array:
  """[B, 1, 1, T] bool: keys that are real tokens (id != 0)."""
  return (tokens != 0)[:, None, None, :]


def causal_mask(t: int) -> jax.Array:
  """[1, 1, T, T] bool lower-triangular: query q may see keys k <= q."""
  return jnp.tril(jnp.ones((t, t), jnp.bool_))[None, None]


def causal_padding_mask(tokens: jax.Array,
                        query_positions: jax.Array | None = None) -> jax.Array:
  """[B, 1, Tq, Tk] bool: earlier real keys, and the query itself.

  The diagonal is allowed even for a pad: a pad query with no allowed key
  would attend uniformly to every key, later ones included (a leak into the
  next-token logits at pad positions). `tokens` [B, Tk] are the keys;
  `query_positions` [Tq] default to all of them (0..Tk-1).
  """
  k_pos = jnp.arange(tokens.shape[1])
  q_pos = k_pos if query_positions is None else query_positions
  earlier = k_pos[None, :] <= q_pos[:, None]
  itself = k_pos[None, :] == q_pos[:, None]
  real = (tokens != 0)[:, None, :]
  return jnp.logical_and(earlier[None], jnp.logical_or(real, itself[None]))[:, None]


def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
  """[max_len, d_model] table of Vaswani et al. (sin on even, cos on odd)."""
  pos = np.arange(max_len)[:, None]
  div = np.exp(np.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
  table = np.zeros((max_len, d_model), np.float32)
  table[:, 0::2] = np.sin(pos * div)
  table[:, 1::2] = np.cos(pos * div)[:, :d_model // 2]
  return table


class MultiHeadSelfAttention(nn.Module):
  """Q, K, V by DenseGeneral to [.., heads, d_head]; out DenseGeneral back.

  With `decode=True` the keys and values of every position fed so far are kept
  in the 'cache' collection (sized by the first call, which initialises it);
  later calls write theirs at `index` and attend over the whole cache.
  """

  num_heads: int
  dropout_rate: float = 0.0
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, *,
               train: bool, index: jax.Array | None = None) -> jax.Array:
    d_model = x.shape[-1]
    if d_model % self.num_heads:
      raise ValueError(f"d_model={d_model} is not divisible by "
                       f"num_heads={self.num_heads}")
    d_head = d_model // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, d_head), name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
    if self.decode:
      ready = self.has_variable("cache", "cached_key")
      ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
      cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
      if ready:
        at = (0, index, 0, 0)
        ck.value = jax.lax.dynamic_update_slice(ck.value, k, at)
        cv.value = jax.lax.dynamic_update_slice(cv.value, v, at)
        k, v = ck.value, cv.value
    rng = (self.make_rng("dropout")
           if train and self.dropout_rate > 0 else None)
    y = dot_product_attention(q, k, v, mask, dropout_rate=self.dropout_rate,
                              dropout_rng=rng)
    return nn.DenseGeneral(d_model, axis=(-2, -1), name="out")(y)


class EncoderBlock(nn.Module):
  """Pre-LN block: attention and MLP sublayers with residuals and dropout."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, *,
               train: bool, index: jax.Array | None = None) -> jax.Array:
    det = not train
    y = nn.LayerNorm(use_fast_variance=False, name="ln_attn")(x)
    y = MultiHeadSelfAttention(self.num_heads, self.attention_dropout_rate,
                               self.decode, name="attn")(y, mask, train=train,
                                                         index=index)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=det)
    y = nn.LayerNorm(use_fast_variance=False, name="ln_mlp")(x)
    y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=det)
    y = nn.Dense(x.shape[-1], name="mlp_out")(y)
    return x + nn.Dropout(self.dropout_rate)(y, deterministic=det)


class _TokenCache(nn.Module):
  """Decode-mode bookkeeping: the token ids fed so far and the next position.

  Returns (position of the first token fed, its attention mask over the whole
  cache). The first call (at `init`) only sizes the cache: it sees the full
  sequence and returns its ordinary causal mask.
  """

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    ready = self.has_variable("cache", "tokens")
    buf = self.variable("cache", "tokens", jnp.zeros, tokens.shape, jnp.int32)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if not ready:
      return jnp.zeros((), jnp.int32), causal_padding_mask(tokens)
    start = index.value
    buf.value = jax.lax.dynamic_update_slice(buf.value, tokens, (0, start))
    index.value = start + tokens.shape[1]
    return start, causal_padding_mask(buf.value,
                                      start + jnp.arange(tokens.shape[1]))


class Encoder(nn.Module):
  """Token embedding + positions -> blocks -> final LayerNorm.

  Returns (hidden [B, T, d_model], the nn.Embed used, so the LM can tie its
  output to it via `embed.attend`).
  """

  vocab_size: int
  d_model: int = 128
  num_heads: int = 4
  num_layers: int = 2
  mlp_dim: int = 512
  max_len: int = 512
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  positions: str = "learned"  # or 'sinusoidal'
  causal: bool = False
  decode: bool = False  # causal only: tokens fed in steps, keys/values cached

  def setup(self):
    if self.decode and not self.causal:
      raise ValueError("decode=True needs causal=True")
    self.embed = nn.Embed(self.vocab_size, self.d_model,
                          embedding_init=nn.initializers.normal(0.02))
    if self.positions == "learned":
      self.pos_embed = nn.Embed(self.max_len, self.d_model,
                                embedding_init=nn.initializers.normal(0.02))
    elif self.positions != "sinusoidal":
      raise ValueError(f"positions={self.positions!r}: 'learned' or "
                       "'sinusoidal'")
    self.blocks = [EncoderBlock(self.num_heads, self.mlp_dim,
                                self.dropout_rate, self.attention_dropout_rate,
                                self.decode, name=f"block{i}")
                   for i in range(self.num_layers)]
    if self.decode:
      self.token_cache = _TokenCache()
    self.drop = nn.Dropout(self.dropout_rate)
    self.ln_final = nn.LayerNorm(use_fast_variance=False)

  def __call__(self, tokens: jax.Array, *, train: bool) -> jax.Array:
    t = tokens.shape[1]
    if t > self.max_len:
      raise ValueError(f"sequence length {t} > max_len={self.max_len}")
    x = self.embed(tokens)
    start = None
    if self.decode:
      start, mask = self.token_cache(tokens)
      positions = start + jnp.arange(t)
    else:
      positions = jnp.arange(t)
      mask = (causal_padding_mask(tokens) if self.causal
              else padding_mask(tokens))
    if self.positions == "learned":
      pos = self.pos_embed(positions[None, :])
    elif self.decode:
      pos = jnp.asarray(sinusoidal_positions(self.max_len,
                                             self.d_model))[positions][None]
    else:
      pos = jnp.asarray(sinusoidal_positions(t, self.d_model))[None]
    x = self.drop(x + pos.astype(x.dtype), deterministic=not train)
    for block in self.blocks:
      x = block(x, mask, train=train, index=start)
    return self.ln_final(x)


_ENCODER_FIELDS = ("vocab_size", "d_model", "num_heads", "num_layers",
                   "mlp_dim", "max_len", "dropout_rate",
                   "attention_dropout_rate", "positions")


class TransformerClassifier(nn.Module):
  """Encoder -> masked mean over real tokens -> Dense(num_outputs) logits."""

  vocab_size: int = 10000
  num_outputs: int = 1
  d_model: int = 128
  num_heads: int = 4
  num_layers: int = 2
  mlp_dim: int = 512
  max_len: int = 512
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  positions: str = "learned"

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    tokens = tokens.astype(jnp.int32)
    enc = Encoder(**{f: getattr(self, f) for f in _ENCODER_FIELDS},
                  causal=False, name="encoder")
    h = enc(tokens, train=train)
    real = (tokens != 0).astype(h.dtype)[..., None]
    pooled = jnp.sum(h * real, axis=1) / jnp.maximum(
        jnp.sum(real, axis=1), 1.0)
    return nn.Dense(self.num_outputs, name="head")(pooled)


class TransformerLM(nn.Module):
  """Causal encoder -> next-token logits [B, T, vocab].

  `decode=True`: see `generate` (same params, a 'cache' collection).
  """

  vocab_size: int = 10000
  d_model: int = 128
  num_heads: int = 4
  num_layers: int = 2
  mlp_dim: int = 512
  max_len: int = 512
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  positions: str = "learned"
  tie_embeddings: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    tokens = tokens.astype(jnp.int32)
    enc = Encoder(**{f: getattr(self, f) for f in _ENCODER_FIELDS},
                  causal=True, decode=self.decode, name="encoder")
    h = enc(tokens, train=train)
    if self.tie_embeddings:
      return enc.embed.attend(h)
    return nn.Dense(self.vocab_size, name="lm_head")(h)


def generate(module: TransformerLM, params, prompts: jax.Array,
             lengths: jax.Array, temperatures: jax.Array, key: jax.Array, *,
             banned: tuple[int, ...] = (0,)) -> tuple[jax.Array, jax.Array]:
  """Continues each prompt to the full width of `prompts`, with a KV cache.

  One `lax.fori_loop` over positions: position i's token goes through
  `module.clone(decode=True)` (one token, keys/values cached), and token i+1
  is the prompt's while i+1 < lengths[b], else drawn from the logits: argmax
  where temperatures[b] == 0, else a sample from softmax(logits / T) with
  key fold_in(key, i). The `banned` ids (padding, 0, by default) are never
  drawn. Jit it with `module` bound (e.g. functools.partial).

  Args:
    module: the TransformerLM whose `params` these are.
    prompts: int32 [B, L], row b's prompt in its first lengths[b] >= 1 places
      (the rest is overwritten); L <= module.max_len.
    lengths: int32 [B]; temperatures: float [B]; key: a PRNG key.
    banned: token ids given probability 0 (static).

  Returns:
    (tokens int32 [B, L], logits float32 [B, L - 1, vocab]: the next-token
    logits at positions 0..L-2, as the full model computes them).
  """
  dec = module.clone(decode=True)
  b, length = prompts.shape
  shapes = jax.eval_shape(dec.init, jax.random.key(0),
                          jnp.ones((b, length), jnp.int32))["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  logits0 = jnp.zeros((b, length - 1, module.vocab_size), jnp.float32)
  temps = jnp.asarray(temperatures, jnp.float32)

  def body(i, carry):
    tokens, cache, all_logits = carry
    tok = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
    logits, new = dec.apply({"params": params, "cache": cache}, tok,
                            mutable=["cache"])
    logits = logits[:, 0].astype(jnp.float32)
    allowed = logits.at[:, jnp.asarray(banned)].set(-jnp.inf)
    greedy = jnp.argmax(allowed, -1)
    drawn = jax.random.categorical(jax.random.fold_in(key, i),
                                   allowed / jnp.where(temps > 0, temps, 1.0)[:, None])
    chosen = jnp.where(temps > 0, drawn, greedy).astype(tokens.dtype)
    nxt = jnp.where(i + 1 < lengths, tokens[:, i + 1], chosen)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, i + 1))
    all_logits = jax.lax.dynamic_update_slice(all_logits, logits[:, None],
                                              (0, i, 0))
    return tokens, new["cache"], all_logits

  tokens, _, all_logits = jax.lax.fori_loop(
      0, length - 1, body, (prompts.astype(jnp.int32), cache, logits0))
  return tokens, all_logits


def transformer_classifier(vocab_size: int = 10000, num_outputs: int = 1,
                           d_model: int = 128, num_heads: int = 4,
                           num_layers: int = 2, mlp_dim: int = 512,
                           max_len: int = 512, dropout_rate: float = 0.1,
                           attention_dropout_rate: float = 0.0,
                           positions: str = "learned") -> Model:
  return from_flax(TransformerClassifier(
      vocab_size=vocab_size, num_outputs=num_outputs, d_model=d_model,
      num_heads=num_heads, num_layers=num_layers, mlp_dim=mlp_dim,
      max_len=max_len, dropout_rate=dropout_rate,
      attention_dropout_rate=attention_dropout_rate, positions=positions),
      name="transformer_classifier")


def transformer_lm(vocab_size: int = 10000, d_model: int = 128,
                   num_heads: int = 4, num_layers: int = 2,
                   mlp_dim: int = 512, max_len: int = 512,
                   dropout_rate: float = 0.1,
                   attention_dropout_rate: float = 0.0,
                   positions: str = "learned",
                   tie_embeddings: bool = True) -> Model:
  return from_flax(TransformerLM(
      vocab_size=vocab_size, d_model=d_model, num_heads=num_heads,
      num_layers=num_layers, mlp_dim=mlp_dim, max_len=max_len,
      dropout_rate=dropout_rate,
      attention_dropout_rate=attention_dropout_rate, positions=positions,
      tie_embeddings=tie_embeddings), name="transformer_lm")


MODELS: dict[str, Callable[..., Model]] = {
    "transformer_classifier": transformer_classifier,
    "transformer_lm": transformer_lm,
}

EXAMPLES = {"transformer_classifier": ("imdb_transformer", {}),
            "transformer_lm": ("imdb_lm", {})}
