"""SIGTERM and SIGINT as a request to stop at a step, then save and exit.

Cluster schedulers (SLURM, Kubernetes, spot VMs, TPU maintenance) send
SIGTERM and, after a grace period, SIGKILL. `Watch` turns the first signal
into a flag that the training loop reads after each step (`stop_at`); the
loop then saves that step synchronously and exits with 128 + the signal
number (143 for SIGTERM, 130 for SIGINT), so that a scheduler sees an
unfinished job and requeues it. A second signal ends the process at once
with the default action: committed checkpoints are never touched (orbax
commits a step with one rename).

Several processes (`jax.distributed`) must save the same step. JAX's
preemption service catches SIGTERM itself (its notifier is installed by
`jax.distributed.initialize`) and agrees on a step with the coordinator;
`multihost_utils.reached_preemption_sync_point(step)` is True on every
process at that step. So with several processes SIGTERM is left to JAX, and
SIGINT is forwarded to it as a SIGTERM to this process.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """The run stopped at `step` on a signal and saved it (or, when the save
  did not finish within the grace period, kept `kept`)."""

  def __init__(self, step: int, signum: int, saved: bool = True, kept: str = ""):
    self.step, self.signum, self.saved = step, signum, saved
    self.exit_code = 128 + signum
    if saved:
      msg = f"preempted at step {step}; checkpoint saved; relaunch to resume"
    else:
      msg = (f"preempted at step {step}; its checkpoint did not finish within "
             f"config.preemption_grace_s; kept the previous one ({kept}); relaunch "
             "to resume")
    super().__init__(msg)


class Watch:
  """Context manager: SIGTERM / SIGINT handlers for the life of a run.
  `release` (the workdir lock's) is called before a grace-period exit."""

  def __init__(self, release=lambda: None):
    self._release = release
    self.signum: int | None = None
    self.since: float | None = None  # time.monotonic() of the first signal
    self._multi = jax.process_count() > 1
    self._old: dict[int, object] = {}

  def __enter__(self) -> "Watch":
    if threading.current_thread() is threading.main_thread():
      sigs = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
      for sig in sigs:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self.signum is not None:  # a second signal: stop now, as by default
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signum, self.since = signum, time.monotonic()
    if self._multi:  # JAX's notifier agrees on the step with the other processes
      os.kill(os.getpid(), signal.SIGTERM)

  def stop_at(self, step: int) -> bool:
    """True if the run must stop after `step` (the same step on every process)."""
    if self._multi:
      if multihost_utils.reached_preemption_sync_point(step):
        if self.signum is None:  # the notice reached another process
          self.signum, self.since = signal.SIGTERM, time.monotonic()
        return True
      return False
    return self.signum is not None

  def await_save(self, ckpt, step: int, grace_s: float) -> None:
    """Waits for `ckpt`'s save in flight. Past `grace_s` seconds since the
    signal (0: no limit) it gives up: says so, releases the lock and exits at
    once, keeping the checkpoints already committed."""
    if ckpt.wait(timeout=self.time_left(grace_s)):
      return
    e = Preempted(step, self.signum, saved=False, kept=ckpt.latest_committed())
    print(e, flush=True)
    self._release()
    os._exit(e.exit_code)  # pylint: disable=protected-access  (orbax's writer threads)

  def time_left(self, grace_s: float) -> float | None:
    """Seconds of the grace period left (None: no limit)."""
    if not grace_s or self.since is None:
      return None
    return max(0.0, grace_s - (time.monotonic() - self.since))
