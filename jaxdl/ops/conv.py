"""Convolution as im2col + one matmul, with matmul-only gradients.

Rewriting a channels-last convolution as

    patches = concat_k(strided slice k of padded x)     # (N, *out, K*C)
    y = patches @ W.reshape(K*C, F)                      # one dot_general

keeps the FLOPs in the GEMM, and the `custom_vjp` keeps the backward pass in
GEMMs as well:

    dW = patches^T @ dY                                  # (K*C, F)
    dX = col2im(dY @ W^T)                                # K interior-padded adds

`conv_general_dilated` has the signature of `lax.conv_general_dilated` so it
plugs into `flax.linen.Conv(..., conv_general_dilated=conv_general_dilated)`.
Cases it does not rewrite (input dilation, feature/batch groups, layouts other
than channels-last, mismatched ranks) go to `lax.conv_general_dilated`
unchanged; `is_supported` says which path a call takes.

What XLA:CPU (jax 0.10.2) does without it: convolutions and their transposes
are YNNPACK fusions, which run single-threaded; the kernel gradient of a
3-input-channel conv is 2-3x slower than patches^T @ dY; max-pool's gradient
(select-and-scatter) is 10-20x slower than `jaxdl.ops.max_pool`'s. For the
64-channel layers the YNNPACK convs are about as fast as im2col (they use one
core well, the GEMMs use two less well), so the layer-level gain is mostly on
the first conv; see scripts/bench_ops.py for figures.

`conv_transpose` is `lax.conv_transpose` as one GEMM + col2im (no multiplies
by the inserted zeros); flax's ConvTranspose calls lax directly and has no
hook, so using it from a model needs a module of one's own.
"""

from __future__ import annotations

import functools
import itertools
import operator
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdl.ops import platform

__all__ = ["conv_general_dilated", "conv_transpose", "is_supported"]

# How each pass is computed (read at trace time; scripts/bench_ops.py and the
# report in its docstring measured the choices on XLA:CPU, jax 0.10.2):
#   FWD_MODE: 'im2col' (patches @ W) | 'lax' (XLA's conv, YNNPACK here)
#   DX_MODE:  'col2im' (dY @ W^T, then K interior-padded adds; any stride) |
#             'transpose' (im2col of padded dY @ flipped W; stride 1, else
#             col2im) | 'lax' (XLA's transposed conv)
#   DW_MODE:  'im2col' (patches^T @ dY) | 'lax' (XLA's kernel-grad conv)
FWD_MODE = "im2col"
DX_MODE = "col2im"
DW_MODE = "im2col"
# Keep the forward patches (when the forward used them) as the dW residual
# instead of recomputing them in the backward pass.
SAVE_PATCHES = True
# How patches are built: 'concat' (one concatenate of K strided slices along
# channels), 'axiswise' (stack the taps one spatial axis at a time, then one
# transpose; faster when channels are few, e.g. RGB input), or 'auto'
# (axiswise below AXISWISE_MAX_CHANNELS input channels).
IM2COL_IMPL = "auto"
AXISWISE_MAX_CHANNELS = 8
# Strided col2im (a transposed conv's output, a strided conv's dX) by output
# phase: the taps whose offsets agree modulo the stride land on one sub-grid,
# so they are summed there at input resolution and the s**ndim sub-grids are
# interleaved once, instead of K adds of interior-padded full-size arrays.
COL2IM_PHASES = True
# Input channels above which `conv_general_dilated` hands a (supported) conv to
# `lax.conv_general_dilated` anyway; None = im2col for every supported conv;
# 'auto' = measured best on XLA:CPU (scripts/benchmark.py, CIFAR CNN step):
# with XLA's Eigen convolutions (`jaxdl.runtime.configure_cpu()`) lax for every
# conv (0); with jax's default single-threaded YNNPACK convolutions im2col
# only for thin inputs (<= 8 channels, e.g. RGB), where it wins most.
IM2COL_MAX_CHANNELS = "auto"
# For the convolutions left to lax (above): XLA:CPU computes the kernel
# gradient from the input in a batch-minor layout, and the transposing copy
# that makes it absorbs the input's elementwise producers: in a ResNet the
# BatchNorm, ReLU and residual adds of several blocks, recomputed inside a
# strided copy (155 of a 320 ms fwd+bwd at batch 128; a plain transpose of
# the same 8 MB takes 0.7 ms). With True the backward pass reads a copy of
# the input materialised in the forward pass (`_opaque`), so the transpose is
# a plain one: ResNet fwd+bwd 320 -> 190 ms. The values are lax's, exactly.
MATERIALIZE_DW_INPUT = True


