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

Which scan runs (`scan_impl`, every layer and model; `lstm_scan`'s `impl`):
'autodiff' is the `lax.scan` above, differentiated by jax; 'fused' is the same
scan with a hand-written backward pass (`jaxdl.ops.lstm`: the recurrent
kernel's gradient as one matrix product after the reverse loop instead of one
small product per step), measured faster on XLA:CPU only; 'auto' (the
default) is 'fused' when the computation is lowered for CPU and 'autodiff'
for any other platform (`jaxdl.ops.platform.dispatch`). Same parameters and
results (to rounding) in all three; under forward-mode autodiff (`jax.jvp`,
`jax.jacfwd`) every one of them runs the plain scan, whose jvp jax derives.

Dropout inside the layer (Keras' `LSTM(dropout=, recurrent_dropout=)`,
variational: ONE mask per sequence, per example and feature, fixed over
time, scaled by 1/(1-rate), drawn only with `train=True` from the 'dropout'
rng): `dropout` multiplies the inputs x_t before the input kernel (so before
the hoisted projection), `recurrent_dropout` multiplies h_{t-1} before the
recurrent kernel. One mask each, shared by the four gates (Gal &
Ghahramani's tied form; Keras' `implementation=2` input dropout). Keras (tf.keras
2 and Keras 3) itself switches to `implementation=1` whenever
`recurrent_dropout > 0` and then draws an independent mask per gate, four for
x and four for h: same rates and expectation, more independent noise. The
carry and the outputs are the unmasked h. At rate 0 (the default) no mask
exists: the computation is the one without dropout.

Research code can use `lstm_cell` / `lstm_scan` alone (pure functions of
arrays, initial carry in, final carry and sequence out); `LSTM` is the linen
layer built on them and, with `return_carry=True`, also takes an initial
(c, h) and returns the final one with its outputs in one call.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.configs import ConfigError
from jaxdl.models.base import Model, from_flax
from jaxdl.ops import platform
from jaxdl.ops.lstm import lstm_scan_fused

Carry = tuple[jax.Array, jax.Array]  # (c, h), each [B, H]


def lstm_cell(w_h: jax.Array, carry: Carry, x_proj_t: jax.Array,
              recurrent_mask: jax.Array | None = None
              ) -> tuple[Carry, jax.Array]:
  """One LSTM step from a precomputed input projection.

  Args:
    w_h: recurrent kernel [H, 4H], gate blocks in the order i, f, g, o.
    carry: (c, h), each [B, H].
    x_proj_t: x_t W_x + b for this step, [B, 4H] (same gate order).
    recurrent_mask: recurrent dropout, [B, H] (already scaled by 1/(1-rate))
      or None: z = x_proj_t + (h * mask) W_h.

  Returns:
    ((c', h'), h').
  """
  c, h = carry
  z = x_proj_t + (h if recurrent_mask is None else h * recurrent_mask) @ w_h
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
              unroll: int = 1, reverse: bool = False, impl: str = "auto",
              time_major: bool = False,
              recurrent_mask: jax.Array | None = None
              ) -> tuple[Carry, jax.Array]:
  """Runs `lstm_cell` over time with `lax.scan`, masking padded steps.

  Args:
    w_h: recurrent kernel [H, 4H].
    xs_proj: input projections for all steps, batch-major [B, T, 4H].
    lengths: int [B], real steps per row (post-padding); None = all T.
    init_carry: (c0, h0), each [B, H].
    unroll: `lax.scan` unroll factor.
    reverse: read each row backwards from its own last real step.
    impl: 'auto' (the fused scan on CPU, 'autodiff' elsewhere), 'fused'
      (`jaxdl.ops.lstm.lstm_scan_fused`: same values, custom backward) or
      'autodiff' (jax differentiates the scan); see the module docstring.
    time_major: `xs_proj` is [T, B, 4H] and the outputs [T, B, H] (the scan's
      own order: no transposes of the projection, its gradient or the outputs).
    recurrent_mask: recurrent dropout mask [B, H] (scaled), the same at every
      step, or None.

  Returns:
    (final carry (c, h) at each row's last real step processed, outputs
    [B, T, H] with zeros at padded positions). For `reverse=True` the output
    at position t is the state after reading steps len-1 down to t.
  """
  platform.check_impl(impl, "fused", "autodiff",
                      "--config.model.kwargs.scan_impl")
  kw = dict(unroll=unroll, reverse=reverse, time_major=time_major)
  # Everything the fused scan's custom_vjp sees is an argument of `dispatch`,
  # so that a forward-mode tracer in any of them selects the plain scan.
  return platform.dispatch(
      impl,
      lambda w, xs, n, carry, m: lstm_scan_fused(w, xs, n, carry,
                                                 recurrent_mask=m, **kw),
      lambda w, xs, n, carry, m: _plain_scan(w, xs, n, carry, m, **kw),
      w_h, xs_proj, lengths, tuple(init_carry), recurrent_mask,
      fast_name="fused")


