"""The absl main shared by every experiment in `experiments/`.

    python -m experiments.mnist_mlp --flagfile=experiments/flagfiles/mnist_mlp.flags \
        --workdir=runs/mnist --config.optimizer.learning_rate=3e-3

`--config` is an ml_collections config file (each experiment has a default);
any field can be overridden as `--config.a.b=value` after the flagfile. A bad
flag or value, a missing dataset or an unwritable workdir is one line on
stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

EXIT_USAGE = 2
EXIT_ERROR = 1


def enable_compilation_cache(cache_dir: str | None) -> str | None:
  """JAX's persistent compilation cache: a warm cache skips XLA compiles.

  `cache_dir` '' -> $JAXDL_COMPILATION_CACHE or ~/.cache/jaxdl/xla; 'none' -> off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if cache_dir == "none":
    return None
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # Measured here (jax 0.10.2): with the persistent cache, multi-process CPU
    # runs deadlock in their first collectives (one process loads a cached
    # executable while the other compiles). CPU clusters are for tests; skip it.
    return None
  cache_dir = cache_dir or os.environ.get("JAXDL_COMPILATION_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxdl", "xla")
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError:
    return None  # a read-only home must not stop training; compiles just aren't cached
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return cache_dir


def _define_flags(default_config: str) -> None:
  if "workdir" in flags.FLAGS:
    return
  config_flags.DEFINE_config_file("config", default_config,
                                  "ml_collections config file", lock_config=True)
  flags.DEFINE_string("workdir", None, "the run's folder; a second launch resumes it")
  flags.DEFINE_string("compilation_cache", "",
                      "persistent XLA cache folder ('' = ~/.cache/jaxdl/xla, 'none' = off)")
  flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port")
  flags.DEFINE_integer("num_processes", None, "jax.distributed process count")
  flags.DEFINE_integer("process_id", None, "jax.distributed process id")
  flags.DEFINE_integer("num_cpu_devices", None, "simulated CPU devices in this process")
  flags.DEFINE_bool("tune_cpu", True, "jaxdl.ops.configure_cpu(): XLA's multi-threaded "
                    "convolutions, a malloc that keeps freed memory and synchronous CPU "
                    "dispatch (see docs/performance.md)")


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: {msg} (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _main(argv) -> None:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value",
          file=sys.stderr)
    sys.exit(EXIT_USAGE)
  FLAGS = flags.FLAGS
  if not FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  if FLAGS.tune_cpu:
    from jaxdl import ops  # pylint: disable=g-import-not-at-top
    ops.configure_cpu()  # before jax starts its backends
  import jax  # pylint: disable=g-import-not-at-top
  from jaxdl import parallel  # pylint: disable=g-import-not-at-top
  parallel.patient_cpu_collectives()
  if FLAGS.num_cpu_devices:
    jax.config.update("jax_num_cpu_devices", FLAGS.num_cpu_devices)
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  enable_compilation_cache(FLAGS.compilation_cache)
  from jaxdl.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from jaxdl.configs import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxdl.data.errors import DataError  # pylint: disable=g-import-not-at-top
  from jaxdl.lock import WorkdirLockedError  # pylint: disable=g-import-not-at-top
  from jaxdl.train.loop import NonFiniteError, WorkdirError, train_and_evaluate  # pylint: disable=g-import-not-at-top
  try:
    summary = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, DataError, WorkdirError, CheckpointError, NonFiniteError,
          WorkdirLockedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_ERROR)
  if jax.process_index() == 0:
    ev = " ".join(f"{k} {v:.4f}" for k, v in sorted(summary["eval"].items()))
    print(f"done: step {summary['final_step']} | {ev} | {summary['wall_time_s']:.1f} s | "
          f"{summary['examples_per_sec']:,.0f} examples/s | workdir {os.path.abspath(FLAGS.workdir)}")


def run(experiment_file: str, config_name: str) -> None:
  """Entry point: `run(__file__, 'mnist_mlp')` from `experiments/<name>.py`."""
  default = os.path.join(os.path.dirname(os.path.abspath(experiment_file)),
                         "configs", f"{config_name}.py")
  _define_flags(default)
  app.run(_main, flags_parser=_parse)
