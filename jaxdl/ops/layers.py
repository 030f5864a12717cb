"""Linen layers that route flax's layers through `jaxdl.ops`, same parameters.

`flax.linen.Conv` takes a `conv_general_dilated` hook, so a fast conv is just
`functools.partial(nn.Conv, conv_general_dilated=ops.conv_general_dilated)`.
`flax.linen.ConvTranspose` has no such hook (it calls `lax.conv_transpose`
directly), so `ConvTranspose` here subclasses it and swaps only that call.
The class keeps the name `ConvTranspose`, so flax's automatic module names
(`ConvTranspose_0`, ...) and therefore the parameter trees are unchanged:
a model can switch between the two without touching its checkpoints.

`select(conv_impl)` gives a model its three layers for `conv_impl`: 'auto'
(the fast paths on CPU, flax's own lowering elsewhere: `jaxdl.ops.platform`),
'fast' (the fast paths everywhere) or 'xla' (flax's layers everywhere).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxdl.ops import platform
from jaxdl.ops.conv import conv_general_dilated, conv_transpose
from jaxdl.ops.pool import max_pool

__all__ = ["ConvTranspose", "select"]


def select(conv_impl: str, setting: str):
  """(Conv, ConvTranspose, max_pool) for a model's `conv_impl`: 'auto', 'fast'
  or 'xla' (module docstring). `setting` is the flag that sets it, for the
  error message."""
  platform.check_impl(conv_impl, "fast", "xla", setting)
  if conv_impl == "xla":
    return nn.Conv, nn.ConvTranspose, nn.max_pool
  return (functools.partial(nn.Conv, conv_general_dilated=_conv(conv_impl)),
          functools.partial(ConvTranspose, conv_impl=conv_impl),
          functools.partial(_max_pool, conv_impl))


def _conv(conv_impl: str):
  """A `conv_general_dilated` hook for nn.Conv that dispatches on `conv_impl`."""

  def conv(lhs, rhs, *args, **kwargs):
    return platform.dispatch(
        conv_impl, lambda x, w: conv_general_dilated(x, w, *args, **kwargs),
        lambda x, w: lax.conv_general_dilated(x, w, *args, **kwargs), lhs, rhs)

  return conv


def _max_pool(conv_impl: str, inputs, window_shape, strides=None, padding="VALID"):
  return platform.dispatch(
      conv_impl, lambda x: max_pool(x, window_shape, strides, padding),
      lambda x: nn.max_pool(x, window_shape, strides, padding), inputs)


class ConvTranspose(nn.ConvTranspose):  # pylint: disable=missing-class-docstring
  __doc__ = ("`flax.linen.ConvTranspose` computed by `jaxdl.ops.conv_transpose` "
             "(GEMM + col2im) when the call is a plain one (one batch axis, no mask, "
             "'SAME'/'VALID'/explicit padding); otherwise flax's own code. "
             "`conv_impl` 'auto' does so on CPU only (`jaxdl.ops.platform`).")

  conv_impl: str = "fast"

  @nn.compact
  def __call__(self, inputs):
    ks = ((self.kernel_size,) if isinstance(self.kernel_size, int)
          else tuple(self.kernel_size))
    nsp = len(ks)
    plain = (inputs.ndim == nsp + 2 and self.mask is None
             and self.padding != "CIRCULAR" and self.preferred_element_type is None)
    if not plain:
      return super().__call__(inputs)

    def bcast(x):
      x = 1 if x is None else x
      return (x,) * nsp if isinstance(x, int) else tuple(x)

    cin = inputs.shape[-1]
    kshape = ks + ((self.features, cin) if self.transpose_kernel
                   else (cin, self.features))
    kernel = self.param("kernel", self.kernel_init, kshape, self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    padding = nn.linear.canonicalize_padding(self.padding, nsp)
    strides, dilation = bcast(self.strides), bcast(self.kernel_dilation)
    y = platform.dispatch(
        self.conv_impl,
        lambda x, w: conv_transpose(x, w, strides, padding, rhs_dilation=dilation,
                                    transpose_kernel=self.transpose_kernel,
                                    precision=self.precision),
        lambda x, w: lax.conv_transpose(x, w, strides, padding, rhs_dilation=dilation,
                                        transpose_kernel=self.transpose_kernel,
                                        precision=self.precision),
        inputs, kernel)
    if bias is not None:
      y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y
