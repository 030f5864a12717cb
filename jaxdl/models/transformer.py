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
  """Q, K, V by DenseGeneral to [.., heads, d_head]; out DenseGeneral back."""

  num_heads: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, *,
               train: bool) -> jax.Array:
    d_model = x.shape[-1]
    if d_model % self.num_heads:
      raise ValueError(f"d_model={d_model} is not divisible by "
                       f"num_heads={self.num_heads}")
    d_head = d_model // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, d_head), name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
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

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, *,
               train: bool) -> jax.Array:
    det = not train
    y = nn.LayerNorm(name="ln_attn")(x)
    y = MultiHeadSelfAttention(self.num_heads, self.attention_dropout_rate,
                               name="attn")(y, mask, train=train)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=det)
    y = nn.LayerNorm(name="ln_mlp")(x)
    y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=det)
    y = nn.Dense(x.shape[-1], name="mlp_out")(y)
    return x + nn.Dropout(self.dropout_rate)(y, deterministic=det)


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

  def setup(self):
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
                                name=f"block{i}")
                   for i in range(self.num_layers)]
    self.drop = nn.Dropout(self.dropout_rate)
    self.ln_final = nn.LayerNorm()

  def __call__(self, tokens: jax.Array, *, train: bool) -> jax.Array:
    t = tokens.shape[1]
    if t > self.max_len:
      raise ValueError(f"sequence length {t} > max_len={self.max_len}")
    x = self.embed(tokens)
    if self.positions == "learned":
      pos = self.pos_embed(jnp.arange(t)[None, :])
    else:
      pos = jnp.asarray(sinusoidal_positions(t, self.d_model))[None]
    x = self.drop(x + pos.astype(x.dtype), deterministic=not train)
    mask = (causal_padding_mask(tokens) if self.causal
            else padding_mask(tokens))
    for block in self.blocks:
      x = block(x, mask, train=train)
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
  """Causal encoder -> next-token logits [B, T, vocab]."""

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

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    tokens = tokens.astype(jnp.int32)
    enc = Encoder(**{f: getattr(self, f) for f in _ENCODER_FIELDS},
                  causal=True, name="encoder")
    h = enc(tokens, train=train)
    if self.tie_embeddings:
      return enc.embed.attend(h)
    return nn.Dense(self.vocab_size, name="lm_head")(h)


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
