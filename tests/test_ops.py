"""jaxdl.ops equals lax / flax.linen in values and gradients.

Convolutions are compared in float32 against the reference at
`precision=HIGHEST` with a relative tolerance of 1e-5 (max abs error over max
abs value); pooling, which does no arithmetic, is compared exactly.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdl import ops, runtime
from jaxdl.ops import conv as conv_mod
from jaxdl.ops import pool as pool_mod

HIGHEST = lax.Precision.HIGHEST
NHWC = ("NHWC", "HWIO", "NHWC")
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _im2col_for_every_conv(monkeypatch):
  """Test the im2col path on every supported conv, whatever the speed policy."""
  monkeypatch.setattr(conv_mod, "IM2COL_MAX_CHANNELS", None)


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _assert_close(got, want, rtol=RTOL):
  for g, w in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    assert g.dtype == w.dtype, (g.dtype, w.dtype)
    assert _rel_err(g, w) <= rtol, _rel_err(g, w)


def _randn(shape, seed=0, dtype=np.float32):
  # numpy, not jax.random: no XLA compile per new shape.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _vjp_both(ref, new, *args, seed=1):
  """(ref outputs + VJPs, new outputs + VJPs) for one random cotangent.

  Both in one jit so each case costs a single XLA compile.
  """
  out = jax.eval_shape(ref, *args)
  leaves, tree = jax.tree_util.tree_flatten(out)
  g = jax.tree_util.tree_unflatten(
      tree, [_randn(o.shape, seed + i, o.dtype) for i, o in enumerate(leaves)])

  def both(g, *args):
    res = []
    for f in (ref, new):
      y, vjp = jax.vjp(f, *args)
      res.append((y,) + tuple(vjp(g)))
    return res

  return jax.jit(both)(g, *args)


def _check(ref, new, *args, rtol=RTOL):
  want, got = _vjp_both(ref, new, *args)
  _assert_close(got, want, rtol)


MODES = [
    # (FWD_MODE, DX_MODE, DW_MODE, SAVE_PATCHES, IM2COL_IMPL): each path once.
    ("im2col", "col2im", "im2col", True, "concat"),
    ("im2col", "col2im", "im2col", False, "axiswise"),
    ("im2col", "transpose", "im2col", False, "concat"),
    ("im2col", "transpose", "lax", True, "axiswise"),
    ("lax", "lax", "lax", True, "auto"),
    ("lax", "col2im", "im2col", True, "auto"),
]


@pytest.fixture
def set_modes(monkeypatch):
  def apply(modes):
    names = ("FWD_MODE", "DX_MODE", "DW_MODE", "SAVE_PATCHES", "IM2COL_IMPL")
    for name, value in zip(names, modes):
      monkeypatch.setattr(conv_mod, name, value)
    conv_mod._conv_fn.cache_clear()
  yield apply
  conv_mod._conv_fn.cache_clear()


def _conv_pair(x_shape, k, c_out, strides, padding, *, rhs_dilation=None,
               seed=0):
  nsp = len(x_shape) - 2
  x = _randn(x_shape, seed)
  w = _randn((k,) * nsp + (x_shape[-1], c_out), seed + 1)
  dn = {1: ("NWC", "WIO", "NWC"), 2: NHWC, 3: ("NDHWC", "DHWIO", "NDHWC")}[nsp]

  def ref(x, w):
    return lax.conv_general_dilated(x, w, strides, padding,
                                    rhs_dilation=rhs_dilation,
                                    dimension_numbers=dn, precision=HIGHEST)

  def new(x, w):
    return ops.conv_general_dilated(x, w, strides, padding,
                                    rhs_dilation=rhs_dilation,
                                    dimension_numbers=dn)
  return x, w, ref, new


CONV_CASES = [
    # (x shape NHWC, kernel, out channels, strides, padding)
    ((2, 8, 8, 3), 3, 4, (1, 1), "SAME"),
    ((2, 7, 9, 3), 3, 5, (1, 1), "VALID"),
    ((2, 7, 9, 4), 3, 6, (2, 2), "SAME"),
    ((2, 11, 9, 1), 5, 2, (2, 2), "VALID"),
    ((2, 7, 7, 8), 1, 16, (1, 1), "SAME"),
    ((2, 7, 7, 8), 1, 4, (2, 2), "VALID"),
    ((2, 9, 8, 3), 4, 5, (2, 2), "SAME"),
    ((2, 10, 7, 3), 3, 4, (3, 2), "SAME_LOWER"),
    ((2, 9, 10, 3), 3, 4, (1, 2), ((2, 0), (1, 3))),
    ((2, 9, 10, 3), 3, 4, (1, 1), ((-1, 2), (0, -1))),
]


def _check_conv(case, **kw):
  x_shape, k, c_out, strides, padding = case
  x, w, ref, new = _conv_pair(x_shape, k, c_out, strides, padding, **kw)
  _check(ref, new, x, w)


@pytest.mark.parametrize("case", CONV_CASES,
                         ids=lambda c: f"{c[0]}k{c[1]}s{c[3]}{c[4]}")
def test_conv_values_and_grads(case):
  _check_conv(case)


@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(map(str, m)))
@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (2, 9)],
                         ids=lambda c: f"{c[0]}k{c[1]}s{c[3]}{c[4]}")
def test_conv_every_mode(case, modes, set_modes):
  set_modes(modes)
  _check_conv(case)


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (0, 2, 9)],
                         ids=lambda c: f"{c[0]}k{c[1]}s{c[3]}{c[4]}")
def test_lax_conv_with_materialised_kernel_grad_input_equals_lax(case, monkeypatch):
  # Every conv left to lax (as with Eigen convolutions): same values and
  # gradients, and the backward reads the input through a conditional.
  monkeypatch.setattr(conv_mod, "IM2COL_MAX_CHANNELS", 0)
  monkeypatch.setattr(conv_mod, "MATERIALIZE_DW_INPUT", True)
  _check_conv(case)
  x, w, _, new = _conv_pair(*case)
  text = str(jax.make_jaxpr(jax.grad(lambda x, w: new(x, w).sum(), (0, 1)))(x, w))
  assert "cond[" in text
  monkeypatch.setattr(conv_mod, "MATERIALIZE_DW_INPUT", False)
  text = str(jax.make_jaxpr(jax.grad(lambda x, w: new(x, w).sum(), (0, 1)))(x, w))
  assert "cond[" not in text and "custom_vjp" not in text


def test_materialised_copy_keeps_nan_and_signed_zero_semantics():
  for first in (np.nan, -0.0, 1.5):
    x = jnp.asarray(np.array([first, -0.0, np.inf, 2.0], np.float32))
    got = np.asarray(jax.jit(conv_mod._opaque)(x))
    np.testing.assert_array_equal(got[1:], np.asarray(x)[1:])
    assert np.isnan(got[0]) if np.isnan(first) else got[0] == first


@pytest.mark.parametrize("x_shape,k,strides,padding,dil", [
    ((2, 13, 3), 3, (1,), "SAME", (2,)),           # 1-D, dilated kernel
    ((2, 12, 4), 4, (2,), "VALID", None),          # 1-D
    ((2, 10, 11, 3), 3, (1, 1), "SAME", (2, 3)),   # 2-D dilated kernel
    ((2, 5, 6, 7, 2), 3, (2, 1, 1), "SAME", None),  # 3-D
])
def test_conv_other_ranks_and_kernel_dilation(x_shape, k, strides, padding, dil):
  x, w, ref, new = _conv_pair(x_shape, k, 3, strides, padding, rhs_dilation=dil)
  assert conv_mod.is_supported(x.shape, w.shape, dimension_numbers=(
      {3: ("NWC", "WIO", "NWC"), 4: NHWC, 5: ("NDHWC", "DHWIO", "NDHWC")}[
          x.ndim]))
  _check(ref, new, x, w)


def test_conv_dimension_numbers_object_is_accepted():
  # flax passes a ConvDimensionNumbers, not strings.
  x, w, ref, _ = _conv_pair((2, 6, 6, 3), 3, 4, (1, 1), "SAME")
  dn = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  assert conv_mod.is_supported(x.shape, w.shape, dimension_numbers=dn)
  got = ops.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
  _assert_close(got, ref(x, w))


FALLBACKS = [
    # (x shape, w shape, kwargs) that the im2col path does not handle.
    ((2, 6, 6, 4), (3, 3, 4, 4),
     dict(lhs_dilation=(2, 2), padding=((1, 1), (1, 1)))),
    ((2, 6, 6, 4), (3, 3, 2, 4), dict(feature_group_count=2)),
    ((4, 6, 6, 4), (3, 3, 4, 4), dict(batch_group_count=2)),
    ((2, 4, 6, 6), (4, 4, 3, 3), dict(dimension_numbers=("NCHW", "OIHW", "NCHW"))),
    ((2, 4, 6, 6), (4, 4, 3, 3), dict(dimension_numbers=None)),
    ((2, 6, 6, 4), (4, 4, 3, 3), dict(dimension_numbers=("NHWC", "OIHW", "NHWC"))),
]


@pytest.mark.parametrize("x_shape,w_shape,kw", FALLBACKS,
                         ids=lambda v: ",".join(v) if isinstance(v, dict) else "")
def test_conv_fallbacks_equal_lax(x_shape, w_shape, kw, monkeypatch):
  kw = dict(kw)
  padding = kw.pop("padding", "SAME")
  dn = kw.pop("dimension_numbers", NHWC)
  x, w = _randn(x_shape, 0), _randn(w_shape, 1)
  assert not conv_mod.is_supported(
      x.shape, w.shape, lhs_dilation=kw.get("lhs_dilation"),
      dimension_numbers=dn, feature_group_count=kw.get("feature_group_count", 1),
      batch_group_count=kw.get("batch_group_count", 1))
  # The fallback must not touch the im2col path at all.
  monkeypatch.setattr(conv_mod, "_conv_fn", None)
  args = (x, w, (1, 1), padding)
  got = ops.conv_general_dilated(*args, dimension_numbers=dn, **kw)
  want = lax.conv_general_dilated(*args, dimension_numbers=dn, **kw)
  np.testing.assert_array_equal(got, want)


def test_conv_dtypes_follow_lax():
  x = _randn((2, 6, 6, 3), 0, jnp.bfloat16)
  w = _randn((3, 3, 3, 4), 1, jnp.bfloat16)
  for pet in (None, jnp.float32):
    got = ops.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                   preferred_element_type=pet)
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                    preferred_element_type=pet)
    assert got.dtype == want.dtype
    assert _rel_err(got, want) < 2e-2
  dx, dw = jax.grad(lambda x, w: ops.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC).astype(jnp.float32).sum(),
                    argnums=(0, 1))(x, w.astype(jnp.float32))
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32


class _Net(nn.Module):
  fast: bool
  padding: str = "SAME"
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    kw = {"conv_general_dilated": ops.conv_general_dilated} if self.fast else {}
    prec = dict(precision=HIGHEST)
    x = nn.relu(nn.Conv(6, (3, 3), strides=self.strides, padding=self.padding,
                        **prec, **kw)(x))
    x = nn.Conv(5, (4, 4), padding="CIRCULAR", use_bias=False, **prec, **kw)(x)
    x = nn.Conv(4, (1, 1), **prec, **kw)(x)
    return x


@pytest.mark.parametrize("padding,strides", [("SAME", 1), ("VALID", 2)])
def test_flax_conv_layer_same_outputs_and_grads(padding, strides):
  x = _randn((2, 9, 8, 3))
  plain, fast = _Net(False, padding, strides), _Net(True, padding, strides)
  params = jax.jit(plain.init)(jax.random.key(1), x)["params"]
  # The conv function is not a parameter: same tree either way.
  assert (jax.tree_util.tree_structure(jax.eval_shape(fast.init,
                                                      jax.random.key(1), x))
          == jax.tree_util.tree_structure({"params": params}))
  _check(lambda p, x: plain.apply({"params": p}, x),
         lambda p, x: fast.apply({"params": p}, x), params, x)


def test_conv_under_jit_grad_in_a_train_loop_decreases_loss():
  model = _Net(True)
  x, target = _randn((4, 8, 8, 3), 0), _randn((4, 8, 8, 4), 1)
  params = jax.jit(model.init)(jax.random.key(2), x)["params"]
  loss = lambda p: jnp.mean((model.apply({"params": p}, x) - target) ** 2)
  step = jax.jit(lambda p: jax.tree_util.tree_map(
      lambda a, g: a - 0.05 * g, p, jax.grad(loss)(p)))
  loss = jax.jit(loss)
  l0 = loss(params)
  for _ in range(10):
    params = step(params)
  assert loss(params) < 0.9 * l0


# ---------------------------------------------------------------- transpose
@pytest.mark.parametrize("x_shape,k,s,padding,tk", [
    ((2, 7, 6, 5), 4, 2, "SAME", False),
    ((2, 7, 6, 5), 4, 2, "VALID", True),
    ((2, 5, 6, 3), 3, 1, "SAME", False),
    ((2, 5, 4, 3), 5, 3, "VALID", False),
    ((2, 5, 6, 3), 3, 2, ((1, 2), (3, 0)), True),
    ((2, 9, 4), 4, 2, "SAME", False),  # 1-D
])
def test_conv_transpose_equals_lax(x_shape, k, s, padding, tk):
  nsp = len(x_shape) - 2
  x = _randn(x_shape, 0)
  io = (4, x_shape[-1]) if tk else (x_shape[-1], 4)  # as flax's ConvTranspose
  w = _randn((k,) * nsp + io, 1)
  args = ((s,) * nsp, padding)
  ref = lambda x, w: lax.conv_transpose(x, w, *args, transpose_kernel=tk,
                                        precision=HIGHEST)
  new = lambda x, w: ops.conv_transpose(x, w, *args, transpose_kernel=tk)
  _check(ref, new, x, w)


# ---------------------------------------------------------------- pooling
POOL_CASES = [
    # (x shape, window, strides, padding)
    ((2, 8, 8, 3), (2, 2), (2, 2), "VALID"),
    ((2, 9, 7, 3), (2, 2), (2, 2), "VALID"),     # odd: remainder dropped
    ((2, 9, 7, 3), (2, 2), (2, 2), "SAME"),      # odd: -inf padded
    ((2, 9, 7, 3), (3, 3), (3, 3), "SAME"),
    ((2, 8, 9, 3), (2, 3), (2, 3), ((1, 1), (0, 2))),
    ((9, 7, 3), (2, 2), (2, 2), "VALID"),        # no batch dim
    ((2, 2, 6, 7, 3), (2, 2), (2, 2), "VALID"),  # two batch dims
    ((2, 11, 3), (2,), (2,), "VALID"),           # 1-D
]
POOL_FALLBACKS = [
    ((2, 9, 7, 3), (3, 3), (2, 2), "VALID"),     # overlapping windows
    ((2, 9, 7, 3), (2, 2), (1, 1), "SAME"),
    ((2, 9, 7, 3), (2, 2), None, "VALID"),       # flax: strides default 1
]


def _tied_input(shape, seed=0):
  # Few distinct values: most windows contain ties, including of the max.
  r = np.random.default_rng(seed)
  return jnp.asarray(r.integers(0, 3, size=shape), jnp.float32)


@pytest.mark.parametrize("case", POOL_CASES + POOL_FALLBACKS, ids=str)
def test_max_pool_equals_flax_with_ties(case):
  shape, window, strides, padding = case
  x = _tied_input(shape)
  ref = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
  new = lambda x: ops.max_pool(x, window, strides=strides, padding=padding)
  want, got = _vjp_both(ref, new, x)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_max_pool_reshape_path_is_taken():
  plan = pool_mod._plan((2, 9, 7, 3), (2, 2), (2, 2), "SAME", allow_pad=True)
  assert plan == ((2, 2), [(0, 1), (0, 1)])
  assert pool_mod._plan((2, 9, 7, 3), (3, 3), (2, 2), "VALID",
                        allow_pad=True) is None
  # The jaxpr of the fast path has no reduce_window / select_and_scatter.
  x = jnp.ones((2, 8, 8, 3))
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda x: ops.max_pool(x, (2, 2), (2, 2)).sum()))(x))
  assert "reduce_window" not in jaxpr and "select_and" not in jaxpr


def test_max_pool_tie_rule_first_max_takes_all():
  # One 2x2 window, all four equal: the whole gradient goes to the first
  # element in row-major window order, as with flax's reduce_window; the
  # per-window gradient sums to the cotangent.
  x = jnp.full((1, 2, 2, 1), 5.0)
  for f in (ops.max_pool, nn.max_pool):
    g = jax.jit(jax.grad(lambda x, f=f: 3.0 * f(x, (2, 2), (2, 2)).sum()))(x)
    np.testing.assert_array_equal(g[0, :, :, 0], [[3.0, 0.0], [0.0, 0.0]])
  x = jnp.array([1.0, 4.0, 2.0, 4.0]).reshape(1, 2, 2, 1)
  g = jax.jit(jax.grad(lambda x: ops.max_pool(x, (2, 2), (2, 2)).sum()))(x)
  np.testing.assert_array_equal(g[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize("case", POOL_CASES[:2] + POOL_CASES[5:] + [
    ((2, 9, 7, 3), (2, 2), (2, 2), "SAME"),      # needs padding: fallback
    ((2, 8, 8, 3), (2, 2), (2, 2), "SAME"),
] + POOL_FALLBACKS, ids=str)
def test_avg_pool_equals_flax(case):
  shape, window, strides, padding = case
  x = _randn(shape)
  for cip in (True, False):
    ref = lambda x: nn.avg_pool(x, window, strides=strides, padding=padding,
                                count_include_pad=cip)
    new = lambda x: ops.avg_pool(x, window, strides=strides, padding=padding,
                                 count_include_pad=cip)
    _check(ref, new, x, rtol=1e-6)


def test_tune_malloc_applies_on_glibc():
  import platform  # pylint: disable=g-import-not-at-top
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    pytest.skip("mallopt is glibc-only")
  assert runtime.tune_malloc() is True


def test_configure_cpu_is_refused_after_backend_start(monkeypatch):
  jax.devices()  # the test session's backend is up
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  assert runtime.configure_cpu() is False
  assert os.environ["XLA_FLAGS"] == "--xla_foo=1"


def test_configure_cpu_appends_flags_once(monkeypatch):
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  assert runtime.configure_cpu(malloc=False, sync_dispatch=False) is True
  assert runtime.configure_cpu(malloc=False, sync_dispatch=False) is True
  flags = os.environ["XLA_FLAGS"].split()
  assert flags == ["--xla_foo=1", *runtime.CPU_XLA_FLAGS]


def test_configure_cpu_turns_off_async_cpu_dispatch(monkeypatch):
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  before = jax.config.read("jax_cpu_enable_async_dispatch")
  try:
    assert runtime.configure_cpu(eigen_convolutions=False, malloc=False) is True
    assert jax.config.read("jax_cpu_enable_async_dispatch") is False
  finally:
    jax.config.update("jax_cpu_enable_async_dispatch", before)


# --- layers routed through jaxdl.ops: same parameters, values and gradients --


class _TNet(nn.Module):
  fast: bool

  @nn.compact
  def __call__(self, x):
    from jaxdl.ops import layers  # pylint: disable=g-import-not-at-top
    ct = layers.ConvTranspose if self.fast else nn.ConvTranspose
    x = nn.relu(ct(6, (5, 5), strides=(2, 2), padding="SAME",
                   precision=HIGHEST)(x))
    return ct(2, (3, 3), strides=(2, 2), padding="VALID", use_bias=False,
              transpose_kernel=True, precision=HIGHEST)(x)


def test_conv_transpose_layer_same_params_outputs_and_grads():
  x = _randn((2, 5, 4, 3))
  plain, fast = _TNet(False), _TNet(True)
  params = jax.jit(plain.init)(jax.random.key(1), x)["params"]
  # Same names (ConvTranspose_0, ...), shapes and initializers: the same
  # initial values from the same key.
  fast_params = jax.jit(fast.init)(jax.random.key(1), x)["params"]
  assert (jax.tree_util.tree_structure(fast_params)
          == jax.tree_util.tree_structure(params))
  _assert_close(fast_params, params, rtol=0)
  _check(lambda p, x: plain.apply({"params": p}, x),
         lambda p, x: fast.apply({"params": p}, x), params, x)


def test_dcgan_fast_equals_xla_in_params_outputs_and_grads():
  from jaxdl.models import gan  # pylint: disable=g-import-not-at-top
  z, img = _randn((2, 6)), _randn((2, 8, 8, 1), 1)
  with jax.default_matmul_precision("highest"):
    for kind, inp in (("g", z), ("d", img)):
      # No batch norm: after it the transposed conv's bias has an exact zero
      # gradient, which both versions only reach to rounding (no rtol applies).
      make = (lambda impl: gan.Generator((4, 3), (8, 8, 1), batch_norm=False,
                                         kernel_size=5, conv_impl=impl)) if kind == "g" else (
          lambda impl: gan.Discriminator((3, 4), conv_impl=impl))
      plain, fast = make("xla"), make("fast")
      v = jax.jit(lambda k, x, m=plain: m.init(k, x, train=False))(jax.random.key(0), inp)
      shapes = jax.eval_shape(lambda k, x, m=fast: m.init(k, x, train=False),
                              jax.random.key(0), inp)
      assert (jax.tree.map(lambda a: (a.shape, a.dtype), shapes)
              == jax.tree.map(lambda a: (a.shape, a.dtype), v))

      def run(m):
        return lambda p, x: m.apply({"params": p}, x, train=True)

      _check(run(plain), run(fast), v["params"], inp)


def test_conv_autoencoder_fast_equals_xla_in_params_outputs_and_grads():
  from jaxdl.models import autoencoder  # pylint: disable=g-import-not-at-top
  x = _randn((2, 8, 8, 1), 1)
  plain = autoencoder.ConvAutoencoder((3, 4), 5, conv_impl="xla")
  fast = autoencoder.ConvAutoencoder((3, 4), 5, conv_impl="fast")
  with jax.default_matmul_precision("highest"):
    v = jax.jit(lambda k, x: plain.init(k, x, train=False))(jax.random.key(0), x)
    fast_v = jax.jit(lambda k, x: fast.init(k, x, train=False))(jax.random.key(0), x)
    # Same parameter tree and the same initial values from the same key.
    assert (jax.tree_util.tree_structure(fast_v) == jax.tree_util.tree_structure(v))
    _assert_close(fast_v, v, rtol=0)

    def run(m):
      return lambda p, x: m.apply({"params": p}, x, train=True)["recon_logits"]

    _check(run(plain), run(fast), v["params"], x)


# --- LSTM scan with the hand-written backward (jaxdl.ops.lstm) --------------


@pytest.mark.parametrize("reverse,unroll,masked", [(False, 1, False), (True, 2, False),
                                                   (False, 1, True), (True, 1, True)])
def test_fused_lstm_scan_equals_autodiff_scan(reverse, unroll, masked):
  """Values and VJPs (w.r.t. W_h, inputs, initial carry and the recurrent
  dropout mask) of the hand-written backward against autodiff."""
  from jaxdl.models.lstm import lstm_scan  # pylint: disable=g-import-not-at-top
  b, t, h = 3, 6, 5
  w = _randn((h, 4 * h), 0) * 0.5
  xs = _randn((b, t, 4 * h), 1)
  c0, h0 = _randn((b, h), 2), _randn((b, h), 3)
  lengths = jnp.array([6, 2, 0])  # full, padded, empty rows
  # A dropout-like mask: zeros and 1/(1-rate), rate 0.4.
  mask = jnp.asarray(np.random.default_rng(4).random((b, h)) > 0.4, jnp.float32) / 0.6

  def run(impl):
    def f(w, xs, c0, h0, *m):
      return lstm_scan(w, xs, lengths, (c0, h0), unroll=unroll, reverse=reverse,
                       impl=impl, recurrent_mask=m[0] if m else None)
    return f

  args = (w, xs, c0, h0) + ((mask,) if masked else ())
  with jax.default_matmul_precision("highest"):
    _check(run("autodiff"), run("fused"), *args)


def test_lstm_classifier_fused_same_params_outputs_and_grads():
  from jaxdl.models import get_model  # pylint: disable=g-import-not-at-top
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 50, (4, 9)), jnp.int32)
  tokens = tokens.at[1, 5:].set(0)  # post-padding
  kw = dict(vocab_size=50, embed_dim=6, hidden_size=7, bidirectional=True,
            dropout=0.3, recurrent_dropout=0.3)
  plain = get_model("lstm_classifier", scan_impl="autodiff", **kw)
  fast = get_model("lstm_classifier", scan_impl="fused", **kw)
  params = jax.jit(plain.init)(jax.random.key(0), tokens)["params"]
  assert (jax.tree_util.tree_structure(jax.eval_shape(fast.init, jax.random.key(0), tokens))
          == jax.tree_util.tree_structure({"params": params}))
  # train=True: the same dropout masks (same rng) in both.
  rngs = {"dropout": jax.random.key(1)}
  with jax.default_matmul_precision("highest"):
    _check(lambda p: plain.module.apply({"params": p}, tokens, train=True, rngs=rngs),
           lambda p: fast.module.apply({"params": p}, tokens, train=True, rngs=rngs),
           params)


def test_im2col_channel_policy(monkeypatch):
  """'auto': lax for every conv under Eigen convolutions, im2col up to 8
  input channels under YNNPACK; the result is the same either way. The kernels
  are read from XLA_FLAGS once (import, configure_cpu), never while tracing."""
  monkeypatch.setattr(conv_mod, "IM2COL_MAX_CHANNELS", "auto")
  flag = runtime.CPU_XLA_FLAGS[0]
  assert ops.platform.convolutions_in(flag) == "eigen"
  assert ops.platform.convolutions_in(flag + ",-individual_dot") == "eigen"  # a longer list
  assert ops.platform.convolutions_in("") == "ynnpack"
  monkeypatch.setattr(ops.platform, "_cpu_convolutions", "eigen")
  monkeypatch.setenv("XLA_FLAGS", "")  # not read while tracing
  assert conv_mod.eigen_convolutions() and conv_mod._max_channels() == 0
  monkeypatch.setattr(ops.platform, "_cpu_convolutions", "ynnpack")
  monkeypatch.setenv("XLA_FLAGS", flag)
  assert not conv_mod.eigen_convolutions() and conv_mod._max_channels() == 8
  x, w = _randn((2, 6, 6, 9)), _randn((3, 3, 9, 4), 1)
  jaxpr = str(jax.make_jaxpr(lambda x, w: ops.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC))(x, w))
  # lax's convolution (under MATERIALIZE_DW_INPUT's custom_vjp), no im2col GEMM.
  assert "conv_general_dilated" in jaxpr and "dot_general" not in jaxpr


def test_col2im_by_phase_equals_padded_adds(monkeypatch):
  """The strided col2im by output phase equals the K interior-padded adds."""
  x, w = _randn((2, 7, 6, 5)), _randn((4, 4, 5, 3), 1)
  f = lambda x, w: ops.conv_transpose(x, w, (2, 2), "SAME",  # noqa: E731
                                      precision=HIGHEST)
  monkeypatch.setattr(conv_mod, "COL2IM_PHASES", False)
  conv_mod._conv_transpose_fn.cache_clear()
  want = _vjp_both(f, f, x, w)[0]
  monkeypatch.setattr(conv_mod, "COL2IM_PHASES", True)
  conv_mod._conv_transpose_fn.cache_clear()
  got = _vjp_both(f, f, x, w)[0]
  _assert_close(got, want)


@pytest.mark.parametrize("shape", [(6, 5, 4, 1), (6, 7, 3), (6, 9), (6, 1), (6,)])
def test_row_sum_and_mean_equal_jnp_with_grads(shape):
  x = _randn(shape)
  flat = lambda v: v.reshape((v.shape[0], -1))  # noqa: E731
  for new, ref in ((ops.row_sum, lambda v: jnp.sum(flat(v), -1)),
                   (ops.row_mean, lambda v: jnp.mean(flat(v), -1))):
    f = lambda v, fn=new: fn(jnp.tanh(v) ** 2)  # noqa: E731
    g = lambda v, fn=ref: fn(jnp.tanh(v) ** 2)  # noqa: E731
    want, got = _vjp_both(g, f, x)
    _assert_close(got, want, rtol=1e-6)


def test_row_sum_is_a_product_on_cpu_not_a_reduction():
  """What makes it fast: XLA:CPU gets a dot, with no reduce to fuse into a
  YNNPACK reduction over an image's trailing 1-channel axis."""
  x = jnp.ones((8, 28, 28, 1))
  hlo = jax.jit(lambda v: ops.row_mean(jax.nn.sigmoid(v) - 0.5)).lower(x).compile().as_text()
  ops_used = {line.split("=", 1)[1].split("(")[0].split()[-1]
              for line in hlo.splitlines() if " = " in line and "(" in line}
  assert "dot" in ops_used and "reduce" not in ops_used, ops_used