def _plain_scan(w_h, xs_proj, lengths, init_carry, recurrent_mask, *, unroll,
                reverse, time_major):
  """`lstm_scan` as a plain `lax.scan` (impl='autodiff')."""
  xs = xs_proj if time_major else jnp.swapaxes(xs_proj, 0, 1)  # [T, B, 4H]
  t, b = xs.shape[:2]
  # The fused scan's dtypes (both 'auto' branches must return the same types).
  w_h = w_h.astype(xs.dtype)
  init_carry = tuple(a.astype(xs.dtype) for a in init_carry)
  if recurrent_mask is not None:
    recurrent_mask = recurrent_mask.astype(xs.dtype)
  if lengths is None:
    lengths = jnp.full((b,), t, jnp.int32)
  # valid[t, b]: time-major like the scanned inputs.
  valid = jnp.arange(t, dtype=jnp.int32)[:, None] < lengths[None, :].astype(
      jnp.int32)

  def body(carry, inp):
    x_t, m_t = inp
    new_carry, h = lstm_cell(w_h, carry, x_t, recurrent_mask)
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


def _check_rate(name: str, rate: float) -> None:
  if not 0.0 <= rate < 1.0:
    raise ConfigError(f"LSTM {name}={rate!r}: a dropout rate in [0, 1) "
                      f"(--config.model.kwargs.{name}=...)")


class LSTMDirection(nn.Module):
  """One LSTM layer in one direction: `(carry, seq) = layer(x, lengths,
  initial_carry)`, carry (c, h) each [B, H] (zeros when None), seq [B, T, H].

  Params: `input` (nn.Dense in -> 4H, kernel W_x and bias b) and
  `recurrent_kernel` W_h [H, 4H]. `dropout` / `recurrent_dropout` are the
  variational masks of the module docstring (nn.Dropout submodules `x_dropout`
  and `h_dropout`, no params; each direction and layer draws its own).
  """

  hidden_size: int
  reverse: bool = False
  unroll: int = 1
  forget_bias: float = 1.0
  scan_impl: str = "auto"
  dropout: float = 0.0
  recurrent_dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None,
               initial_carry: Carry | None = None, *, train: bool = False
               ) -> tuple[Carry, jax.Array]:
    _check_rate("dropout", self.dropout)
    _check_rate("recurrent_dropout", self.recurrent_dropout)
    h = self.hidden_size
    # Hoisted input projection: all time steps in one product, time-major:
    # transposing x [B, T, F] is cheaper than the projection [B, T, 4H] (and
    # the outputs, when unused, are never transposed back).
    xt = jnp.swapaxes(x, 0, 1)
    if self.dropout > 0:
      # One mask per (example, feature), the same at every step (axis 0).
      xt = nn.Dropout(self.dropout, broadcast_dims=(0,), name="x_dropout")(
          xt, deterministic=not train)
    xs_proj = nn.Dense(4 * h, name="input",
                       kernel_init=nn.initializers.glorot_uniform(),
                       bias_init=_forget_bias_init(h, self.forget_bias))(xt)
    w_h = self.param("recurrent_kernel", nn.initializers.orthogonal(),
                     (h, 4 * h), jnp.float32)
    w_h = w_h.astype(xs_proj.dtype)
    mask = None
    if train and self.recurrent_dropout > 0:
      # The scaled mask itself: nn.Dropout of ones, [B, H].
      mask = nn.Dropout(self.recurrent_dropout, name="h_dropout")(
          jnp.ones((x.shape[0], h), xs_proj.dtype), deterministic=False)
    if initial_carry is None:
      zeros = jnp.zeros((x.shape[0], h), xs_proj.dtype)
      initial_carry = (zeros, zeros)
    carry, hs = lstm_scan(w_h, xs_proj, lengths, initial_carry,
                          unroll=self.unroll, reverse=self.reverse,
                          impl=self.scan_impl, time_major=True,
                          recurrent_mask=mask)
    return carry, jnp.swapaxes(hs, 0, 1)


