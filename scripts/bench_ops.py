"""Benchmarks jaxdl.ops (im2col conv, reshape pooling) against lax / flax.

One run measures, on the local CPU:
  1. the f32 matmul peak (large jitted matmul, GFLOP/s);
  2. forward+backward time of each CIFAR-CNN conv layer and pooling layer
     (batch 128, NHWC), plain lax/flax vs jaxdl.ops;
  3. a full CIFAR-CNN train step (flax linen, softmax CE, Adam, jitted, donated
     state) with and without the fast paths: examples/s and achieved GFLOP/s
     as a share of the matmul peak measured in the same interleaved windows
     (FLOPs = 3 x forward MACs x 2);
  4. a DCGAN-like 28x28 nn.ConvTranspose generator, forward+backward, lax vs
     jaxdl.ops.conv_transpose (GEMM + col2im).

The machine is shared, so the cases of one table are timed window by window
in turn (A B C A B C ...): each row sees the same load. Rows give the median
and the min-max of the windows; the min is the least-disturbed figure.
`--quiet_wait S` additionally waits (up to S s) before each window for the
other processes to go idle. XLA flags must be set before jax starts:
`--xla_flags` is copied into XLA_FLAGS at import. jaxdl.runtime.tune_malloc() is
applied unless `--malloc default` (see jaxdl/ops/__init__.py for why).

  python scripts/bench_ops.py [--windows 9] [--padding SAME] [--only step] \
      [--xla_flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_parser.add_argument("--windows", type=int, default=7,
                     help="timed windows per measurement (median reported)")
_parser.add_argument("--window_s", type=float, default=0.4,
                     help="minimum seconds per timed window")
_parser.add_argument("--batch", type=int, default=128)
_parser.add_argument("--padding", default="VALID", choices=["SAME", "VALID"],
                     help="conv padding of the CIFAR CNN (jaxdl.models.cnn: VALID)")
_parser.add_argument("--peak_n", type=int, default=2048,
                     help="matmul size for the peak measurement")
_parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS")
_parser.add_argument("--fwd_mode", default=None, choices=["im2col", "lax"])
_parser.add_argument("--dx_mode", default=None,
                     choices=["col2im", "transpose", "lax"])
_parser.add_argument("--dw_mode", default=None, choices=["im2col", "lax"])
_parser.add_argument("--im2col", default=None,
                     choices=["auto", "concat", "axiswise"])
_parser.add_argument("--save_patches", default=None, choices=["0", "1"])
_parser.add_argument("--malloc", default="tuned", choices=["tuned", "default"],
                     help="tuned: jaxdl.runtime.tune_malloc() before jax starts")
_parser.add_argument("--quiet_wait", type=float, default=0.0,
                     help="before each timed window wait up to this many "
                     "seconds for the other processes' CPU use to drop below "
                     "--quiet_level (the machine is shared)")
_parser.add_argument("--quiet_level", type=float, default=0.1,
                     help="fraction of all CPUs others may use in a window")
_parser.add_argument("--only", default="peak,layers,pool,step,dcgan",
                     help="comma-separated sections to run")
ARGS = _parser.parse_args()
if ARGS.xla_flags:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + ARGS.xla_flags).strip()

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

from jaxdl import ops, runtime  # noqa: E402
from jaxdl.ops import conv as conv_mod  # noqa: E402

MALLOC_TUNED = runtime.tune_malloc() if ARGS.malloc == "tuned" else False

if ARGS.fwd_mode:
  conv_mod.FWD_MODE = ARGS.fwd_mode
if ARGS.dx_mode:
  conv_mod.DX_MODE = ARGS.dx_mode
if ARGS.dw_mode:
  conv_mod.DW_MODE = ARGS.dw_mode
if ARGS.im2col:
  conv_mod.IM2COL_IMPL = ARGS.im2col
if ARGS.save_patches is not None:
  conv_mod.SAVE_PATCHES = ARGS.save_patches == "1"

DN = ("NHWC", "HWIO", "NHWC")


def _block(tree):
  for leaf in jax.tree_util.tree_leaves(tree):
    leaf.block_until_ready()


def _cpu_ticks():
  with open("/proc/stat") as f:
    v = [int(t) for t in f.readline().split()[1:]]
  return sum(v) - v[3] - v[4], sum(v)


def others_busy(dt=0.3):
  """Fraction of all CPUs used by other processes over `dt` seconds."""
  try:
    b0, t0 = _cpu_ticks()
  except OSError:
    return 0.0
  p0 = time.process_time()
  time.sleep(dt)
  b1, t1 = _cpu_ticks()
  mine = (time.process_time() - p0) * os.sysconf("SC_CLK_TCK")
  return max(0.0, (b1 - b0 - mine) / max(t1 - t0, 1))


WAITS = {"windows": 0, "quiet": 0}


def wait_quiet():
  if ARGS.quiet_wait <= 0:
    return
  deadline = time.time() + ARGS.quiet_wait
  WAITS["windows"] += 1
  while time.time() < deadline:
    if others_busy() <= ARGS.quiet_level:
      WAITS["quiet"] += 1
      return


class _Runner:
  """One benchmarked callable; carry=True threads a donated first argument."""

  def __init__(self, fn, args, carry=False):
    self.fn, self.args, self.carry = fn, list(args), carry

  def __call__(self):
    out = self.fn(*self.args)
    if self.carry:
      self.args[0] = out[0] if isinstance(out, tuple) else out
    return out


def time_interleaved(cases, windows=None, window_s=None):
  """{name: (median, min, max) s/call} for {name: (fn, args, carry)}.

  Windows of the cases alternate (A B C A B C ...), so load from other
  processes on this shared machine hits all of them alike; the min is the
  least-disturbed window.
  """
  windows = windows or ARGS.windows
  window_s = window_s or ARGS.window_s
  runners = {k: _Runner(*v) for k, v in cases.items()}
  iters = {}
  for k, r in runners.items():
    _block(r())  # compile + warm-up
    t0 = time.perf_counter()
    _block(r())
    iters[k] = max(1, int(window_s / max(time.perf_counter() - t0, 1e-6)))
  times = {k: [] for k in runners}
  for _ in range(windows):
    for k, r in runners.items():
      wait_quiet()
      t0 = time.perf_counter()
      for _ in range(iters[k]):
        out = r()
      _block(out)
      times[k].append((time.perf_counter() - t0) / iters[k])
  return {k: (float(np.median(v)), float(np.min(v)), float(np.max(v)))
          for k, v in times.items()}


def timeit(fn, *args, carry=False):
  return time_interleaved({"f": (fn, args, carry)})["f"]


def fmt_ms(t):
  med, lo, hi = t
  return f"{med * 1e3:.2f} ({lo * 1e3:.2f}-{hi * 1e3:.2f})"


def peak_case(n):
  """A jitted n^3 f32 matmul and its FLOPs."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  return (jax.jit(jnp.matmul), (a, b), False), 2.0 * n ** 3


