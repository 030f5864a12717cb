"""Train-step throughput of every registered model on synthetic batches.

    python scripts/benchmark.py                 # every model, markdown table
    python scripts/benchmark.py --models=mlp,cnn --windows=5
    python scripts/benchmark.py --compare       # + PyTorch CPU (pip install -e .[bench])

For each model: examples/s (and tokens/s for sequence models) of the compiled,
donated train step, achieved GFLOP/s (XLA's cost analysis of the compiled
forward+backward step) as a share of the f32 matmul peak measured in the same
run, first-step compile time, and the step's temporary memory. Timings are the
median of several windows after warm-up, with the spread (max-min)/median:
these machines are shared and noisy, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import parallel
from jaxdl.configs import base_config
from jaxdl.tasks import build_task
from jaxdl.train.engine import Engine


@dataclasses.dataclass
class Bench:
  name: str
  config: Callable[[], Any]
  batch: Callable[[int, np.random.Generator], dict]
  batch_size: int
  info: dict
  tokens: int = 0  # tokens per example (sequence models)


def _images(shape, classes=10):
  def make(n, rng):
    return {"inputs": rng.random((n,) + shape, dtype=np.float32),
            "label": rng.integers(0, classes, n).astype(np.int32)}
  return make


def _tokens(length, vocab, classes=2):
  def make(n, rng):
    return {"inputs": rng.integers(1, vocab, (n, length)).astype(np.int32),
            "label": rng.integers(0, classes, n).astype(np.int32)}
  return make


def _classifier(model, loss="softmax_cross_entropy", **kwargs):
  def make():
    c = base_config()
    c.model.name = model
    c.model.kwargs = kwargs
    c.loss = loss
    return c
  return make


def _task_config(task, **fields):
  def make():
    c = base_config()
    c.task = task
    for k, v in fields.items():
      c[k] = v
    return c
  return make


MNIST = {"num_classes": 10, "input_shape": (28, 28, 1)}
CIFAR = {"num_classes": 10, "input_shape": (32, 32, 3)}
IMDB = {"num_classes": 2, "vocab_size": 10000, "maxlen": 100}


def benches() -> list[Bench]:
  out = [
      Bench("mlp", _classifier("mlp"), _images((28, 28, 1)), 128, MNIST),
      Bench("cnn", _classifier("cnn"), _images((32, 32, 3)), 128, CIFAR),
      Bench("cnn (conv_impl=fast)", _classifier("cnn", conv_impl="fast"),
            _images((32, 32, 3)), 128, CIFAR),
      Bench("resnet", _classifier("resnet"), _images((32, 32, 3)), 128, CIFAR),
      Bench("lstm_classifier", _classifier("lstm_classifier", "sigmoid_binary_cross_entropy"),
            _tokens(100, 10000), 32, IMDB, tokens=100),
      Bench("transformer_classifier",
            _classifier("transformer_classifier", "sigmoid_binary_cross_entropy",
                        vocab_size=10000), _tokens(128, 10000), 32, IMDB, tokens=128),
  ]
  return out


def measure_matmul_peak(n: int = 2048, windows: int = 5) -> float:
  """f32 GFLOP/s of a large jitted matmul on this machine, now."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(3):
      r = f(a)
    r.block_until_ready()
    times.append((time.perf_counter() - t) / 3)
  return 2 * n**3 / statistics.median(times) / 1e9


def run_bench(b: Bench, windows: int, steps: int, mesh) -> dict:
  rng = np.random.default_rng(0)
  config = b.config()
  task = build_task(config, b.info, 1000)
  host_batch = b.batch(b.batch_size, rng)
  engine = Engine(task, mesh, host_batch)
  state = engine.init_state(0)
  batch = parallel.global_batch(host_batch, mesh)
  t0 = time.perf_counter()
  compiled = engine.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  mem = compiled.memory_analysis()
  temp_mb = getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem is not None else 0.0
  for _ in range(3):  # warm-up
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  per_step = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(steps):
      state, m = compiled(state, batch)
    jax.block_until_ready(m)
    per_step.append((time.perf_counter() - t) / steps)
  med = statistics.median(per_step)
  return {"model": b.name, "batch": b.batch_size,
          "examples_s": b.batch_size / med,
          "tokens_s": b.batch_size * b.tokens / med if b.tokens else None,
          "gflops": flops / med / 1e9, "step_ms": med * 1e3,
          "spread": (max(per_step) - min(per_step)) / med,
          "compile_s": compile_s, "temp_mb": temp_mb}


def _fmt(v):
  return "" if v is None else f"{v:,.0f}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="", help="comma-separated names (default: all)")
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--steps", type=int, default=10, help="steps per timed window")
  p.add_argument("--compare", action="store_true", help="also time PyTorch (bench extra)")
  args = p.parse_args(argv)
  mesh = parallel.make_mesh(jax.devices()[:1])
  chosen = [b for b in benches()
            if not args.models or b.name.split(" ")[0] in args.models.split(",")
            or b.name in args.models.split(",")]
  if not chosen:
    print(f"error: no model matches --models={args.models}; choose from "
          f"{[b.name for b in benches()]}", file=sys.stderr)
    return 2
  peak = measure_matmul_peak()
  print(f"device: {jax.devices()[0].device_kind} x1 | f32 matmul peak {peak:.0f} GFLOP/s "
        f"| jax {jax.__version__}\n")
  rows = []
  torch_rows = {}
  if args.compare:
    import torch_reference  # pylint: disable=g-import-not-at-top
  for b in chosen:
    r = run_bench(b, args.windows, args.steps, mesh)
    rows.append(r)
    if args.compare:
      torch_rows[b.name] = torch_reference.measure(b.name.split(" ")[0], b.batch_size,
                                                   args.windows, args.steps)
    print(f"  measured {b.name}: {r['examples_s']:,.0f} examples/s", file=sys.stderr)
  head = ("| model | batch | examples/s | tokens/s | GFLOP/s | % of peak | step ms "
          "(spread) | compile s | temp MiB |")
  if args.compare:
    head += " torch eager ex/s | torch.compile ex/s | jaxdl / best torch |"
  print(head)
  print("|" + "---|" * (head.count("|") - 1))
  for r in rows:
    line = (f"| {r['model']} | {r['batch']} | {r['examples_s']:,.0f} | "
            f"{_fmt(r['tokens_s'])} | "
            f"{r['gflops']:.1f} | {100 * r['gflops'] / peak:.1f}% | "
            f"{r['step_ms']:.2f} ({100 * r['spread']:.0f}%) | {r['compile_s']:.2f} | "
            f"{r['temp_mb']:.1f} |")
    if args.compare:
      t = torch_rows.get(r["model"]) or {}
      eager, comp = t.get("eager"), t.get("compiled")
      best = max([v for v in (eager, comp) if v] or [0])
      line += (f" {eager or 0:,.0f} | {comp or 0:,.0f} | "
               f"{(r['examples_s'] / best) if best else float('nan'):.2f}x |")
    print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
