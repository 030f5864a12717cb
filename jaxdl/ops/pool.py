"""Non-overlapping pooling as reshape + reduce, with a cheap exact gradient.

`flax.linen.max_pool` is `lax.reduce_window`, whose gradient XLA:CPU runs as a
slow select-and-scatter. When the window equals the stride, pooling is a
reshape of each spatial axis into (out, window) followed by a reduction, and
the gradient is a handful of fused elementwise ops.

Tie rule (max_pool): the gradient of a window goes to exactly one element,
the FIRST maximal one in row-major window order, which is what the reference
(`reduce_window` max, whose VJP is select-and-scatter with `>=`) does; so the
gradients equal flax's, ties included. (`jnp.max`'s own VJP would instead split
the gradient equally among tied elements.)

Other cases (overlapping or strided-apart windows, a window larger than the
padded input) fall back to the flax functions explicitly.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["max_pool", "avg_pool"]


def _plan(shape, window, strides, padding, *, allow_pad):
  """Per-spatial-axis explicit pads so each axis splits into whole windows.

  Returns None when the reshape path does not apply.
  """
  window = tuple(int(w) for w in window)
  strides = window if strides is None else tuple(int(s) for s in strides)
  nsp = len(window)
  if len(strides) != nsp or shape is None or len(shape) < nsp + 1:
    return None
  if window != strides:
    return None
  sp = shape[len(shape) - 1 - nsp:-1]
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      pads = [(0, -(n % w)) for n, w in zip(sp, window)]  # crop the remainder
    elif padding.upper() == "SAME":
      pads = []
      for n, w in zip(sp, window):
        total = max((-(-n // w) - 1) * w + w - n, 0)
        pads.append((total // 2, total - total // 2))
    else:
      return None
  else:
    pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != nsp or any(lo < 0 or hi < 0 for lo, hi in pads):
      return None
    pads = [(lo, hi - (n + lo + hi) % w)
            for (lo, hi), n, w in zip(pads, sp, window)]
  if any(lo + n + hi < w for (lo, hi), n, w in zip(pads, sp, window)):
    return None
  if not allow_pad and any(lo > 0 or hi > 0 for lo, hi in pads):
    return None
  return window, pads


def _pad(x, pads, value):
  nb = x.ndim - 1 - len(pads)
  cfg = [(0, 0, 0)] * nb + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
  if all(c == (0, 0, 0) for c in cfg):
    return x
  return lax.pad(x, jnp.array(value, x.dtype), cfg)


def _split(x, window):
  """(..., *S, C) -> (..., S0/w0, w0, S1/w1, w1, ..., C)."""
  nsp = len(window)
  lead = x.shape[:x.ndim - 1 - nsp]
  sp = x.shape[x.ndim - 1 - nsp:-1]
  new = lead + sum(((n // w, w) for n, w in zip(sp, window)), ()) + x.shape[-1:]
  return x.reshape(new)


def _window_axes(x_ndim, nsp):
  first = x_ndim - 1 - nsp
  return tuple(first + 2 * i + 1 for i in range(nsp))


def _max_split_fwd(xs, axes):
  y = jnp.max(xs, axis=axes, keepdims=True)
  return y, (xs, y)


def _max_split_bwd(axes, res, g):
  xs, y = res
  # First maximal element in row-major window order takes the whole gradient.
  taken = jnp.zeros(y.shape, bool)
  pieces = {}
  for offs in itertools.product(*[range(xs.shape[a]) for a in axes]):
    idx = [slice(None)] * xs.ndim
    for a, o in zip(axes, offs):
      idx[a] = slice(o, o + 1)
    hit = (xs[tuple(idx)] == y) & ~taken
    taken = taken | hit
    pieces[offs] = jnp.where(hit, g, jnp.zeros((), g.dtype))

  def assemble(level, prefix):
    if level == len(axes):
      return pieces[prefix]
    parts = [assemble(level + 1, prefix + (o,))
             for o in range(xs.shape[axes[level]])]
    return jnp.concatenate(parts, axis=axes[level])

  return (assemble(0, ()),)


def _max_split_impl(xs, axes):
  return jnp.max(xs, axis=axes, keepdims=True)


_max_split = jax.custom_vjp(_max_split_impl, nondiff_argnums=(1,))
_max_split.defvjp(_max_split_fwd, _max_split_bwd)


def max_pool(inputs, window_shape: Sequence[int],
             strides: Sequence[int] | None = None, padding="VALID"):
  """`flax.linen.max_pool` (same arguments and result), reshape-based when
  `strides == window_shape` (or strides is None and the window is 1s)."""
  window_shape = tuple(window_shape)
  if strides is None:
    strides = (1,) * len(window_shape)
  plan = _plan(np.shape(inputs), window_shape, strides, padding, allow_pad=True)
  if plan is None or not jnp.issubdtype(jnp.result_type(inputs), jnp.floating):
    return nn.max_pool(inputs, window_shape, strides=tuple(strides),
                       padding=padding)
  window, pads = plan
  x = _pad(inputs, pads, -jnp.inf)
  xs = _split(x, window)
  axes = _window_axes(x.ndim, len(window))
  y = _max_split(xs, axes)
  return jnp.squeeze(y, axis=axes)


def avg_pool(inputs, window_shape: Sequence[int],
             strides: Sequence[int] | None = None, padding="VALID",
             count_include_pad: bool = True):
  """`flax.linen.avg_pool`, reshape + mean when windows tile the input exactly
  (no padding needed); otherwise flax."""
  window_shape = tuple(window_shape)
  if strides is None:
    strides = (1,) * len(window_shape)
  plan = _plan(np.shape(inputs), window_shape, strides, padding,
               allow_pad=False)
  if plan is None:
    return nn.avg_pool(inputs, window_shape, strides=tuple(strides),
                       padding=padding, count_include_pad=count_include_pad)
  window, pads = plan
  x = _pad(inputs, pads, 0)
  xs = _split(x, window)
  axes = _window_axes(x.ndim, len(window))
  return jnp.mean(xs, axis=axes)