# ---------------------------------------------------------------- CIFAR CNN
def cifar_layers(padding, batch):
  """(name, x shape, kernel shape, needs dX) of the CIFAR CNN's convs."""
  h = 32
  out = []
  for i, (cin, cout) in enumerate([(3, 32), (32, 64), (64, 64)]):
    out.append((f"conv{i + 1} {h}x{h}x{cin}->{cout}", (batch, h, h, cin),
                (3, 3, cin, cout), i > 0))
    ho = h if padding == "SAME" else h - 2
    h = ho // 2
  return out


class CifarCNN(nn.Module):
  """Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10 (the TF tutorial CNN)."""
  padding: str = "VALID"
  fast_conv: bool = False
  fast_pool: bool = False

  @nn.compact
  def __call__(self, x):
    conv_kw = dict(padding=self.padding)
    if self.fast_conv:
      conv_kw["conv_general_dilated"] = ops.conv_general_dilated
    pool = ops.max_pool if self.fast_pool else nn.max_pool
    x = nn.relu(nn.Conv(32, (3, 3), **conv_kw)(x))
    x = pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(64, (3, 3), **conv_kw)(x))
    x = pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(64, (3, 3), **conv_kw)(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


def cnn_forward_macs(padding, batch):
  macs = 0
  h = 32
  for cin, cout in [(3, 32), (32, 64), (64, 64)]:
    ho = h if padding == "SAME" else h - 2
    macs += ho * ho * 9 * cin * cout
    h = ho // 2
  flat = ho * ho * 64
  macs += flat * 64 + 64 * 10
  return macs * batch


def make_train_step(model, tx):
  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(state, x, y):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=0)


