"""The absl main shared by every experiment in `experiments/`.

    python -m experiments.mnist_mlp --flagfile=experiments/flagfiles/mnist_mlp.flags \
        --workdir=runs/mnist --config.optimizer.learning_rate=3e-3

`--config` is an ml_collections config file (each experiment has a default);
any field can be overridden as `--config.a.b=value` after the flagfile. A bad
flag or value, a missing dataset or an unwritable workdir is one line on
stderr and a non-zero exit (2 for the command line itself: an unknown flag or
config field, with the closest field name, an unreadable --flagfile or
--config file).
"""

from __future__ import annotations

import difflib
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

EXIT_USAGE = 2
EXIT_ERROR = 1


def _define_flags(default_config: str) -> None:
  if "workdir" in flags.FLAGS:
    return
  from jaxdl.runtime import HEARTBEAT_TIMEOUT_S  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", default_config,
                                  "ml_collections config file", lock_config=True)
  flags.DEFINE_string("workdir", None, "the run's folder; a second launch resumes it")
  flags.DEFINE_string("compilation_cache", "",
                      "persistent XLA cache folder ('' = ~/.cache/jaxdl/xla, 'none' = off)")
  flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port")
  flags.DEFINE_integer("num_processes", None, "jax.distributed process count")
  flags.DEFINE_integer("process_id", None, "jax.distributed process id")
  flags.DEFINE_integer("heartbeat_timeout", HEARTBEAT_TIMEOUT_S,
                       "seconds without a heartbeat before jax.distributed declares a "
                       "process lost and stops the others")
  flags.DEFINE_integer("num_cpu_devices", None, "simulated CPU devices in this process")
  flags.DEFINE_bool("tune_cpu", True, "on a CPU backend only, jaxdl.runtime.configure_cpu(): "
                    "XLA's multi-threaded convolutions, a malloc that keeps freed memory "
                    "and synchronous CPU dispatch (see docs/performance.md)")


def _unknown_config_field(argv, default_config: str) -> str | None:
  """'unknown config field ...' for the first `--config.a.b=...` in `argv` that
  names no field of the config, with the closest existing name; else None."""
  from ml_collections.config_flags import config_flags as cf  # pylint: disable=g-import-not-at-top
  path = default_config
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
  try:
    config = cf.ConfigFileFlagParser("config", lock_config=False).parse(path)
  except Exception:  # pylint: disable=broad-except
    return None  # not a config problem this can name
  for arg in argv:
    m = re.match(r"^--?(?:no)?config\.([^=\s]+)", arg)
    if not m:
      continue
    node, parts = config, m.group(1).split(".")
    for i, part in enumerate(parts):
      key = re.sub(r"\[\d+\]$", "", part)  # a tuple element: --config.a[0]=...
      if hasattr(node, "keys") and key in node.keys():
        node = node[key]
        continue
      name = ".".join(parts[:i] + [key])
      close = difflib.get_close_matches(key, list(node.keys()), n=1) if hasattr(
          node, "keys") else []
      hint = (f"did you mean {'.'.join(parts[:i] + close)!r}?" if close
              else "see --helpfull")
      return f"unknown config field {name!r} ({hint})"
  return None


def _file_error(e: Exception) -> tuple[str, str] | None:
  """(reason, path) from the "[Errno N] reason: 'path'" in `e`'s message."""
  m = re.search(r"\[Errno \d+\] ([^:]+): '(.*)'", str(e))
  return (m.group(1), m.group(2)) if m else None


def _config_load_error(e: OSError) -> str:
  """The line for a --config=FILE that failed to load (ml_collections raises
  it when the config is first used: by a --config.a=... override, or later)."""
  f = _file_error(e)
  return (f"cannot load --config={f[1]} ({f[0]})" if f else
          (str(e).splitlines() or [type(e).__name__])[0])


def _usage_error(e: Exception, argv, default_config: str) -> str | None:
  """The one line for a command line absl or ml_collections refused, or None
  for an error that is not about the command line."""
  if isinstance(e, OSError):  # while parsing: only the --config file raises it
    return _config_load_error(e)
  if isinstance(e, flags.CantOpenFlagFileError) and (f := _file_error(e)):
    return f"cannot read --flagfile={f[1]} ({f[0]})"
  try:
    argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error:
    pass
  field = _unknown_config_field(argv, default_config)
  if field:
    return field
  if isinstance(e, flags.Error):
    msg = str(e).replace("ERROR:: ", "").splitlines()
    return f"{msg[0] if msg else type(e).__name__} (see --helpfull)"
  return None


def _exit_usage(e: Exception, argv, default_config: str) -> None:
  msg = _usage_error(e, argv, default_config)
  if msg is None:
    raise e
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def _parser(default_config: str):
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
      _exit_usage(e, argv, default_config)
  return parse


def _main(argv) -> None:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value",
          file=sys.stderr)
    sys.exit(EXIT_USAGE)
  FLAGS = flags.FLAGS
  try:
    FLAGS.config.keys()  # a --config=FILE that failed to load raises only when used
  except OSError as e:
    print(f"error: {_config_load_error(e)}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  if not FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  from jaxdl import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(coordinator_address=FLAGS.coordinator_address,
                num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                heartbeat_timeout_s=FLAGS.heartbeat_timeout,
                num_cpu_devices=FLAGS.num_cpu_devices,
                compilation_cache=FLAGS.compilation_cache, tune_cpu=FLAGS.tune_cpu)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxdl.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from jaxdl.configs import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxdl.data.errors import DataError  # pylint: disable=g-import-not-at-top
  from jaxdl.lock import WorkdirLockedError  # pylint: disable=g-import-not-at-top
  from jaxdl.preemption import Preempted  # pylint: disable=g-import-not-at-top
  from jaxdl import evaluate, plots  # pylint: disable=g-import-not-at-top
  from jaxdl.train.loop import NonFiniteError, WorkdirError, train  # pylint: disable=g-import-not-at-top
  try:
    summary, run, state = train(FLAGS.config, FLAGS.workdir)
    # The figures, after training: curves.png, and the confusion matrix of
    # classifiers (an extra pass over the test split); not for a finished run
    # relaunched.
    if FLAGS.config.plots and summary["resumed_from"] != summary["final_step"]:
      plots.write_run_plots(run.workdir, evaluate.run_confusion(run, state),
                            shown=run.task.shown_metrics)
  except (ConfigError, DataError, WorkdirError, CheckpointError, NonFiniteError,
          WorkdirLockedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_ERROR)
  except Preempted as e:  # 143 (SIGTERM) / 130 (SIGINT): the job did not finish
    print(str(e), flush=True)
    sys.exit(e.exit_code)
  if jax.process_index() == 0:
    ev = " ".join(f"{k} {v:.4f}" for k, v in sorted(summary["eval"].items()))
    print(f"done: step {summary['final_step']} | {ev} | {summary['wall_time_s']:.1f} s | "
          f"{summary['examples_per_sec']:,.0f} examples/s | workdir {os.path.abspath(FLAGS.workdir)}")


def run(experiment_file: str, config_name: str) -> None:
  """Entry point: `run(__file__, 'mnist_mlp')` from `experiments/<name>.py`."""
  default = os.path.join(os.path.dirname(os.path.abspath(experiment_file)),
                         "configs", f"{config_name}.py")
  try:
    # ml_collections reads the flagfiles and applies the --config.* overrides
    # here already, when no --config=FILE is given.
    _define_flags(default)
  except Exception as e:  # pylint: disable=broad-except
    _exit_usage(e, sys.argv, default)
  app.run(_main, flags_parser=_parser(default))
