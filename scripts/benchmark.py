"""Train-step throughput of every registered model, optionally against PyTorch.

    python scripts/benchmark.py                  # every model, markdown table
    python scripts/benchmark.py --models=mlp,cnn --windows=7
    python scripts/benchmark.py --compare        # + PyTorch CPU, eager and torch.compile
    python scripts/benchmark.py --pipeline       # + MNIST grain pipeline vs device batches
    python scripts/benchmark.py --experiments    # + first-step compile time per experiment
    python scripts/benchmark.py --cpu=tuned      # jaxdl.runtime.configure_cpu() first

For each model: examples/s (tokens/s for sequence models) of the compiled,
donated train step (jaxdl.train.engine.Engine, the same step experiments run),
achieved GFLOP/s as a share of the f32 matmul peak measured in the same run,
first-step compile time (trace + lower + compile) and the step's memory (XLA's
buffer assignment: arguments + outputs - donated aliases + temporaries).

FLOPs are counted analytically from the shapes, not measured: every
dot_general and convolution of the jaxpr of the plain (conv_impl='xla') train
step, forward + backward + update, 2 FLOPs per multiply-add (about 3x the
forward's 2 x MACs; a transposed convolution's inserted zeros are not
counted). Fast-path rows reuse their model's plain count, so GFLOP/s compare
like with like; XLA's own `cost_analysis` count is shown beside it.

Timing: everything is compiled and warmed up first; then the timed windows
run interleaved, case by case (A B C ... A B C ...), so that all cases of one
window see the same load on this shared machine; the matmul peak is one of the
cases. Each window runs enough steps to last about --window_s seconds; the
table gives the median step time and the spread (max-min)/median of the
windows.

PyTorch runs with OMP_WAIT_POLICY=PASSIVE unless the environment says
otherwise: its default spinning OpenMP threads are up to 100x slower when the
cores are shared with other processes, which would flatter jaxdl. The
reference models are in scripts/torch_reference.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import math
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable

# Flags must be parsed before jax starts its backend (--cpu=tuned).
# PyTorch's OpenMP threads spin-wait at barriers by default; when the cores are
# shared with other processes (as on these machines) that makes its steps up to
# 100x slower (measured: MNIST MLP 164 ms vs 1.2 ms per step with 2 threads
# under a load of 4.5). Passive waiting is the fair setting for the reference.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="",
                 help="comma-separated names or name prefixes (default: all)")
  p.add_argument("--windows", type=int, default=5, help="timed windows per case")
  p.add_argument("--window_s", type=float, default=0.25,
                 help="seconds per timed window (steps per window are calibrated)")
  p.add_argument("--compare", action="store_true",
                 help="also time PyTorch eager and torch.compile (bench extra)")
  p.add_argument("--no_torch_compile", action="store_true",
                 help="with --compare: eager PyTorch only")
  p.add_argument("--pipeline", action="store_true",
                 help="MNIST through jaxdl's grain pipeline vs device-resident batches")
  p.add_argument("--mnist_dir", default=os.path.join(
      os.path.dirname(_HERE), "..", "shared", "data", "mnist"))
  p.add_argument("--experiments", action="store_true",
                 help="first-step compile time of every experiments/configs/*.py")
  p.add_argument("--cpu", default="default", choices=["default", "tuned"],
                 help="tuned: jaxdl.runtime.configure_cpu() before jax starts")
  p.add_argument("--peak_n", type=int, default=2048, help="matmul size for the peak")
  return p


@dataclasses.dataclass
class Bench:
  name: str                       # row label; the first word is the model
  config: Callable[[], Any]
  batch: Callable[[int, Any], dict]
  batch_size: int
  info: dict
  tokens: int = 0                 # tokens per example (sequence models)
  torch_name: str = ""            # scripts/torch_reference.py builder ('' = model)

  @property
  def model(self) -> str:
    return self.name.split(" ")[0]


def _images(shape, classes=10, labels=True):
  def make(n, rng):
    b = {"inputs": rng.random((n,) + shape, dtype="float32")}
    if labels:
      b["label"] = rng.integers(0, classes, n).astype("int32")
    return b
  return make


def _tokens(length, vocab, classes=2, labels=True):
  def make(n, rng):
    b = {"inputs": rng.integers(1, vocab, (n, length)).astype("int32")}
    if labels:
      b["label"] = rng.integers(0, classes, n).astype("int32")
    return b
  return make


def _config(task="classification", model="mlp", loss="softmax_cross_entropy",
            sections=None, **kwargs):
  def make():
    import ml_collections  # pylint: disable=g-import-not-at-top
    from jaxdl.configs import base_config  # pylint: disable=g-import-not-at-top
    c = base_config()
    c.task = task
    c.model.name = model
    c.model.kwargs = ml_collections.ConfigDict(kwargs)
    c.loss = loss
    for k, v in (sections or {}).items():
      c[k] = ml_collections.ConfigDict(v)
    return c
  return make


MNIST = {"num_classes": 10, "input_shape": (28, 28, 1)}
CIFAR = {"num_classes": 10, "input_shape": (32, 32, 3)}
IMDB = {"num_classes": 2, "vocab_size": 10000, "maxlen": 100}
BCE = "sigmoid_binary_cross_entropy"


# Input shapes of the image datasets (text: the config's maxlen / num_words).
_DATASET_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "digits": (8, 8, 1),
                   "cifar10": (32, 32, 3)}
# Registered models that the curated rows below cover under another name.
_COVERED = {"dcgan_generator": "dcgan", "dcgan_discriminator": "dcgan"}


def registry_bench(name: str) -> Bench:
  """A row for a registered model from its example run (`jaxdl.models.
  examples()`: experiment config + overrides), on random data shaped like
  the experiment's dataset, at the experiment's batch size."""
  from jaxdl import models  # pylint: disable=g-import-not-at-top
  make = lambda: models.example_config(name)  # noqa: E731
  c = make()
  labels = c.task in ("classification", "dbn")
  if c.dataset in _DATASET_SHAPES:
    shape = _DATASET_SHAPES[c.dataset]
    return Bench(name, make, _images(shape, labels=labels), c.batch_size,
                 {"num_classes": 10, "input_shape": shape})
  return Bench(name, make, _tokens(c.maxlen, c.num_words, labels=labels), c.batch_size,
               {"num_classes": 2, "vocab_size": c.num_words, "maxlen": c.maxlen},
               tokens=c.maxlen)


def benches() -> list[Bench]:
  """The curated rows below, then a `registry_bench` row for every registered
  model none of them covers (so a new model is benchmarked without an edit here).

  Rows without a suffix are the plain lowering ('xla' / 'autodiff', jax's
  defaults); '(conv_impl=fast)' / '(scan_impl=fused)' rows force the fast
  path, which is what a model's default 'auto' compiles to on CPU
  (tests/test_platform.py: the same parameters bit for bit)."""
  img28, img32 = _images((28, 28, 1)), _images((32, 32, 3))
  from jaxdl import models  # pylint: disable=g-import-not-at-top
  curated = _curated(img28, img32)
  rows = {b.model for b in curated}
  return curated + [registry_bench(n) for n in sorted(models.registry())
                    if n not in rows and _COVERED.get(n) not in rows]


def _curated(img28, img32) -> list[Bench]:
  return [
      Bench("mlp", _config(model="mlp"), img28, 128, MNIST),
      Bench("cnn", _config(model="cnn", conv_impl="xla"), img32, 128, CIFAR),
      Bench("cnn (conv_impl=fast)", _config(model="cnn", conv_impl="fast"),
            img32, 128, CIFAR),
      Bench("resnet", _config(model="resnet", conv_impl="xla"), img32, 128, CIFAR),
      Bench("resnet (conv_impl=fast)", _config(model="resnet", conv_impl="fast"),
            img32, 128, CIFAR),
  ] + [
      Bench(f"lstm_classifier{label}", _config(model="lstm_classifier", loss=BCE, **kw),
            _tokens(100, 10000), batch, IMDB, tokens=100)
      for batch in (32, 128)
      for label, kw in (("", {"scan_impl": "autodiff"}),
                        (" (scan_impl=fused)", {"scan_impl": "fused"}))
  ] + [
      Bench("transformer_classifier",
            _config(model="transformer_classifier", loss=BCE, vocab_size=10000),
            _tokens(128, 10000), 32, IMDB, tokens=128),
      Bench("transformer_lm", _config("language_model", "transformer_lm",
                                      vocab_size=10000),
            _tokens(128, 10000, labels=False), 32, {"vocab_size": 10000},
            tokens=128),
      Bench("dcgan", _config(
          "gan", "dcgan_generator", sections={"gan": {
              "generator_kwargs": {"conv_impl": "xla"},
              "discriminator_kwargs": {"conv_impl": "xla"}}}),
            _images((28, 28, 1), labels=False), 64, MNIST),
      Bench("dcgan (conv_impl=fast)", _config(
          "gan", "dcgan_generator", sections={"gan": {
              "generator_kwargs": {"conv_impl": "fast"},
              "discriminator_kwargs": {"conv_impl": "fast"}}}),
            _images((28, 28, 1), labels=False), 64, MNIST),
      Bench("rbm", _config("rbm", "rbm"), _images((28, 28, 1), labels=False), 128, MNIST),
      Bench("dbn_classifier", _config(model="dbn_classifier"), img28, 64, MNIST),
      Bench("dense_autoencoder", _config("autoencoder", "dense_autoencoder",
                                         sections={"ae": {"loss": "bce"}}),
            _images((28, 28, 1), labels=False), 128, MNIST),
      Bench("conv_autoencoder", _config("autoencoder", "conv_autoencoder",
                                        sections={"ae": {"loss": "bce"}},
                                        conv_impl="xla"),
            _images((28, 28, 1), labels=False), 128, MNIST),
      Bench("conv_autoencoder (conv_impl=fast)", _config(
          "autoencoder", "conv_autoencoder", sections={"ae": {"loss": "bce"}},
          conv_impl="fast"), _images((28, 28, 1), labels=False), 128, MNIST),
      Bench("vae", _config("vae", "vae"), _images((28, 28, 1), labels=False), 128, MNIST),
  ]


# --- FLOP counting ---------------------------------------------------------


def _prod(xs) -> int:
  return int(math.prod(int(x) for x in xs))


def jaxpr_flops(jaxpr) -> float:
  """2 x multiply-adds of every dot_general / convolution in a (closed) jaxpr.

  Recurses into sub-jaxprs (jit, custom_vjp/jvp, remat, scan x length, the
  largest cond branch). A convolution with input dilation (a transposed conv
  or a strided conv's dX) counts only the taps that hit real input elements.
  """
  from jax.extend import core  # pylint: disable=g-import-not-at-top
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * _prod(eqn.outvars[0].aval.shape) * _prod(lhs[d] for d in lc)
      continue
    if name == "conv_general_dilated":
      dn = eqn.params["dimension_numbers"]
      rhs = eqn.invars[1].aval.shape
      k_sp = _prod(rhs[d] for d in dn.rhs_spec[2:])
      cin = rhs[dn.rhs_spec[1]]
      macs = _prod(eqn.outvars[0].aval.shape) * k_sp * cin
      macs /= _prod(eqn.params.get("lhs_dilation") or (1,))
      total += 2.0 * macs / max(1, eqn.params.get("batch_group_count", 1))
      continue
    mult = float(eqn.params.get("length", 1)) if name == "scan" else 1.0
    subs = []
    for v in eqn.params.values():
      for item in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(item, (core.Jaxpr, core.ClosedJaxpr)):
          subs.append(jaxpr_flops(item))
    if subs:
      total += mult * (max(subs) if name == "cond" else sum(subs))
  return total


# --- measurement -----------------------------------------------------------


@dataclasses.dataclass
class Case:
  """One timed thing: `run(k)` runs k steps and waits for them."""
  label: str
  run: Callable[[int], None]
  steps: int = 1
  times: list = dataclasses.field(default_factory=list)

  def calibrate(self, window_s: float) -> None:
    self.run(1)
    t = time.perf_counter()
    self.run(2)
    per = (time.perf_counter() - t) / 2
    self.steps = max(1, min(1000, int(window_s / max(per, 1e-6))))

  def window(self) -> None:
    t = time.perf_counter()
    self.run(self.steps)
    self.times.append((time.perf_counter() - t) / self.steps)

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def spread(self) -> float:
    return (max(self.times) - min(self.times)) / self.median


def peak_case(n: int) -> Case:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()

  def run(k):
    for _ in range(k):
      r = f(a)
    r.block_until_ready()

  return Case("matmul", run)


def jax_case(b: Bench, mesh) -> tuple[Case, dict]:
  """Builds, compiles and warms up one model's train step."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxdl import parallel  # pylint: disable=g-import-not-at-top
  from jaxdl.train.registry import build_task  # pylint: disable=g-import-not-at-top
  from jaxdl.train.engine import Engine  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  task = build_task(b.config(), b.info, 1000)
  host_batch = b.batch(b.batch_size, rng)
  engine = Engine(task, mesh, host_batch, total_steps=1000)
  state = engine.init_state(0)
  batch = parallel.global_batch(host_batch, mesh)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  lowered = engine.train_step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  mem_mb = 0.0
  if mem is not None:
    mem_mb = (mem.argument_size_in_bytes + mem.output_size_in_bytes
              - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / 2**20
  flops = None
  if "(" not in b.name:  # fast-path rows reuse the plain model's count
    flops = jaxpr_flops(jax.make_jaxpr(engine.train_step)(state, batch))
  holder = {"state": state}

  def run(k):
    s = holder["state"]
    for _ in range(k):
      s, m = compiled(s, batch)
    jax.block_until_ready(m)
    holder["state"] = s

  info = {"compile_s": compile_s, "mem_mb": mem_mb, "flops": flops,
          "xla_flops": float((cost or {}).get("flops", 0.0))}
  return Case(b.name, run), info


def torch_case(b: Bench, compiled: bool) -> Case | None:
  import torch_reference  # pylint: disable=g-import-not-at-top
  step = torch_reference.build(b.torch_name or b.model, b.batch_size, compiled)
  if step is None:
    return None
  t0 = time.perf_counter()
  try:
    step()  # torch.compile compiles here
  except Exception as e:  # pylint: disable=broad-except
    print(f"  torch{' compile' if compiled else ''} {b.name}: failed "
          f"({type(e).__name__}: {str(e).splitlines()[0][:120]})", file=sys.stderr)
    return None
  first_s = time.perf_counter() - t0

  def run(k):
    for _ in range(k):
      step()

  c = Case(f"{b.name} torch{' compile' if compiled else ''}", run)
  c.first_s = first_s
  return c


def matches(b: Bench, wanted: list[str]) -> bool:
  return not wanted or any(b.name == w or b.model == w or b.model.startswith(w)
                           for w in wanted)


# --- input pipeline and experiments ----------------------------------------


def pipeline_cases(mesh, mnist_dir: str, label: str, config, batch_size: int,
                   num_threads: int = 2, with_resident: bool = True,
                   device_put: bool = False, batches_per_transfer: int = 1):
  """Cases on real MNIST: device-resident batches and the grain pipeline.

  End to end is what `jaxdl.train.loop` does per step: `next(it)` from
  `pipeline.train_iterator` (grain, `num_threads` workers, prefetch 4), then
  `parallel.global_batch` and the step (with jax's defaults dispatched
  asynchronously; `--cpu=tuned`, like the experiments, dispatches
  synchronously: grain's threads still read ahead while a step runs). Device-resident replays 16
  batches already on the device. `device_put=True` replaces
  `parallel.global_batch` (`jax.make_array_from_process_local_data` per
  array) by one `jax.device_put(batch, sharding)`, its single-process
  equivalent, to measure what that costs. `batches_per_transfer=K > 1` is the
  loop's block path (`--config.batches_per_transfer`): `next_device_block`
  (one grain element and one `parallel.global_block` per K steps) and
  `Engine.train_step_in_block`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jaxdl import parallel  # pylint: disable=g-import-not-at-top
  from jaxdl.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  from jaxdl.train.registry import build_task  # pylint: disable=g-import-not-at-top
  from jaxdl.train.engine import Engine  # pylint: disable=g-import-not-at-top
  train, _, info = sources.load_image_dataset("mnist", mnist_dir)
  task = build_task(config, info, 10**6)
  it = pipeline.train_iterator(train, global_batch_size=batch_size, seed=0,
                               num_batches=10**6, num_threads=num_threads,
                               batches_per_transfer=batches_per_transfer)
  first = next(it)
  engine = Engine(task, mesh, first, total_steps=10**6)
  state = {"s": engine.init_state(0)}
  resident = [parallel.global_batch(next(it), mesh) for _ in range(16)]
  compiled = engine.train_step.lower(state["s"], resident[0]).compile()

  def on_device(k):
    s = state["s"]
    for i in range(k):
      s, m = compiled(s, resident[i % len(resident)])
    jax.block_until_ready(m)
    state["s"] = s

  if batches_per_transfer > 1:
    to_block = lambda b: parallel.global_block(b, mesh)
    in_block = engine.train_step_in_block.lower(
        state["s"], to_block(it.next_block()[2])).compile()

    def blocks(k):
      s = state["s"]
      for _ in range(k):
        s, m = in_block(s, it.next_device_block(to_block))
      jax.block_until_ready(m)
      state["s"] = s

    out = [Case(f"{label}, grain ({num_threads} threads), {batches_per_transfer} "
                "batches per transfer (parallel.global_block), end to end", blocks)]
    if with_resident:
      out.insert(0, Case(f"{label}, device-resident batches", on_device))
    return out

  sharding = parallel.batch_sharding(mesh)
  to_device = ((lambda b: jax.device_put(b, sharding)) if device_put
               else (lambda b: parallel.global_batch(b, mesh)))

  def end_to_end(k):
    s = state["s"]
    for _ in range(k):
      s, m = compiled(s, to_device(next(it)))
    jax.block_until_ready(m)
    state["s"] = s

  how = "jax.device_put" if device_put else "parallel.global_batch"
  out = [Case(f"{label}, grain ({num_threads} threads) + {how}, end to end",
              end_to_end)]
  if with_resident:
    out.insert(0, Case(f"{label}, device-resident batches", on_device))
  return out


EXPERIMENT_DATA = {  # (input shape, classes, training examples)
    "mnist": ((28, 28, 1), 10, 60000), "fashion_mnist": ((28, 28, 1), 10, 60000),
    "cifar10": ((32, 32, 3), 10, 50000), "digits": ((8, 8, 1), 10, 1437),
    "imdb": (None, 2, 25000),
}


def experiment_compile_times(mesh) -> list[tuple[str, float, float]]:
  """(experiment, train-step compile s, eval-step compile s) at full size."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxdl import parallel  # pylint: disable=g-import-not-at-top
  from jaxdl.train.registry import build_task  # pylint: disable=g-import-not-at-top
  from jaxdl.train.engine import Engine  # pylint: disable=g-import-not-at-top
  out = []
  root = os.path.dirname(_HERE)
  for path in sorted(glob.glob(os.path.join(root, "experiments", "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if name.startswith("_"):
      continue
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    rng = np.random.default_rng(0)
    n = config.batch_size
    shape, classes, n_train = EXPERIMENT_DATA[config.dataset]
    if config.dataset == "imdb":
      info = {"num_classes": 2, "vocab_size": config.num_words, "maxlen": config.maxlen}
      batch = _tokens(config.maxlen, config.num_words)(n, rng)
    else:
      info = {"num_classes": classes, "input_shape": shape}
      batch = _images(shape, classes)(n, rng)
    total = config.num_steps or config.num_epochs * (n_train // n)
    task = build_task(config, info, total)
    engine = Engine(task, mesh, batch, total_steps=total, dtype=config.dtype,
                    grad_accum_steps=config.grad_accum_steps)
    state = engine.init_state(0)
    gbatch = parallel.global_batch(batch, mesh)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    engine.train_step.lower(state, gbatch).compile()
    t_train = time.perf_counter() - t0
    ebatch = dict(batch, mask=np.ones((n,), np.float32))
    t0 = time.perf_counter()
    engine.eval_step.lower(state, parallel.global_batch(ebatch, mesh), None).compile()
    out.append((name, t_train, time.perf_counter() - t0))
  return out


# --- main ------------------------------------------------------------------


def _fmt(v, spec=",.0f"):
  return "" if v is None else format(v, spec)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.cpu == "tuned":
    from jaxdl import runtime  # pylint: disable=g-import-not-at-top
    runtime.configure_cpu()
  import jax  # pylint: disable=g-import-not-at-top
  from jaxdl import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(jax.devices()[:1])
  wanted = [w for w in args.models.split(",") if w]
  chosen = [b for b in benches() if matches(b, wanted)]
  if not chosen and not (args.pipeline or args.experiments):
    print(f"error: no model matches --models={args.models}; choose from "
          f"{sorted({b.model for b in benches()})}", file=sys.stderr)
    return 2

  peak = peak_case(args.peak_n)
  cases = [peak]
  rows = []
  flops_of: dict[str, float] = {}
  for b in chosen:
    case, info = jax_case(b, mesh)
    if info["flops"] is not None:
      flops_of[(b.model, b.batch_size)] = info["flops"]
    row = dict(bench=b, case=case, torch={}, **info)
    cases.append(case)
    if args.compare:
      for compiled in ((False,) if args.no_torch_compile else (False, True)):
        tc = torch_case(b, compiled)
        if tc is not None:
          row["torch"]["compile" if compiled else "eager"] = tc
          cases.append(tc)
    rows.append(row)
    print(f"  built {b.name} (batch {b.batch_size}): compile {info['compile_s']:.2f} s",
          file=sys.stderr, flush=True)
  pipe = []
  if args.pipeline:
    # The MLP step (< 1 ms) is the hardest for the pipeline to keep up with;
    # the GAN step (the mnist_gan experiment's) is a typical one.
    pipe.append(pipeline_cases(mesh, args.mnist_dir, "mnist_mlp (batch 128)",
                               _config(model="mlp")(), 128))
    pipe[-1] += pipeline_cases(mesh, args.mnist_dir, "mnist_mlp (batch 128)",
                               _config(model="mlp")(), 128, num_threads=1,
                               with_resident=False)
    pipe[-1] += pipeline_cases(mesh, args.mnist_dir, "mnist_mlp (batch 128)",
                               _config(model="mlp")(), 128, with_resident=False,
                               device_put=True)
    for k in (4, 16, 64):
      pipe[-1] += pipeline_cases(mesh, args.mnist_dir, "mnist_mlp (batch 128)",
                                 _config(model="mlp")(), 128, with_resident=False,
                                 batches_per_transfer=k)
    pipe.append(pipeline_cases(mesh, args.mnist_dir, "mnist_gan (batch 64)",
                               _config("gan", "dcgan_generator")(), 64))
    for group in pipe:
      cases.extend(group)

  for c in cases:
    c.calibrate(args.window_s)
  for w in range(args.windows):
    for c in cases:
      c.window()
    print(f"  window {w + 1}/{args.windows} done", file=sys.stderr, flush=True)

  peak_gflops = 2 * args.peak_n**3 / peak.median / 1e9
  print(f"device: {jax.devices()[0].device_kind} x1, {os.cpu_count()} CPUs | "
        f"f32 matmul peak {peak_gflops:.0f} GFLOP/s (spread {100 * peak.spread:.0f}%) | "
        f"jax {jax.__version__} | --cpu={args.cpu} | {args.windows} windows of "
        f"~{args.window_s} s, interleaved")
  if args.compare:
    import torch_reference  # pylint: disable=g-import-not-at-top
    print(f"reference: {torch_reference.version()}")
  print()
  head = ("| model | batch | examples/s | tokens/s | step ms (spread) | GFLOP/s | "
          "% of peak | XLA GFLOP/s | compile s | memory MiB |")
  if args.compare:
    head += (" torch eager ex/s | torch.compile ex/s | vs eager | vs compile |"
             " vs best torch |")
  if rows:
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
  for r in rows:
    b, c = r["bench"], r["case"]
    ex_s = b.batch_size / c.median
    flops = flops_of.get((b.model, b.batch_size), 0.0)
    gf = flops / c.median / 1e9
    line = (f"| {b.name} | {b.batch_size} | {ex_s:,.0f} | "
            f"{_fmt(ex_s * b.tokens if b.tokens else None)} | "
            f"{1e3 * c.median:.2f} ({100 * c.spread:.0f}%) | {gf:.1f} | "
            f"{100 * gf / peak_gflops:.1f}% | {r['xla_flops'] / c.median / 1e9:.1f} | "
            f"{r['compile_s']:.2f} | {r['mem_mb']:.1f} |")
    if args.compare:
      te, tc = r["torch"].get("eager"), r["torch"].get("compile")
      te_s = b.batch_size / te.median if te else None
      tc_s = b.batch_size / tc.median if tc else None
      best = max([v for v in (te_s, tc_s) if v] or [float("nan")])
      ratio = lambda t: "" if not t else f"{ex_s / t:.2f}x"  # noqa: E731
      spreads = "/".join(f"{100 * t.spread:.0f}%" for t in (te, tc) if t)
      line += (f" {_fmt(te_s)} | {_fmt(tc_s)} | {ratio(te_s)} | {ratio(tc_s)} | "
               f"{ex_s / best:.2f}x |")
      r["torch_spreads"] = spreads
    print(line)
  if args.compare:
    print("\ntorch spreads (eager/compile) and torch.compile first-step seconds: " + "; ".join(
        f"{r['bench'].name}: {r.get('torch_spreads', '')}, "
        f"{getattr(r['torch'].get('compile'), 'first_s', 0):.1f} s" for r in rows))
  if pipe:
    print("\n| input pipeline (real MNIST) | steps/s | step ms (spread) | "
          "vs device-resident |")
    print("|---|---|---|---|")
    for group in pipe:
      dev = group[0]
      for c in group:
        print(f"| {c.label} | {1 / c.median:,.1f} | {1e3 * c.median:.2f} "
              f"({100 * c.spread:.0f}%) | {dev.median / c.median:.3f} |")
    print("\n(target: end to end >= 0.95 of device-resident steps/s)")
  if args.experiments:
    print("\n| experiment (full config) | train step compile s | eval step compile s |")
    print("|---|---|---|")
    for name, t_train, t_eval in experiment_compile_times(mesh):
      print(f"| {name} | {t_train:.2f} | {t_eval:.2f} |")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"\nprocess peak RSS {rss:,.0f} MiB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