def step_case(padding, batch, fast_conv, fast_pool):
  model = CifarCNN(padding=padding, fast_conv=fast_conv, fast_pool=fast_pool)
  kx, ky, kp = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(kx, (batch, 32, 32, 3), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, 10)
  params = model.init(kp, x)["params"]
  tx = optax.adam(1e-3)
  state = (params, tx.init(params))
  step = make_train_step(model, tx)
  return step, (state, x, y), True


# ---------------------------------------------------------------- DCGAN
class Generator(nn.Module):
  """DCGAN-like 28x28 generator: Dense -> 7x7x128 -> 14x14x64 -> 28x28x1."""

  @nn.compact
  def __call__(self, z):
    x = nn.relu(nn.Dense(7 * 7 * 128)(z)).reshape(z.shape[0], 7, 7, 128)
    x = nn.relu(nn.ConvTranspose(64, (4, 4), strides=(2, 2))(x))
    return jnp.tanh(nn.ConvTranspose(1, (4, 4), strides=(2, 2))(x))


def dcgan_case(batch, fast):
  """Generator loss fwd+bwd; `fast` routes ConvTranspose through ops.

  flax's ConvTranspose has no hook for its conv function, so the fast case
  swaps `flax.linen.linear.lax` for a shim while compiling (bench only).
  """
  import flax.linen.linear as fl  # pylint: disable=g-import-not-at-top
  gen = Generator()
  z = jax.random.normal(jax.random.key(0), (batch, 100))
  params = gen.init(jax.random.key(1), z)["params"]

  def loss(p, z):
    return jnp.mean(gen.apply({"params": p}, z) ** 2)

  class _Shim:
    def __getattr__(self, name):
      return ops.conv_transpose if name == "conv_transpose" else getattr(lax, name)

  orig = fl.lax
  try:
    if fast:
      fl.lax = _Shim()
    f = jax.jit(jax.value_and_grad(loss)).lower(params, z).compile()
  finally:
    fl.lax = orig
  return f, (params, z), False


