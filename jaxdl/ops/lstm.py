"""A masked LSTM scan with a hand-written backward pass (`jax.custom_vjp`).

Same function as the plain scan of `jaxdl.models.lstm.lstm_scan` (gate order
i, f, g, o; padded steps keep the carry and output zeros; an optional
recurrent dropout mask m multiplies h_{t-1} before W_h), different backward
schedule. `lstm_scan(impl='auto')` runs it on CPU only (`jaxdl.ops.platform`).
Autodiff of `lax.scan` accumulates the recurrent kernel's gradient inside the
reverse loop, one [H, B] x [B, 4H] product and one add per time step, and
recomputes or re-reads gates through generic transposes. Here the reverse loop
only does what is truly sequential:

    dz_t  = gate-derivatives(dh_t, dc_t)          elementwise, [B, 4H]
    dh_{t-1} = (dz_t @ W_h^T) [* m] (+ pass-through of masked steps)

and everything else is one product after the loop:

    dW_h = sum_t (h_{t-1} [* m])^T dz_t = (H_prev [* m])^T dZ          one GEMM
    d xs_proj = dZ                                                    no work
    dm = sum_t h_{t-1} * (dz_t @ W_h^T)      (only with a mask; one GEMM that
                                              XLA drops when m is not differentiated)

The forward saves the gate derivatives already multiplied out (6H floats per
row and step, see `_forward`), so each backward step is a few elementwise
fusions around one [B, 4H] x [4H, H] product; `H_prev` is the saved output
sequence shifted by one step (`_h_prev`), not a second copy.

What XLA:CPU (jax 0.10) made of the loop bodies decided their form, measured
on the IMDB shapes (B = 32 / 128, H = 100, T = 100; docs/performance.md):
a loop fusion with two or more different transcendental functions on
slices of the step's [B, 4H] pre-activation compiles to slow, apparently
scalar code (two sigmoids on [128, 100] slices: ~60 us in the loop against
~6 us for one), so all four gate activations are one `tanh` over [B, 4H]
(sigmoid(z) = (tanh(z / 2) + 1) / 2); gate blocks are joined with
`concatenate` on the last axis rather than stacked and reshaped; the
post-loop dW_h is a plain 2-D product (the 3-D einsum took twice as long).
`tests/test_ops.py` checks values and gradients against autodiff of the plain
scan; `scripts/benchmark.py` measures it (lstm_classifier (scan_impl=fused)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["lstm_scan_fused"]


def _gates(z):
  """(i, f, g, o) = (sigmoid, sigmoid, tanh, sigmoid) of the four [B, H]
  blocks of z [B, 4H], as one tanh over z: sigmoid(x) = tanh(x/2)/2 + 1/2."""
  hidden = z.shape[-1] // 4
  is_g = (jnp.arange(4 * hidden) // hidden) == 2
  scale = jnp.where(is_g, 1.0, 0.5).astype(z.dtype)
  shift = jnp.where(is_g, 0.0, 0.5).astype(z.dtype)
  return jnp.split(jnp.tanh(z * scale) * scale + shift, 4, axis=-1)


def _forward(w_h, xs, valid, c0, h0, mask, unroll, reverse, residuals=True):
  """Time-major scan; returns ((c, h), outputs, residuals).

  `mask` (recurrent dropout, [B, H], or None) multiplies h before W_h; the
  carry and the outputs are the unmasked h.

  The residuals are what the backward step multiplies by, precomputed here
  so that it is elementwise work around one matrix product:
    k  = [g i (1-i), c_prev f (1-f), i (1-g^2), tanh(c) o (1-o)]   [B, 4H]
         (dz = k * [dc, dc, dc, dh] for the cotangents dc, dh of c', h')
    j  = o (1 - tanh(c)^2)    (dh's contribution to dc)            [B, H]
    f                         (dc's contribution to dc_prev)       [B, H]
  """
  def body(carry, inp):
    c, h = carry
    x_t, m_t = inp
    i, f, g, o = _gates(x_t + (h if mask is None else h * mask) @ w_h)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    h_new = o * tc
    m = m_t[:, None]
    out = (jnp.where(m, c_new, c), jnp.where(m, h_new, h))
    hs = jnp.where(m, h_new, jnp.zeros_like(h_new))
    if not residuals:
      return out, (hs, ())
    k = jnp.concatenate([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g),
                         tc * o * (1 - o)], axis=-1)
    return out, (hs, (k, o * (1 - tc * tc), f))

  carry, (hs, res) = jax.lax.scan(body, (c0, h0), (xs, valid), unroll=unroll,
                                  reverse=reverse)
  return carry, hs, res


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _scan(w_h, xs, valid, c0, h0, mask, unroll, reverse):
  carry, hs, _ = _forward(w_h, xs, valid, c0, h0, mask, unroll, reverse,
                          residuals=False)
  return carry, hs


def _scan_fwd(w_h, xs, valid, c0, h0, mask, unroll, reverse):
  carry, hs, res = _forward(w_h, xs, valid, c0, h0, mask, unroll, reverse)
  return (carry, hs), (w_h, valid, res, hs, h0, mask)


def _h_prev(hs, valid, h0, reverse):
  """The h each step read, [T, B, H], from the outputs hs (time-major).

  Rows are post-padded, so a real step's predecessor in reading order is the
  previous real step (its output) or, for the first one, h0. Padded steps
  get some value: their dz is zero, so they add nothing to dW_h.
  """
  if not reverse:
    return jnp.concatenate([h0[None], hs[:-1]], axis=0)
  # Reverse: step t reads step t + 1's output, or h0 where t + 1 is padding.
  first = ~jnp.concatenate([valid[1:], jnp.zeros_like(valid[:1])], axis=0)
  return jnp.where(first[..., None], h0[None],
                   jnp.concatenate([hs[1:], hs[:1]], axis=0))


def _scan_bwd(unroll, reverse, saved, cts):
  w_h, valid, (ks, js, fs), hs, h0, mask = saved
  (dc_t, dh_t), d_hs = cts
  w_ht = w_h.T
  hidden = w_h.shape[0]
  # Recurrent dropout: z = (h m) W_h, so d(h m) = dz W_h^T and dh = d(h m) m.
  rec = (lambda dz: dz @ w_ht) if mask is None else (lambda dz: (dz @ w_ht) * mask)

  def body(carry, inp):
    dc, dh = carry
    k, j, f, m_t, dout = inp
    m = m_t[:, None]
    zero = jnp.zeros_like(dh)
    dh_new = jnp.where(m, dh + dout, zero)
    dc_new = jnp.where(m, dc, zero) + dh_new * j
    k_i, k_f, k_g, k_o = jnp.split(k, 4, axis=-1)
    dz = jnp.concatenate([k_i * dc_new, k_f * dc_new, k_g * dc_new,
                          k_o * dh_new], axis=-1)
    dh_prev = rec(dz) + jnp.where(m, zero, dh)
    dc_prev = dc_new * f + jnp.where(m, zero, dc)
    return (dc_prev, dh_prev), dz

  (dc0, dh0), dzs = jax.lax.scan(body, (dc_t, dh_t), (ks, js, fs, valid, d_hs),
                                 unroll=unroll, reverse=not reverse)
  t, b = dzs.shape[:2]
  h_prev = _h_prev(hs, valid, h0, reverse)
  dz2 = dzs.reshape(t * b, 4 * hidden)
  if mask is None:
    dw_h = h_prev.reshape(t * b, hidden).T @ dz2
    return dw_h.astype(w_h.dtype), dzs, None, dc0, dh0, None
  dw_h = (h_prev * mask).reshape(t * b, hidden).T @ dz2
  d_mask = jnp.sum(h_prev * (dz2 @ w_ht).reshape(t, b, hidden), axis=0)
  return dw_h.astype(w_h.dtype), dzs, None, dc0, dh0, d_mask


_scan.defvjp(_scan_fwd, _scan_bwd)


def lstm_scan_fused(w_h, xs_proj, lengths, init_carry, *, unroll: int = 1,
                    reverse: bool = False, time_major: bool = False,
                    recurrent_mask=None):
  """`jaxdl.models.lstm.lstm_scan` (same arguments and results), custom VJP.

  Forces this implementation, whatever the platform; forward-mode autodiff
  (`jax.jvp`) cannot differentiate it: use `lstm_scan`, whose `impl` routes
  forward mode to the plain scan.

  `time_major=True`: `xs_proj` is [T, B, 4H] and the outputs [T, B, H], which
  saves two [T, B, 4H]-sized transposes (and their gradients' transposes) when
  the caller can project time-major, as `LSTMDirection` does.
  """
  xs = xs_proj if time_major else jnp.swapaxes(xs_proj, 0, 1)
  t, b = xs.shape[:2]
  if lengths is None:
    lengths = jnp.full((b,), t, jnp.int32)
  valid = jnp.arange(t, dtype=jnp.int32)[:, None] < lengths[None, :].astype(jnp.int32)
  c0, h0 = init_carry
  w_h = w_h.astype(xs.dtype)
  if recurrent_mask is not None:
    recurrent_mask = recurrent_mask.astype(xs.dtype)
  carry, hs = _scan(w_h, xs, valid, c0.astype(xs.dtype), h0.astype(xs.dtype),
                    recurrent_mask, int(unroll), bool(reverse))
  return carry, (hs if time_major else jnp.swapaxes(hs, 0, 1))
