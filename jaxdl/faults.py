"""Fault injection for the reliability tests (tests/reliability/): the training
loop calls `point(where, step)` after dispatching a step and after starting a
save; JAXDL_FAULT_KILL picks one of them and what happens there."""

from __future__ import annotations

import os
import signal

import jax


def point(where: str, step: int) -> None:
  """Test hook: JAXDL_FAULT_KILL='step:N' or 'save:N' SIGKILLs this process right
  after step N is dispatched, or right after the save of step N was started;
  'term:step:N' / 'int:save:N' send it SIGTERM / SIGINT there instead
  (JAXDL_FAULT_PROCESS=i: only process i)."""
  spec = os.environ.get("JAXDL_FAULT_KILL", "")
  sig, _, at = spec.partition(":") if spec.startswith(("term:", "int:")) else ("kill", "", spec)
  if at != f"{where}:{step}" or os.environ.get(
      "JAXDL_FAULT_PROCESS", str(jax.process_index())) != str(jax.process_index()):
    return
  os.kill(os.getpid(), {"kill": signal.SIGKILL, "term": signal.SIGTERM,
                        "int": signal.SIGINT}[sig])