class LSTM(nn.Module):
  """Stacked, optionally bidirectional LSTM over [B, T, F] inputs.

      out = LSTM(H)(x, lengths, train=train)
      (c, h), seq = LSTM(H, return_sequences=True, return_carry=True)(
          x, lengths, initial_carry=(c0, h0))

  Attributes:
    hidden_size: H per direction.
    num_layers: stacked layers; layer k+1 reads layer k's full sequence.
    bidirectional: concatenate a reverse-direction layer's outputs (-> 2H).
    dropout_rate: dropout on the sequence between layers (not after the last).
    dropout: Keras' `dropout`: a per-sequence mask on each layer's inputs
      x_t (module docstring).
    recurrent_dropout: Keras' `recurrent_dropout`: a per-sequence mask on
      h_{t-1} before the recurrent kernel.
    return_sequences: return outputs [B, T, H*dirs] (zeros at padded steps)
      instead of the final state h [B, H*dirs] of the top layer (forward:
      state at the last real step; reverse: state after reading step 0).
    return_carry: return `(carry, outputs)`: the final (c, h) of every layer
      and direction, in the layout of `initial_carry`.
    unroll: `lax.scan` unroll factor.
    scan_impl: 'auto', 'fused' or 'autodiff' (same results; see `lstm_scan`).

  `initial_carry` (c0, h0): each [B, H] for one unidirectional layer, else
  each [num_layers * dirs, B, H], index layer * dirs + direction (forward 0,
  reverse 1; PyTorch's h_0 layout). None: zeros. The reverse direction
  starts from it at each row's last real step.
  """

  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  return_sequences: bool = False
  return_carry: bool = False
  unroll: int = 1
  scan_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None = None,
               initial_carry: Carry | None = None, *, train: bool = False):
    dirs = 2 if self.bidirectional else 1
    n = self.num_layers * dirs
    inits = [None] * n
    if initial_carry is not None:
      c0, h0 = initial_carry
      want = ((x.shape[0], self.hidden_size) if n == 1 else
              (n, x.shape[0], self.hidden_size))
      if c0.shape != want or h0.shape != want:
        raise ValueError(f"LSTM initial_carry: (c, h) each of shape {want}, "
                         f"got {c0.shape} and {h0.shape}")
      inits = [(c0, h0)] if n == 1 else [(c0[k], h0[k]) for k in range(n)]
    kw = dict(unroll=self.unroll, scan_impl=self.scan_impl,
              dropout=self.dropout, recurrent_dropout=self.recurrent_dropout)
    final, carries = None, []
    for layer in range(self.num_layers):
      if layer > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
      carry, seq = LSTMDirection(self.hidden_size, name=f"layer{layer}_fwd",
                                 **kw)(x, lengths, inits[layer * dirs],
                                       train=train)
      carries.append(carry)
      final = carry[1]
      if self.bidirectional:
        carry_b, seq_b = LSTMDirection(self.hidden_size, reverse=True,
                                       name=f"layer{layer}_bwd", **kw)(
                                           x, lengths, inits[layer * dirs + 1],
                                           train=train)
        carries.append(carry_b)
        seq = jnp.concatenate([seq, seq_b], axis=-1)
        final = jnp.concatenate([final, carry_b[1]], axis=-1)
      x = seq
    out = x if self.return_sequences else final
    if not self.return_carry:
      return out
    if n == 1:
      return carries[0], out
    return (jnp.stack([c for c, _ in carries]),
            jnp.stack([h for _, h in carries])), out


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
  `dropout` / `recurrent_dropout` are the LSTM's own (Keras') input and
  recurrent masks; `dropout_rate` drops the sequence between stacked layers.
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
  scan_impl: str = "auto"
  dropout: float = 0.0
  recurrent_dropout: float = 0.0

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
             dropout=self.dropout, recurrent_dropout=self.recurrent_dropout,
             unroll=self.unroll, scan_impl=self.scan_impl,
             name="lstm")(x, lengths, train=train)
    return nn.Dense(self.num_outputs, name="head")(h)


def lstm_classifier(vocab_size: int = 10000, embed_dim: int = 128,
                    hidden_size: int = 100, num_outputs: int = 1,
                    spatial_dropout: float = 0.4, num_layers: int = 1,
                    bidirectional: bool = False, dropout_rate: float = 0.0,
                    unroll: int = 1, scan_impl: str = "auto",
                    dropout: float = 0.0,
                    recurrent_dropout: float = 0.0) -> Model:
  return from_flax(LSTMClassifier(
      vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size,
      num_outputs=num_outputs, spatial_dropout=spatial_dropout,
      num_layers=num_layers, bidirectional=bidirectional,
      dropout_rate=dropout_rate, unroll=unroll, scan_impl=scan_impl,
      dropout=dropout, recurrent_dropout=recurrent_dropout),
      name="lstm_classifier")


MODELS: dict[str, Callable[..., Model]] = {"lstm_classifier": lstm_classifier}

EXAMPLES = {"lstm_classifier": ("imdb_lstm", {})}
