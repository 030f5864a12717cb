"""scripts/benchmark.py's FLOP counter and model list (nothing is timed here)."""

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import benchmark  # noqa: E402  pylint: disable=g-import-not-at-top


def _flops(f, *shapes):
  args = [jnp.zeros(s, jnp.float32) for s in shapes]
  return benchmark.jaxpr_flops(jax.make_jaxpr(f)(*args))


def test_dot_and_conv_flops_from_shapes():
  assert _flops(lambda x, w: x @ w, (4, 8), (8, 3)) == 2 * 4 * 3 * 8
  conv = lambda x, w: lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert _flops(conv, (2, 5, 5, 3), (3, 3, 3, 4)) == 2 * (2 * 3 * 3 * 4) * 9 * 3
  # Forward + backward of a matmul: x @ w, dW = x^T g (dX is not needed).
  loss = lambda w, x: jnp.sum(x @ w)  # noqa: E731
  assert _flops(jax.grad(loss), (8, 3), (4, 8)) == 2 * (2 * 4 * 3 * 8)


def test_transposed_conv_counts_real_taps_and_scan_counts_every_step():
  convt = lambda x, w: lax.conv_transpose(  # noqa: E731
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # 9 input pixels x 9 taps x (2 -> 4) channels, not the 4x larger dilated count.
  assert _flops(convt, (1, 3, 3, 2), (3, 3, 2, 4)) == 2 * 9 * 9 * 2 * 4

  def scanned(h, w):
    return lax.scan(lambda h, _: (h @ w, None), h, None, length=7)[0]

  assert _flops(scanned, (2, 5), (5, 5)) == 7 * 2 * 2 * 5 * 5


def test_every_registered_model_has_a_row():
  from jaxdl.models import registry  # pylint: disable=g-import-not-at-top
  rows = {b.model for b in benchmark.benches()}
  names = set(registry()) - {"dcgan_generator", "dcgan_discriminator"}
  assert names <= rows, names - rows
  assert "dcgan" in rows  # generator + discriminator as one GAN step