def eigen_convolutions() -> bool:
  """Whether XLA:CPU runs convolutions with Eigen (see `ops.platform`)."""
  return platform.cpu_convolutions() == "eigen"


def _max_channels():
  if IM2COL_MAX_CHANNELS == "auto":
    return 0 if eigen_convolutions() else 8
  return IM2COL_MAX_CHANNELS


def _channels_last_dnums(ndim: int) -> lax.ConvDimensionNumbers:
  lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
  rhs = (ndim - 1, ndim - 2) + tuple(range(0, ndim - 2))
  return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _is_ones(x: Sequence[int] | None) -> bool:
  return x is None or all(int(v) == 1 for v in x)


def is_supported(lhs_shape, rhs_shape, *, lhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1,
                 batch_group_count=1) -> bool:
  """Whether the im2col path handles this call (else it falls back to lax)."""
  if len(lhs_shape) != len(rhs_shape) or len(lhs_shape) < 3:
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  if not _is_ones(lhs_dilation):
    return False
  if dimension_numbers is None:  # lax's default is NCHW/OIHW.
    return False
  try:
    dn = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape),
                                    dimension_numbers)
  except (TypeError, ValueError):
    return False
  return tuple(dn) == tuple(_channels_last_dnums(len(lhs_shape)))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Drop-in for `lax.conv_general_dilated`; im2col + GEMM when channels-last.

  Handled: any number of spatial dims, channels-last layout (NHWC/HWIO/NHWC,
  as `flax.linen.Conv` passes it, given as strings or ConvDimensionNumbers),
  any strides, 'SAME'/'SAME_LOWER'/'VALID' or explicit (also negative)
  padding, kernel (rhs) dilation. Everything else falls back to lax.
  """
  supported = is_supported(np.shape(lhs), np.shape(rhs), lhs_dilation=lhs_dilation,
                           dimension_numbers=dimension_numbers,
                           feature_group_count=feature_group_count,
                           batch_group_count=batch_group_count)
  use_lax = not supported or (_max_channels() is not None
                              and np.shape(lhs)[-1] > _max_channels())
  if use_lax and not (supported and MATERIALIZE_DW_INPUT):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  nsp = lhs.ndim - 2
  strides = tuple(int(s) for s in window_strides)
  dil = (1,) * nsp if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
  kshape = tuple(rhs.shape[:nsp])
  if isinstance(padding, str):
    eff = [(k - 1) * d + 1 for k, d in zip(kshape, dil)]
    pads = lax.padtype_to_pads(lhs.shape[1:-1], eff, strides, padding)
  else:
    pads = [(operator.index(lo), operator.index(hi)) for lo, hi in padding]
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if preferred_element_type is not None:
    preferred_element_type = jnp.dtype(preferred_element_type)
  out_dtype = (jnp.result_type(lhs, rhs) if preferred_element_type is None
               else preferred_element_type)
  lhs = lhs.astype(jnp.result_type(lhs, rhs))
  rhs = rhs.astype(lhs.dtype)
  make = _lax_conv_fn if use_lax else _conv_fn
  fn = make(strides, pads, dil, _hashable(precision), preferred_element_type)
  return fn(lhs, rhs).astype(out_dtype)


def _opaque(x):
  """x, passed through a conditional that XLA cannot see through or remove.

  Both branches return x (x + 0 differs from x only in the sign of a zero,
  and only runs when x's first element is NaN), so the value is x; but XLA
  can no longer fuse x's producers into x's consumers. (An
  optimization_barrier would not do: XLA:CPU expands barriers before fusion.)
  """
  first = x.reshape(-1)[0]
  return lax.cond(first == first, lambda t: t, lambda t: t + jnp.zeros((), t.dtype), x)


@functools.lru_cache(maxsize=None)
def _lax_conv_fn(strides, pads, dil, precision, pet):
  """`lax.conv_general_dilated` (channels-last) whose kernel gradient reads a
  materialised copy of the input (see MATERIALIZE_DW_INPUT)."""

  def lax_conv(x, w):
    return lax.conv_general_dilated(
        x, w, strides, pads, rhs_dilation=dil,
        dimension_numbers=_channels_last_dnums(x.ndim), precision=precision,
        preferred_element_type=pet)

  @jax.custom_vjp
  def conv(x, w):
    return lax_conv(x, w)

  def fwd_rule(x, w):
    return lax_conv(x, w), (_opaque(x), w)

  def bwd_rule(res, dy):
    x, w = res
    dx, dw = jax.vjp(lax_conv, x, w)[1](dy.astype(x.dtype))
    return dx.astype(x.dtype), dw.astype(w.dtype)

  conv.defvjp(fwd_rule, bwd_rule)
  return conv


def _hashable(precision):
  if isinstance(precision, list):
    return tuple(precision)
  return precision


def _out_spatial(in_sp, kshape, strides, pads, dil):
  out = []
  for n, k, s, (lo, hi), d in zip(in_sp, kshape, strides, pads, dil):
    span = n + lo + hi - (k - 1) * d
    out.append(max(0, (span - 1) // s + 1) if span > 0 else 0)
  return tuple(out)


def _pad_spatial(x, pads, value=0.0):
  cfg = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
  if all(c == (0, 0, 0) for c in cfg):
    return x
  return lax.pad(x, jnp.array(value, x.dtype), cfg)


def _axiswise(c):
  if IM2COL_IMPL == "auto":
    return c < AXISWISE_MAX_CHANNELS
  return IM2COL_IMPL == "axiswise"


def _im2col(xp, kshape, strides, dil, out_sp):
  """(N, *S, C) padded input -> (N, *out, K*C), kernel offsets major."""
  if _axiswise(xp.shape[-1]):
    return _im2col_axiswise(xp, kshape, strides, dil, out_sp)
  n, c = xp.shape[0], xp.shape[-1]
  cols = []
  for offs in itertools.product(*[range(k) for k in kshape]):
    start = (0,) + tuple(o * d for o, d in zip(offs, dil)) + (0,)
    limit = ((n,) + tuple(st + (o - 1) * s + 1 for st, o, s
                          in zip(start[1:-1], out_sp, strides)) + (c,))
    sl_strides = (1,) + strides + (1,)
    if (start == (0,) * xp.ndim and limit == xp.shape
        and sl_strides == (1,) * xp.ndim):
      cols.append(xp)
    else:
      cols.append(lax.slice(xp, start, limit, sl_strides))
  return cols[0] if len(cols) == 1 else lax.concatenate(cols, xp.ndim - 1)


def _im2col_axiswise(xp, kshape, strides, dil, out_sp):
  """`_im2col` one spatial axis at a time: (N, O1, k1, O2, k2, ..., C)."""
  nsp = len(kshape)
  x = xp
  for a in range(nsp):
    ax = 1 + 2 * a  # current position of spatial axis a
    taps = [lax.slice_in_dim(x, o * dil[a], o * dil[a] + (out_sp[a] - 1)
                             * strides[a] + 1, strides[a], axis=ax)
            for o in range(kshape[a])]
    x = jnp.stack(taps, axis=ax + 1)
  perm = ((0,) + tuple(1 + 2 * a for a in range(nsp))
          + tuple(2 + 2 * a for a in range(nsp)) + (x.ndim - 1,))
  x = jnp.transpose(x, perm)
  return x.reshape(x.shape[:1 + nsp] + (-1,))


def _col2im(dcols, xp_sp, c, kshape, strides, dil):
  """Adjoint of `_im2col`: (N, *out, K*C) -> (N, *S, C) padded-input grad."""
  if COL2IM_PHASES and any(s > 1 for s in strides):
    return _col2im_phases(dcols, xp_sp, c, kshape, strides, dil)
  if _axiswise(c):
    return _col2im_axiswise(dcols, xp_sp, c, kshape, strides, dil)
  out_sp = dcols.shape[1:-1]
  zero = jnp.array(0, dcols.dtype)
  acc = None
  for idx, offs in enumerate(itertools.product(*[range(k) for k in kshape])):
    piece = lax.slice_in_dim(dcols, idx * c, (idx + 1) * c, axis=dcols.ndim - 1)
    cfg = [(0, 0, 0)]
    for o, d, s, n_out, n_in in zip(offs, dil, strides, out_sp, xp_sp):
      lo = o * d
      cfg.append((lo, n_in - lo - ((n_out - 1) * s + 1), s - 1))
    cfg.append((0, 0, 0))
    piece = lax.pad(piece, zero, cfg)
    acc = piece if acc is None else acc + piece
  return acc


def _col2im_phases(dcols, xp_sp, c, kshape, strides, dil):
  """`_col2im` for strides > 1, summed per output phase (see COL2IM_PHASES)."""
  nsp = len(kshape)
  n = dcols.shape[0]
  out_sp = dcols.shape[1:-1]
  lengths = tuple(-(-x // s) for x, s in zip(xp_sp, strides))
  zero = jnp.array(0, dcols.dtype)
  acc = {}
  for idx, offs in enumerate(itertools.product(*[range(k) for k in kshape])):
    piece = lax.slice_in_dim(dcols, idx * c, (idx + 1) * c, axis=dcols.ndim - 1)
    phase = tuple((o * d) % s for o, d, s in zip(offs, dil, strides))
    shift = tuple((o * d) // s for o, d, s in zip(offs, dil, strides))
    cfg = ([(0, 0, 0)] + [(q, length - m - q, 0) for q, length, m
                          in zip(shift, lengths, out_sp)] + [(0, 0, 0)])
    piece = lax.pad(piece, zero, cfg)
    acc[phase] = piece if phase not in acc else acc[phase] + piece
  full = jnp.zeros((n,) + lengths + (c,), dcols.dtype)
  grids = [acc.get(ph, full) for ph in itertools.product(*[range(s) for s in strides])]
  # (P, N, *L, C) with P = prod(s) in row-major phase order -> (N, *L*s, C).
  x = jnp.stack(grids, axis=0).reshape(tuple(strides) + (n,) + lengths + (c,))
  perm = [nsp]
  for a in range(nsp):
    perm += [nsp + 1 + a, a]
  x = jnp.transpose(x, perm + [x.ndim - 1])  # (N, L1, s1, L2, s2, ..., C)
  x = x.reshape((n,) + tuple(l * s for l, s in zip(lengths, strides)) + (c,))
  return lax.slice(x, (0,) * x.ndim, (n,) + tuple(xp_sp) + (c,))


def _col2im_axiswise(dcols, xp_sp, c, kshape, strides, dil):
  """`_col2im` one spatial axis at a time (last axis first)."""
  nsp = len(kshape)
  n = dcols.shape[0]
  out_sp = dcols.shape[1:-1]
  x = dcols.reshape((n,) + tuple(out_sp) + tuple(kshape) + (c,))
  perm = [0]
  for a in range(nsp):
    perm += [1 + a, 1 + nsp + a]
  x = jnp.transpose(x, perm + [x.ndim - 1])  # (N, O1, k1, O2, k2, ..., C)
  zero = jnp.array(0, dcols.dtype)
  for a in reversed(range(nsp)):
    ax = 1 + 2 * a
    acc = None
    for o in range(kshape[a]):
      piece = lax.index_in_dim(x, o, axis=ax + 1, keepdims=False)
      lo = o * dil[a]
      cfg = [(0, 0, 0)] * piece.ndim
      cfg[ax] = (lo, xp_sp[a] - lo - ((out_sp[a] - 1) * strides[a] + 1),
                 strides[a] - 1)
      piece = lax.pad(piece, zero, cfg)
      acc = piece if acc is None else acc + piece
    x = acc
  return x


def _dot_last_first(a, b, precision, pet):
  """Contracts the last axis of `a` with the first of `b`."""
  return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=pet)


@functools.lru_cache(maxsize=None)
def _conv_fn(strides, pads, dil, precision, pet):
  """A custom_vjp channels-last conv for one static configuration."""

  def geometry(x, w):
    nsp = x.ndim - 2
    kshape = tuple(w.shape[:nsp])
    xp_sp = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], pads))
    out_sp = _out_spatial(x.shape[1:-1], kshape, strides, pads, dil)
    return kshape, xp_sp, out_sp

  def patches_of(x, w):
    kshape, _, out_sp = geometry(x, w)
    return _im2col(_pad_spatial(x, pads), kshape, strides, dil, out_sp)

  def lax_conv(x, w):
    nsp = x.ndim - 2
    return lax.conv_general_dilated(
        x, w, strides, pads, rhs_dilation=dil,
        dimension_numbers=_channels_last_dnums(nsp + 2), precision=precision,
        preferred_element_type=pet)

  def forward(x, w, save):
    fwd, dw = FWD_MODE, DW_MODE
    if fwd == "lax":
      return lax_conv(x, w), None
    p = patches_of(x, w)
    y = _dot_last_first(p, w.reshape(-1, w.shape[-1]), precision, pet)
    return y, (p if save and dw == "im2col" else None)

  @jax.custom_vjp
  def conv(x, w):
    return forward(x, w, False)[0]

  def fwd_rule(x, w):
    y, p = forward(x, w, SAVE_PATCHES)
    return y, (x, w, p)

  def bwd_rule(res, dy):
    x, w, p = res
    dx_mode, dw_mode = DX_MODE, DW_MODE
    kshape, xp_sp, _ = geometry(x, w)
    cin, cout = w.shape[-2], w.shape[-1]
    dy = dy.astype(x.dtype)
    if dw_mode == "lax":
      dw = jax.vjp(lambda w_: lax_conv(x, w_), w)[1](dy)[0]
    else:
      if p is None:
        p = patches_of(x, w)
      nb = p.ndim - 1
      # dW = patches^T @ dY, contracting batch and output-spatial axes.
      dw = lax.dot_general(p, dy, ((tuple(range(nb)), tuple(range(nb))),
                                   ((), ())), precision=precision)
      dw = dw.reshape(w.shape)
    if dx_mode == "lax":
      dx = jax.vjp(lambda x_: lax_conv(x_, w), x)[1](dy)[0]
    elif dx_mode == "transpose" and all(s == 1 for s in strides):
      dx = _dx_transposed_conv(dy, w, x.shape, kshape, pads, dil, precision)
    else:
      w2t = w.reshape(-1, cout).T  # (F, K*C)
      dcols = _dot_last_first(dy, w2t, precision, None)
      dxp = _col2im(dcols, xp_sp, cin, kshape, strides, dil)
      dx = _pad_spatial(dxp, [(-lo, -hi) for lo, hi in pads])
    return dx.astype(x.dtype), dw.astype(w.dtype)

  conv.defvjp(fwd_rule, bwd_rule)
  return conv


def _dx_transposed_conv(dy, w, x_shape, kshape, pads, dil, precision):
  """Stride-1 dX as a forward im2col conv of padded dY with the flipped kernel."""
  nsp = len(kshape)
  in_sp = x_shape[1:-1]
  out_sp = dy.shape[1:-1]
  tpads = []
  for n, k, d, (lo, _), o in zip(in_sp, kshape, dil, pads, out_sp):
    keff = (k - 1) * d + 1
    before = keff - 1 - lo
    after = n + keff - 1 - o - before
    tpads.append((before, after))
  wf = jnp.flip(w, axis=tuple(range(nsp)))
  wf = jnp.swapaxes(wf, -1, -2)  # (*K, F, C)
  dyp = _pad_spatial(dy, tpads)
  cols = _im2col(dyp, kshape, (1,) * nsp, dil, tuple(in_sp))
  return _dot_last_first(cols, wf.reshape(-1, wf.shape[-1]), precision, None)


def conv_transpose(lhs, rhs, strides, padding, rhs_dilation=None,
                   dimension_numbers=None, transpose_kernel=False,
                   precision=None, preferred_element_type=None):
  """`lax.conv_transpose` (its default padding convention) as GEMM + col2im.

  A transposed conv with stride s scatters `x[i] @ W[k]` to output position
  `s*i + k` (flipped-kernel index): one matmul `x @ W` of shape
  (N*in, Cin) x (Cin, K*Cout) followed by K interior-padded adds, without the
  s**ndim wasted multiplications of the dilated-input conv that XLA runs.
  Plain JAX ops, so autodiff gives matmul gradients (dX is an im2col strided
  conv of dY, dW is x^T @ dcols). Non-channels-last layouts and 'SAME_LOWER'
  strings fall back to `lax.conv_transpose`.
  """
  ndim = lhs.ndim
  if dimension_numbers is None:
    dimension_numbers = {3: ("NHC", "HIO", "NHC"), 4: ("NHWC", "HWIO", "NHWC"),
                         5: ("NHWDC", "HWDIO", "NHWDC")}.get(ndim)
  ok = dimension_numbers is not None and is_supported(
      lhs.shape, rhs.shape, dimension_numbers=dimension_numbers)
  if not ok or (isinstance(padding, str) and padding not in ("SAME", "VALID")):
    return lax.conv_transpose(lhs, rhs, strides, padding, rhs_dilation,
                              dimension_numbers, transpose_kernel, precision,
                              preferred_element_type)
  nsp = ndim - 2
  strides = tuple(int(v) for v in strides)
  dil = (1,) * nsp if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
  if transpose_kernel:
    rhs = jnp.swapaxes(jnp.flip(rhs, axis=tuple(range(nsp))), -1, -2)
  kshape = tuple(rhs.shape[:nsp])
  keff = [(k - 1) * d + 1 for k, d in zip(kshape, dil)]
  if isinstance(padding, str):
    from jax._src.lax.convolution import _conv_transpose_padding  # pylint: disable=g-import-not-at-top
    pads = [_conv_transpose_padding(k, s, padding)
            for k, s in zip(keff, strides)]
  else:
    pads = [(int(lo), int(hi)) for lo, hi in padding]
  dtype = jnp.result_type(lhs, rhs)
  fn = _conv_transpose_fn(strides, tuple(tuple(p) for p in pads), dil,
                          _hashable(precision))
  y = fn(lhs.astype(dtype), rhs.astype(dtype))
  if preferred_element_type is not None:
    y = y.astype(preferred_element_type)
  return y


@functools.lru_cache(maxsize=None)
def _conv_transpose_fn(strides, pads, dil, precision):
  """custom_vjp transposed conv (HWIO kernel, no flag) for one configuration.

  Forward: dcols = x @ wmat, then col2im. Backward: im2col of the (un-cropped)
  dY gives dcols' cotangent; dX = that @ wmat^T and dW = x^T @ that.
  """

  def geometry(x, w):
    nsp = x.ndim - 2
    kshape = tuple(w.shape[:nsp])
    keff = tuple((k - 1) * d + 1 for k, d in zip(kshape, dil))
    full = tuple((n - 1) * s + k
                 for n, s, k in zip(x.shape[1:-1], strides, keff))
    crop = [(lo - (k - 1), hi - (k - 1)) for (lo, hi), k in zip(pads, keff)]
    return nsp, kshape, full, crop

  def wmat_of(w, nsp):
    # Column block k of wmat is the flipped kernel's tap k: (Cin, K*Cout).
    wf = jnp.flip(w, axis=tuple(range(nsp)))
    return jnp.moveaxis(wf, -2, 0).reshape(w.shape[-2], -1)

  def forward(x, w):
    nsp, kshape, full, crop = geometry(x, w)
    dcols = _dot_last_first(x, wmat_of(w, nsp), precision, None)
    y = _col2im(dcols, full, w.shape[-1], kshape, strides, dil)
    return _pad_spatial(y, crop)

  @jax.custom_vjp
  def convt(x, w):
    return forward(x, w)

  def fwd_rule(x, w):
    return forward(x, w), (x, w)

  def bwd_rule(res, dy):
    x, w = res
    nsp, kshape, _, crop = geometry(x, w)
    dyp = _pad_spatial(dy.astype(x.dtype), [(-lo, -hi) for lo, hi in crop])
    gcols = _im2col(dyp, kshape, strides, dil, x.shape[1:-1])
    wmat = wmat_of(w, nsp)
    dx = _dot_last_first(gcols, wmat.T, precision, None)
    nb = x.ndim - 1
    dwmat = lax.dot_general(x, gcols, ((tuple(range(nb)), tuple(range(nb))),
                                       ((), ())), precision=precision)
    # Invert wmat_of: (Cin, K*Cout) -> (*K, Cin, Cout), unflipped.
    dwf = jnp.moveaxis(dwmat.reshape((w.shape[-2],) + kshape + (w.shape[-1],)),
                       0, -2)
    dw = jnp.flip(dwf, axis=tuple(range(nsp)))
    return dx.astype(x.dtype), dw.astype(w.dtype)

  convt.defvjp(fwd_rule, bwd_rule)
  return convt
