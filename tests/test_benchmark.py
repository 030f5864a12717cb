"""scripts/benchmark.py's FLOP counter and model list (nothing is timed here)."""

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

from jaxdl import parallel

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
  from jaxdl import models  # pylint: disable=g-import-not-at-top
  rows = {b.model for b in benchmark.benches()}
  names = set(models.registry()) - {"dcgan_generator", "dcgan_discriminator"}
  assert names <= rows, names - rows
  assert "dcgan" in rows  # generator + discriminator as one GAN step


def test_a_new_model_gets_a_row_from_its_registry_example(monkeypatch):
  # One file and one registry line (MODELS, EXAMPLES) are all a new model needs.
  from jaxdl import models  # pylint: disable=g-import-not-at-top
  from jaxdl.models import mlp  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(mlp.MODELS, "tiny_mlp", mlp.MODELS["mlp"])
  monkeypatch.setitem(mlp.EXAMPLES, "tiny_mlp", (
      "mnist_mlp", {"model.name": "tiny_mlp", "model.kwargs": {"hidden": (8,)},
                    "batch_size": 16}))
  monkeypatch.setattr(models, "_REGISTRY", None)  # rebuilt with it
  assert "tiny_mlp" in models.registry()
  (row,) = [b for b in benchmark.benches() if b.name == "tiny_mlp"]
  assert row.batch_size == 16 and row.info["input_shape"] == (28, 28, 1)
  case, info = benchmark.jax_case(row, parallel.make_mesh(jax.devices()[:1]))
  case.run(2)  # compiles and steps
  assert info["flops"] > 0
