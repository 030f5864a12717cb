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
  flags.DEFINE_bool("tune_cpu", True, "on a CPU backend only, jaxdl.runtime.configure_cpu(): "
                    "XLA's multi-threaded convolutions, a malloc that keeps freed memory "
                    "and synchronous CPU dispatch (see docs/performance.md)")


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
  from jaxdl import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(coordinator_address=FLAGS.coordinator_address,
                num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                num_cpu_devices=FLAGS.num_cpu_devices,
                compilation_cache=FLAGS.compilation_cache, tune_cpu=FLAGS.tune_cpu)
  import jax  # pylint: disable=g-import-not-at-top
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
