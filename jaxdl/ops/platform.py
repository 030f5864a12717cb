"""The one place where jaxdl chooses a CPU lowering: by the platform an op lowers to.

jaxdl's fast paths (`ops.conv_general_dilated`, `ops.conv_transpose`,
`ops.max_pool`, the fused LSTM scan, `ops.row_sum`) were measured faster on
XLA:CPU only. A model asks for one with an implementation name:

  'auto'   the fast path on CPU, the plain `lax` / flax form everywhere else
           (the default of every model);
  'fast'   (or 'fused' for the LSTM scan) the fast path on every platform;
  'xla'    (or 'autodiff') the plain form on every platform.

'auto' is `lax.platform_dependent(cpu=fast, default=plain)`: the choice is made
when the computation is lowered, for the platform it is lowered for, so one
traced function exported for ("cuda",) or ("tpu",) (`jax.export`) carries the
plain form, and on a CPU it compiles to exactly the fast path. (jax lowers the
selector as a `stablehlo.case` of one branch on a constant index, which XLA
removes; nothing of the other branch is emitted.) No environment variable is
read when a function is traced.

Forward-mode autodiff: the fast paths have hand-written backward passes
(`jax.custom_vjp`), which `jax.jvp` cannot differentiate. Under forward mode
(`jax.jvp`, `jax.jacfwd`, `jax.hessian`: a `JVPTracer` among the inputs) every
implementation, 'fast' included, computes the plain form instead: the same
function, whose jvp jax derives. A `jax.jit` placed *between* `jax.jvp` and the
model hides the tracers (the jitted function is traced abstractly first):
write `jax.jit(lambda ...: jax.jvp(apply, ...))` rather than
`jax.jvp(jax.jit(apply), ...)`, or build the model with the plain form.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax import lax
from jax.interpreters import ad

__all__ = ["AUTO", "batches_per_transfer", "check_impl", "cpu_convolutions",
           "dispatch", "forward_mode", "init_compiler_options", "platform_neutral",
           "set_cpu_convolutions"]

AUTO = "auto"

# Which kernels XLA:CPU runs convolutions with, which decides what the fast
# conv path does on CPU (`ops.conv.IM2COL_MAX_CHANNELS`): 'eigen' (XLA's
# multi-threaded Eigen kernels, what `configure_cpu()` selects) or 'ynnpack'
# (jax 0.10's default). XLA reads its flags once, when the CPU backend starts;
# `jaxdl.runtime` (process setup: `setup()`, `configure_cpu()`) records them
# once, before jax starts. Nothing reads the environment while tracing.
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def convolutions_in(xla_flags: str) -> str:
  """'eigen' if `xla_flags` takes convolutions away from YNNPACK, else 'ynnpack'."""
  kind = "ynnpack"
  for flag in xla_flags.split():
    name, _, value = flag.partition("=")
    if name == _YNN_FLAG:
      kind = "eigen" if "-individual_convolution" in value.split(",") else "ynnpack"
  return kind


_cpu_convolutions = "ynnpack"  # jax's default until process setup records otherwise


def cpu_convolutions() -> str:
  """'eigen' or 'ynnpack': the CPU convolution kernels of this process."""
  return _cpu_convolutions


def set_cpu_convolutions(kind: str) -> None:
  """Records the CPU convolution kernels (`configure_cpu()` calls it)."""
  global _cpu_convolutions
  if kind not in ("eigen", "ynnpack"):
    raise ValueError(f"kind={kind!r}: 'eigen' or 'ynnpack'")
  _cpu_convolutions = kind


def check_impl(impl: str, fast: str, plain: str, setting: str) -> str:
  """Validates a model's implementation name (`AUTO`, `fast` or `plain`)."""
  if impl in (AUTO, fast, plain):
    return impl
  from jaxdl.configs import ConfigError  # pylint: disable=g-import-not-at-top
  raise ConfigError(f"unknown {setting.rsplit('.', 1)[-1]} {impl!r}: choose "
                    f"'{AUTO}' (the fast path on CPU only), '{fast}' or '{plain}' "
                    f"({setting}=...)")


def _holds_jvp(x: Any) -> bool:
  while isinstance(x, jax.core.Tracer):
    if isinstance(x, ad.JVPTracer):
      return True
    # LinearizeTracer (reverse mode over forward mode) keeps its primal;
    # BatchTracer (vmap) its value.
    x = getattr(x, "primal", getattr(x, "val", None))
  return False


def forward_mode(*trees: Any) -> bool:
  """Whether any array in `trees` is being differentiated in forward mode."""
  return any(_holds_jvp(leaf) for leaf in jax.tree.leaves(trees))


def dispatch(impl: str, fast: Callable, plain: Callable, *args: Any,
             fast_name: str = "fast") -> Any:
  """`fast(*args)` or `plain(*args)` for `impl` (see the module docstring).

  `fast` and `plain` compute the same function (tested: values and
  gradients). `fast_name` is the name that forces the fast path ('fast',
  'fused'); any other name but `AUTO` means the plain form.
  """
  if forward_mode(args):
    return plain(*args)
  if impl == AUTO:
    return lax.platform_dependent(*args, cpu=fast, default=plain)
  return fast(*args) if impl == fast_name else plain(*args)


# Host-side choices, by the backend the train step runs on.
CPU_BATCHES_PER_TRANSFER = 16  # MNIST MLP: 1.12x the device-resident rate (K=1: 0.69-0.80)


def batches_per_transfer(value: int | str, backend: str) -> int:
  """The pipeline's K for `config.batches_per_transfer` on `backend`:
  'auto' is CPU_BATCHES_PER_TRANSFER on CPU and 1 elsewhere (an accelerator's
  transfers overlap its steps already). The run is the same for any K."""
  if value == AUTO:
    return CPU_BATCHES_PER_TRANSFER if backend == "cpu" else 1
  return int(value)


# XLA:CPU compiles with LLVM at -O3. A model's init runs once, yet compiling it
# took 3-6x its -O1 time (a small ResNet's: 5.8 s vs 1.0 s; a CNN's 3.0 vs
# 0.9); -O1 gives the same values bit for bit (tests/test_engine.py), -O0
# does not (1 ulp). Accelerators keep their defaults.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_compiler_options(backend: str) -> dict[str, Any] | None:
  """`jax.jit(..., compiler_options=)` for a run-once program (the engine's
  init) on `backend`: CPU_INIT_COMPILER_OPTIONS on CPU, None elsewhere."""
  return dict(CPU_INIT_COMPILER_OPTIONS) if backend == "cpu" else None


# Implementation fields of the models, and the names that force a fast path.
IMPL_FIELDS = {"conv_impl": "fast", "scan_impl": "fused"}


def platform_neutral(tree: Any) -> Any:
  """`tree` (a config as nested dicts) with every forced fast path ('fast',
  'fused' under an IMPL_FIELDS key) replaced by 'auto'.

  The same function and parameters, and on CPU the same lowering; elsewhere
  the plain one. The tools (evaluate, predict, export) read a run's saved
  config through this, so a run that was trained with a forced CPU path
  (configs before 'auto') exports plain CUDA/TPU code.
  """
  if isinstance(tree, dict):
    return {k: (AUTO if k in IMPL_FIELDS and IMPL_FIELDS[k] == v else platform_neutral(v))
            for k, v in tree.items()}
  if isinstance(tree, list):
    return [platform_neutral(v) for v in tree]
  return tree