def main():
  sections = set(ARGS.only.split(","))
  print(f"jax {jax.__version__}, devices {jax.devices()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"modes fwd={conv_mod.FWD_MODE} dx={conv_mod.DX_MODE} "
        f"dw={conv_mod.DW_MODE} im2col={conv_mod.IM2COL_IMPL} "
        f"save_patches={conv_mod.SAVE_PATCHES}, "
        f"malloc tuned={MALLOC_TUNED}")
  print(f"windows={ARGS.windows} x >={ARGS.window_s}s, cases interleaved "
        "window by window; times: median (min-max) ms per call\n")
  peak = None
  pcase, pflops = peak_case(ARGS.peak_n)
  if "peak" in sections:
    t = time_interleaved({"mm": pcase})["mm"]
    peak = pflops / t[0] / 1e9
    print(f"| f32 matmul peak {ARGS.peak_n}^3 | {peak:.1f} GFLOP/s (windows "
          f"{pflops / t[2] / 1e9:.1f}-{pflops / t[1] / 1e9:.1f}) |\n")

  if "layers" in sections:
    print("| layer (fwd+bwd, batch %d, %s) | lax ms | ops ms | speedup | "
          "GFLOP/s ops (lax) |" % (ARGS.batch, ARGS.padding))
    print("|---|---|---|---|---|")
    for name, xs, ws, need_dx in cifar_layers(ARGS.padding, ARGS.batch):
      x = jax.random.normal(jax.random.key(2), xs, jnp.float32)
      w = jax.random.normal(jax.random.key(3), ws, jnp.float32) * 0.1
      cases = {}
      for tag, cfn in (("lax", lax.conv_general_dilated),
                       ("ops", ops.conv_general_dilated)):
        conv = lambda x, w, cfn=cfn: cfn(x, w, (1, 1), ARGS.padding,
                                         dimension_numbers=DN)
        y = jax.eval_shape(conv, x, w)
        g = jax.random.normal(jax.random.key(4), y.shape, jnp.float32)

        def fb(x, w, g, conv=conv):
          if need_dx:
            yv, vjp = jax.vjp(conv, x, w)
            return yv, vjp(g)
          yv, vjp = jax.vjp(lambda w: conv(x, w), w)  # input layer: no dX
          return yv, vjp(g)

        cases[tag] = (jax.jit(fb), (x, w, g), False)
      res = time_interleaved(cases)
      ho = y.shape[1]
      flops = 2.0 * ARGS.batch * ho * ho * np.prod(ws) * (3 if need_dx else 2)
      print(f"| {name}{'' if need_dx else ' (no dX)'} | {fmt_ms(res['lax'])} | "
            f"{fmt_ms(res['ops'])} | {res['lax'][0] / res['ops'][0]:.2f}x | "
            f"{flops / res['ops'][0] / 1e9:.0f} "
            f"({flops / res['lax'][0] / 1e9:.0f}) |")
    print()

  if "pool" in sections:
    print("| max-pool 2x2/2 fwd+bwd | flax ms | ops ms | speedup |")
    print("|---|---|---|---|")
    h1 = 32 if ARGS.padding == "SAME" else 30
    h2 = 16 if ARGS.padding == "SAME" else 13
    for shape in [(ARGS.batch, h1, h1, 32), (ARGS.batch, h2, h2, 64)]:
      x = jax.random.normal(jax.random.key(5), shape, jnp.float32)
      cases = {}
      for tag, pfn in (("flax", nn.max_pool), ("ops", ops.max_pool)):
        def fb(x, pfn=pfn):
          yv, vjp = jax.vjp(lambda x: pfn(x, (2, 2), strides=(2, 2)), x)
          return yv, vjp(jnp.ones_like(yv))
        cases[tag] = (jax.jit(fb), (x,), False)
      res = time_interleaved(cases)
      print(f"| {shape} | {fmt_ms(res['flax'])} | {fmt_ms(res['ops'])} | "
            f"{res['flax'][0] / res['ops'][0]:.2f}x |")
    print()

  if "step" in sections:
    flops = 3 * 2 * cnn_forward_macs(ARGS.padding, ARGS.batch)
    rows = {"lax conv + flax max_pool": (False, False),
            "lax conv + ops.max_pool": (False, True),
            "ops conv + ops.max_pool": (True, True)}
    cases = {k: step_case(ARGS.padding, ARGS.batch, *v) for k, v in rows.items()}
    cases["matmul peak"] = pcase  # interleaved: same load as the steps
    res = time_interleaved(cases)
    speak = pflops / res["matmul peak"][0] / 1e9
    print(f"| CIFAR CNN train step (batch {ARGS.batch}, {ARGS.padding}, Adam; "
          f"{flops / 1e9:.2f} GFLOP/step; peak interleaved: {speak:.0f} "
          "GFLOP/s) | ms/step | examples/s | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|")
    for name in rows:
      t = res[name]
      gf = flops / t[0] / 1e9
      print(f"| {name} | {fmt_ms(t)} | {ARGS.batch / t[0]:.0f} | {gf:.1f} | "
            f"{100 * gf / speak:.1f}% |")
    print()

  if "dcgan" in sections:
    print(f"| DCGAN generator fwd+bwd (batch {ARGS.batch}) | ms |")
    print("|---|---|")
    res = time_interleaved({
        "lax.conv_transpose": dcgan_case(ARGS.batch, False),
        "ops.conv_transpose": dcgan_case(ARGS.batch, True)})
    for k, t in res.items():
      print(f"| {k} | {fmt_ms(t)} |")
    print()


if __name__ == "__main__":
  main()
  if ARGS.quiet_wait > 0:
    print(f"{WAITS['quiet']}/{WAITS['windows']} timed windows started with "
          f"other processes below {ARGS.quiet_level:.0%} of the CPUs")
