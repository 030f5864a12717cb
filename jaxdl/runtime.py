"""Process setup, once per program and before jax starts its backends.

`setup()` is what every entry point (the experiments, `jaxdl.evaluate`,
`jaxdl.predict`, `jaxdl.export`) calls first:

  1. `jax.distributed` when the flags, the environment or the cluster ask for
     it (`distributed_request`): explicit coordinator flags or JAXDL_*
     variables, SLURM or Open MPI with more than one task, a multi-host Cloud
     TPU (jax's own detection: `jax.distributed.initialize()` with no
     arguments finds the other hosts from the TPU metadata);
  2. the CPU setup, only when the computation will run on the CPU
     (`runs_on_cpu`): `jaxdl.runtime.configure_cpu()` (XLA:CPU flags, malloc,
     synchronous dispatch) and patient CPU collectives. A GPU or TPU host gets
     none of it;
  3. JAX's persistent compilation cache.

Research code that builds its own program can call `setup()` too, or none of
it: models and the train step are correct without any of this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import sys

# XLA:CPU runs the collectives of N simulated devices on threads that meet at a
# rendezvous and aborts the process when one is late past a termination timeout.
# On a loaded 2-core machine a device thread can be late by tens of seconds
# (seen here: "Termination timeout ... exceeded", jaxlib 0.10.2), so jaxdl waits
# longer; a real hang is still caught by the distributed heartbeat.
PATIENT_CPU_COLLECTIVES = ("--xla_cpu_collective_call_terminate_timeout_seconds=1800",
                           "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300",
                           "--xla_cpu_collective_timeout_seconds=1800")


def add_xla_flags(new_flags, environ=os.environ) -> None:
  """Appends `new_flags` to XLA_FLAGS, except those whose name is set there
  already (a value the user chose wins).

  Takes effect only before jax starts its backends (the first computation).
  """
  flags = environ.get("XLA_FLAGS", "").split()
  names = {f.split("=")[0] for f in flags}
  flags += [f for f in new_flags if f.split("=")[0] not in names]
  environ["XLA_FLAGS"] = " ".join(flags)


def patient_cpu_collectives(environ=os.environ) -> None:
  """Adds PATIENT_CPU_COLLECTIVES to XLA_FLAGS (keeping any value set there)."""
  add_xla_flags(PATIENT_CPU_COLLECTIVES, environ)


# XLA:CPU (jax 0.10) routes convolutions to YNNPACK fusions by default; those
# run on one thread. This keeps them on XLA's multi-threaded Eigen kernels.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

# CPU tuning (`configure_cpu`). `tune_malloc()` removes a CPU cost that is not
# in the ops themselves: XLA:CPU allocates each executable's temporaries per run with posix_memalign; glibc
# serves requests over 32 MiB with a fresh mmap and returns them with munmap,
# so every train step page-faults its whole temp arena anew (~46k faults/step
# for the CIFAR CNN, ~90 ms of kernel time on this VM). No mmap and no trimming
# keep that memory mapped. `configure_cpu()` also turns off jax's asynchronous
# CPU dispatch, so that a step runs on (and allocates from) the calling
# thread: with async dispatch it runs on a PjRt worker thread, whose malloc
# arena's heaps are capped at 64 MiB, so the big temporaries went back to mmap
# (unless every thread shared one arena, whose lock then slowed the small
# steps: MNIST MLP 0.61 vs 0.48 ms; see docs/performance.md). The data
# pipeline's grain threads still prepare batches while a step runs.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def tune_malloc() -> bool:
  """Keeps freed heap memory mapped (glibc only); True if applied.

  Equivalent environment, set before Python starts: MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=<large>. Cost: freed memory is not returned to the
  OS (peak RSS stays). Threads keep their own malloc arenas (see the module
  comment above for why the steps' big buffers come from the main one).
  """
  name = ctypes.util.find_library("c")
  if not name:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  ok = mallopt(_M_MMAP_MAX, 0) == 1
  ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
  return bool(ok)


def configure_cpu(*, eigen_convolutions: bool = True,
                  malloc: bool = True, sync_dispatch: bool = True) -> bool:
  """Applies CPU_XLA_FLAGS (appended to XLA_FLAGS), `tune_malloc()` and
  synchronous CPU dispatch (`jax_cpu_enable_async_dispatch=False`).

  Must run before jax initialises its backends (the first computation or
  `jax.devices()`); returns False, changing nothing, when that has happened.
  Flags already present in XLA_FLAGS are not repeated.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    return False
  if eigen_convolutions:
    add_xla_flags(CPU_XLA_FLAGS)
  from jaxdl.ops import platform  # pylint: disable=g-import-not-at-top
  platform.set_cpu_convolutions(
      platform.convolutions_in(os.environ.get("XLA_FLAGS", "")))
  if malloc:
    tune_malloc()
  if sync_dispatch:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True


def _accelerator_plugins() -> list[str]:
  """Installed PJRT plugins for accelerators (CUDA, ROCm, TPU, ...)."""
  names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
    names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  if importlib.util.find_spec("libtpu") is not None:
    names.append("libtpu")
  return sorted(set(names))


def runs_on_cpu(environ=os.environ, jax_platforms: str | None = None) -> bool | None:
  """Whether jax's default backend will be the CPU, known without starting it.

  True when JAX_PLATFORMS / `jax_platforms` names cpu first, or no
  accelerator plugin is installed; False when it names another platform;
  None when accelerator plugins are installed and nothing says which is used
  (then only starting the backends tells).
  """
  if jax_platforms is None:
    import jax  # pylint: disable=g-import-not-at-top
    jax_platforms = jax.config.jax_platforms
  chosen = (jax_platforms or environ.get("JAX_PLATFORMS", "")).strip()
  if chosen:
    return chosen.split(",")[0].strip() == "cpu"
  return None if _accelerator_plugins() else True


@dataclasses.dataclass(frozen=True)
class DistributedRequest:
  """How to call `jax.distributed.initialize` (None fields: jax detects them)."""
  reason: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int_env(environ, name: str) -> int | None:
  value = environ.get(name)
  return int(value) if value not in (None, "") else None


def _running_on_cloud_tpu_vm() -> bool:
  try:
    from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(running_in_cloud_tpu_vm)


def distributed_request(coordinator_address: str | None = None,
                        num_processes: int | None = None,
                        process_id: int | None = None,
                        environ=os.environ,
                        on_cloud_tpu_vm: bool | None = None
                        ) -> DistributedRequest | None:
  """Whether (and how) this process joins a multi-process run.

  Explicit arguments win; then JAXDL_COORDINATOR / JAXDL_NUM_PROCESSES /
  JAXDL_PROCESS_ID; then a cluster that jax's `initialize()` detects by
  itself: SLURM (`SLURM_NTASKS` > 1), Open MPI (`OMPI_COMM_WORLD_SIZE` > 1),
  a Cloud TPU VM (single- or multi-host: jax reads the TPU metadata).
  """
  coordinator_address = coordinator_address or environ.get("JAXDL_COORDINATOR")
  if num_processes is None:
    num_processes = _int_env(environ, "JAXDL_NUM_PROCESSES")
  if process_id is None:
    process_id = _int_env(environ, "JAXDL_PROCESS_ID")
  if coordinator_address:
    return DistributedRequest("flags", coordinator_address, num_processes, process_id)
  if "SLURM_JOB_ID" in environ and (_int_env(environ, "SLURM_NTASKS") or 1) > 1:
    return DistributedRequest("slurm")
  if (_int_env(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return DistributedRequest("openmpi")
  if on_cloud_tpu_vm is None:
    on_cloud_tpu_vm = _running_on_cloud_tpu_vm()
  if on_cloud_tpu_vm:
    return DistributedRequest("cloud_tpu")
  return None


# A lost process is noticed by the others within this many seconds (jax's
# default is 100 s); they then stop instead of hanging. `--heartbeat_timeout`.
HEARTBEAT_TIMEOUT_S = 30


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> bool:
  """Starts `jax.distributed` if `distributed_request` says so; True if it did."""
  request = distributed_request(coordinator_address, num_processes, process_id)
  if request is None:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=request.coordinator_address,
                             num_processes=request.num_processes,
                             process_id=request.process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  return True


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


@dataclasses.dataclass(frozen=True)
class Setup:
  """What `setup()` did."""
  distributed: bool
  cpu_tuned: bool
  compilation_cache: str | None


class _DropReraisedOrbaxErrors(logging.Filter):
  """orbax logs a traceback for a failed async save and then re-raises it to us;
  jaxdl reports it as one line, so the logged copy is dropped. So is its
  warning for each checkpoint saved between evaluations (no metrics to rank
  it by: jaxdl keeps it as a recent one, by design)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if record.levelno >= logging.ERROR and record.exc_info:
      return False
    return not str(record.msg).startswith("Requested `tracked_metric`")


def quiet_checkpoint_echoes() -> None:
  """Process setup for checkpoint errors (jaxdl.checkpoint reports each as one
  line): drops orbax's logged copy of an error it re-raises, and the "Event
  loop is closed" echoes of a failed tensorstore op's siblings."""
  absl_log, previous = logging.getLogger("absl"), sys.unraisablehook
  if not any(isinstance(f, _DropReraisedOrbaxErrors) for f in absl_log.filters):
    absl_log.addFilter(_DropReraisedOrbaxErrors())
  if not getattr(previous, "jaxdl_quiet", False):
    def hook(args):
      if not (args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed"):
        previous(args)
    hook.jaxdl_quiet = True
    sys.unraisablehook = hook


def setup(*, coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
          num_cpu_devices: int | None = None, compilation_cache: str | None = "",
          tune_cpu: bool = True) -> Setup:
  """The program's process setup (module docstring); call it before any jax
  computation. `tune_cpu=False` leaves jax's CPU defaults."""
  import jax  # pylint: disable=g-import-not-at-top
  quiet_checkpoint_echoes()
  on_cpu = runs_on_cpu()
  tuned = False
  if on_cpu:
    patient_cpu_collectives()
    if tune_cpu:
      tuned = configure_cpu()
    else:  # the user's own XLA_FLAGS decide the CPU convolution kernels
      from jaxdl.ops import platform  # pylint: disable=g-import-not-at-top
      platform.set_cpu_convolutions(
          platform.convolutions_in(os.environ.get("XLA_FLAGS", "")))
  if num_cpu_devices:
    jax.config.update("jax_num_cpu_devices", num_cpu_devices)
  distributed = initialize_distributed(coordinator_address, num_processes, process_id,
                                       heartbeat_timeout_s)
  cache = enable_compilation_cache(compilation_cache)
  return Setup(distributed, tuned, cache)
