"""Meshes, shardings and multi-process setup: the one place that knows devices.

Data parallelism is one 1-D `('data',)` mesh over every device of every
process: batches are sharded along it, the train state is replicated. The same
code runs on 1 CPU, N simulated CPU devices and many processes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


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


def serial_dispatch() -> bool:
  """Whether to wait for each computation before dispatching the next.

  True on CPU with several devices (simulated ones, or several processes).
  Measured here (jaxlib 0.10.2) on a loaded 2-core machine, with JAX's usual
  asynchronous dispatch: 2 processes x 2 CPU devices deadlocked in a train or
  eval step in 4 of 4 runs, 1 process x 4 devices in 2 of 4 (every thread
  blocked, no CPU used); waiting for each step first, 0 of 8 and 0 of 4.
  Simulated CPU devices are for tests, so the lost overlap costs nothing that
  matters; accelerators keep asynchronous dispatch (on CPU,
  `jaxdl.ops.configure_cpu()` makes every dispatch synchronous anyway).
  """
  return jax.default_backend() == "cpu" and jax.device_count() > 1


def make_mesh(devices: list | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def block_sharding(mesh: Mesh) -> NamedSharding:
  """A block of K batches [K, batch, ...]: the batch axis sharded along 'data'."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def global_block(local_block: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process [K, local batch, ...] block -> global arrays (see pipeline)."""
  return _global_arrays(local_block, block_sharding(mesh))


def _global_arrays(local: dict[str, np.ndarray], sharding: NamedSharding
                   ) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global arrays sharded along 'data'."""
  return _global_arrays(local_batch, batch_sharding(mesh))


def to_host(tree: Any) -> Any:
  """Fully replicated arrays -> numpy (works in multi-process runs)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))
                      if isinstance(x, jax.Array) else np.asarray(x), tree)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_count: int | None = None,
                           heartbeat_timeout_s: int = 30) -> bool:
  """Starts `jax.distributed` when asked by flags or the cluster environment.

  Explicit arguments win; otherwise JAXDL_COORDINATOR / JAXDL_NUM_PROCESSES /
  JAXDL_PROCESS_ID; otherwise, on SLURM or a TPU/GPU cluster,
  `jax.distributed.initialize()` auto-detects. Returns True if initialised.
  """
  coordinator_address = coordinator_address or os.environ.get("JAXDL_COORDINATOR")
  if num_processes is None and "JAXDL_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAXDL_NUM_PROCESSES"])
  if process_id is None and "JAXDL_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAXDL_PROCESS_ID"])
  if local_device_count:
    jax.config.update("jax_num_cpu_devices", local_device_count)
  if coordinator_address:
    # A lost process is noticed by the others within the heartbeat timeout
    # (jax's default is 100 s); they then stop instead of hanging.
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    return True
  if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
    return True
  return False
