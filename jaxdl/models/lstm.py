"""LSTM as a `lax.scan` over time, padding-aware, and the IMDB classifier.

The cell is the standard one (gate order i, f, g, o in the fused 4H axis):

    i = sigmoid(x W_xi + h W_hi + b_i)     f = sigmoid(x W_xf + h W_hf + b_f)
    g = tanh(x W_xg + h W_hg + b_g)        o = sigmoid(x W_xo + h W_ho + b_o)
    c' = f * c + i * g                     h' = o * tanh(c')

The input projection `x W_x + b` does not depend on the recurrence, so it is
computed for all time steps at once (one [B*T, in] x [in, 4H] product, an
`nn.Dense`) before the scan; the scan body only does `h W_h` ([H, 4H]) and the
gates. `scripts/bench_lstm_scan.py` measures what that buys.

Padding: sequences are post-padded and `lengths[b]` counts the real steps of
row b. A padded step leaves (c, h) unchanged (the update is masked in the scan
body), so the final carry is the state at each row's own last real token, and
the output at padded positions is zero. The reverse direction runs the same
masked scan backwards in time: padded steps at the end come first and are
skipped, so each row is read backwards from its own last real token.

`scan_impl='fused'` runs the same scan with a hand-written backward pass
(`jaxdl.ops.lstm`: the recurrent kernel's gradient as one matrix product
after the reverse loop instead of one small product per step); parameters and
results are those of the default `'autodiff'`.

Research code can use `lstm_cell` / `lstm_scan` alone (pure functions of
arrays); `LSTM` is the linen layer built on them.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.base import Model, from_flax

Carry = tuple[jax.Array, jax.Array]  # (c, h), each [B, H]


def lstm_cell(w_h: jax.Array, carry: Carry,
              x_proj_t: jax.Array) -> tuple[Carry, jax.Array]:
  """One LSTM step from a precomputed input projection.

  Args:
    w_h: recurrent kernel [H, 4H], gate blocks in the order i, f, g, o.
    carry: (c, h), each [B, H].
    x_proj_t: x_t W_x + b for this step, [B, 4H] (same gate order).

  Returns:
    ((c', h'), h').
  """
  c, h = carry
  z = x_proj_t + h @ w_h
  zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
  i = jax.nn.sigmoid(zi)
  f = jax.nn.sigmoid(zf)
  g = jnp.tanh(zg)
  o = jax.nn.sigmoid(zo)
  c = f * c + i * g
  h = o * jnp.tanh(c)
  return (c, h), h


def lstm_scan(w_h: jax.Array, xs_proj: jax.Array,
              lengths: jax.Array | None, init_carry: Carry, *,
              unroll: int = 1, reverse: bool = False, impl: str = "autodiff",
              time_major: bool = False) -> tuple[Carry, jax.Array]:
  """Runs `lstm_cell` over time with `lax.scan`, masking padded steps.

  Args:
    w_h: recurrent kernel [H, 4H].
    xs_proj: input projections for all steps, batch-major [B, T, 4H].
    lengths: int [B], real steps per row (post-padding); None = all T.
    init_carry: (c0, h0), each [B, H].
    unroll: `lax.scan` unroll factor.
    reverse: read each row backwards from its own last real step.
    impl: 'autodiff' (jax differentiates the scan) or 'fused'
      (`jaxdl.ops.lstm.lstm_scan_fused`, same values, custom backward).
    time_major: `xs_proj` is [T, B, 4H] and the outputs [T, B, H] (the scan's
      own order: no transposes of the projection, its gradient or the outputs).

  Returns:
    (final carry (c, h) at each row's last real step processed, outputs
    [B, T, H] with zeros at padded positions). For `reverse=True` the output
    at position t is the state after reading steps len-1 down to t.
  """
  if impl == "fused":
    from jaxdl.ops.lstm import lstm_scan_fused  # pylint: disable=g-import-not-at-top
    return lstm_scan_fused(w_h, xs_proj, lengths, init_carry, unroll=unroll,
                           reverse=reverse, time_major=time_major)
  if impl != "autodiff":
    raise ValueError(f"lstm scan impl={impl!r}: choose 'autodiff' or 'fused'")
  xs = xs_proj if time_major else jnp.swapaxes(xs_proj, 0, 1)  # [T, B, 4H]
  t, b = xs.shape[:2]
  if lengths is None:
    lengths = jnp.full((b,), t, jnp.int32)
  # valid[t, b]: time-major like the scanned inputs.
  valid = jnp.arange(t, dtype=jnp.int32)[:, None] < lengths[None, :].astype(
      jnp.int32)

  def body(carry, inp):
    x_t, m_t = inp
    new_carry, h = lstm_cell(w_h, carry, x_t)
    m = m_t[:, None]
    new_carry = tuple(jnp.where(m, n, o) for n, o in zip(new_carry, carry))
    return new_carry, jnp.where(m, h, jnp.zeros_like(h))

  carry, hs = jax.lax.scan(body, tuple(init_carry), (xs, valid),
                           reverse=reverse, unroll=unroll)
  return carry, (hs if time_major else jnp.swapaxes(hs, 0, 1))


def _forget_bias_init(hidden_size: int, forget_bias: float):
  """Zero bias except `forget_bias` on the f block (Keras' unit_forget_bias)."""

  def init(key, shape, dtype=jnp.float32):
    del key
    b = jnp.zeros(shape, dtype)
    return b.at[hidden_size:2 * hidden_size].set(forget_bias)

  return init


class LSTMDirection(nn.Module):
  """One LSTM layer in one direction.

  Params: `input` (nn.Dense in -> 4H, kernel W_x and bias b) and
  `recurrent_kernel` W_h [H, 4H].
  """

  hidden_size: int
  reverse: bool = False
  unroll: int = 1
  forget_bias: float = 1.0
  scan_impl: str = "autodiff"

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None
               ) -> tuple[Carry, jax.Array]:
    h = self.hidden_size
    # Hoisted input projection: all time steps in one product, time-major:
    # transposing x [B, T, F] is cheaper than the projection [B, T, 4H] (and
    # the outputs, when unused, are never transposed back).
    xs_proj = nn.Dense(4 * h, name="input",
                       kernel_init=nn.initializers.glorot_uniform(),
                       bias_init=_forget_bias_init(h, self.forget_bias))(
                           jnp.swapaxes(x, 0, 1))
    w_h = self.param("recurrent_kernel", nn.initializers.orthogonal(),
                     (h, 4 * h), jnp.float32)
    w_h = w_h.astype(xs_proj.dtype)
    zeros = jnp.zeros((x.shape[0], h), xs_proj.dtype)
    carry, hs = lstm_scan(w_h, xs_proj, lengths, (zeros, zeros),
                          unroll=self.unroll, reverse=self.reverse,
                          impl=self.scan_impl, time_major=True)
    return carry, jnp.swapaxes(hs, 0, 1)


class LSTM(nn.Module):
  """Stacked, optionally bidirectional LSTM over [B, T, F] inputs.

  Attributes:
    hidden_size: H per direction.
    num_layers: stacked layers; layer k+1 reads layer k's full sequence.
    bidirectional: concatenate a reverse-direction layer's outputs (-> 2H).
    dropout_rate: dropout on the sequence between layers (not after the last).
    return_sequences: return outputs [B, T, H*dirs] (zeros at padded steps)
      instead of the final state h [B, H*dirs] of the top layer (forward:
      state at the last real step; reverse: state after reading step 0).
    unroll: `lax.scan` unroll factor.
    scan_impl: 'autodiff' or 'fused' (same results; see `lstm_scan`).
  """

  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  return_sequences: bool = False
  unroll: int = 1
  scan_impl: str = "autodiff"

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    final = None
    for layer in range(self.num_layers):
      if layer > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
      (_, h_f), seq = LSTMDirection(self.hidden_size, unroll=self.unroll,
                                    scan_impl=self.scan_impl,
                                    name=f"layer{layer}_fwd")(x, lengths)
      if self.bidirectional:
        (_, h_b), seq_b = LSTMDirection(self.hidden_size, reverse=True,
                                        unroll=self.unroll,
                                        scan_impl=self.scan_impl,
                                        name=f"layer{layer}_bwd")(x, lengths)
        seq = jnp.concatenate([seq, seq_b], axis=-1)
        final = jnp.concatenate([h_f, h_b], axis=-1)
      else:
        final = h_f
      x = seq
    return x if self.return_sequences else final


def lengths_from_tokens(tokens: jax.Array) -> jax.Array:
  """Position of the last nonzero token + 1 per row (0 = padding, post-padded).

  Not a count of nonzeros, so a 0 inside a sequence would still be read.
  """
  t = tokens.shape[-1]
  pos = jnp.arange(1, t + 1, dtype=jnp.int32)[None, :]
  return jnp.max(jnp.where(tokens != 0, pos, jnp.zeros_like(pos)), axis=-1)


class LSTMClassifier(nn.Module):
  """Embedding -> spatial dropout -> LSTM -> Dense: the Keras IMDB LSTM.

  Inputs are int token ids [B, T], 0 = padding, post-padded. Outputs are
  logits [B, num_outputs] (num_outputs=1: one logit for sigmoid BCE).
  """

  vocab_size: int = 10000
  embed_dim: int = 128
  hidden_size: int = 100
  num_outputs: int = 1
  spatial_dropout: float = 0.4
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  unroll: int = 1
  scan_impl: str = "autodiff"

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    tokens = tokens.astype(jnp.int32)
    lengths = lengths_from_tokens(tokens)
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
    # Drop whole embedding channels, same mask at every time step.
    x = nn.Dropout(self.spatial_dropout, broadcast_dims=(1,))(
        x, deterministic=not train)
    h = LSTM(self.hidden_size, num_layers=self.num_layers,
             bidirectional=self.bidirectional, dropout_rate=self.dropout_rate,
             unroll=self.unroll, scan_impl=self.scan_impl,
             name="lstm")(x, lengths, train=train)
    return nn.Dense(self.num_outputs, name="head")(h)


def lstm_classifier(vocab_size: int = 10000, embed_dim: int = 128,
                    hidden_size: int = 100, num_outputs: int = 1,
                    spatial_dropout: float = 0.4, num_layers: int = 1,
                    bidirectional: bool = False, dropout_rate: float = 0.0,
                    unroll: int = 1, scan_impl: str = "autodiff") -> Model:
  return from_flax(LSTMClassifier(
      vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size,
      num_outputs=num_outputs, spatial_dropout=spatial_dropout,
      num_layers=num_layers, bidirectional=bidirectional,
      dropout_rate=dropout_rate, unroll=unroll, scan_impl=scan_impl),
      name="lstm_classifier")


MODELS: dict[str, Callable[..., Model]] = {"lstm_classifier": lstm_classifier}
