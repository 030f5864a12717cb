"""Runs N local processes of an experiment on 127.0.0.1, M CPU devices each.

    python scripts/launch_local.py --num_processes=2 --devices_per_process=2 \
        experiments.mnist_mlp --flagfile=experiments/flagfiles/mnist_mlp.flags --workdir=runs/mp

Each process gets `--coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=i --num_cpu_devices=M` after the experiment's own arguments; its
output is forwarded line by line with a `[i]` prefix. If one process fails,
the others are stopped and the launcher exits with that process's code.
This is how jaxdl proves multi-controller training on one machine; on a real
cluster each host runs the experiment itself (see the README).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _forward(proc: subprocess.Popen, prefix: str, out) -> None:
  for line in iter(proc.stdout.readline, ""):
    out.write(f"{prefix} {line}")
    out.flush()


def launch(module: str, args: list[str], num_processes: int, devices_per_process: int,
           port: int | None = None, env: dict | None = None, timeout: float | None = None,
           out=None) -> int:
  out = out or sys.stdout
  port = port or free_port()
  procs = []
  for i in range(num_processes):
    cmd = [sys.executable, "-m", module, *args,
           f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
           f"--process_id={i}", f"--num_cpu_devices={devices_per_process}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                         start_new_session=True)
    threading.Thread(target=_forward, args=(p, f"[{i}]", out), daemon=True).start()
    procs.append(p)
  deadline = None if timeout is None else time.monotonic() + timeout
  rc = 0

  def _stop(signum, _frame):
    raise SystemExit(128 + signum)

  previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, rc = failed[0]
        out.write(f"[launcher] process {i} exited with {rc}; stopping the others\n")
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        out.write("[launcher] timed out; stopping all processes\n")
        rc = 124
        break
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
      try:
        p.wait(timeout=20)
      except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    time.sleep(0.2)  # let the forwarding threads drain
    for s, h in previous.items():
      signal.signal(s, h)
  return rc


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=1)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--timeout", type=float, default=None, help="seconds")
  p.add_argument("module", help="e.g. experiments.mnist_mlp")
  args, rest = p.parse_known_args()
  return launch(args.module, rest, args.num_processes, args.devices_per_process,
                args.port or None, timeout=args.timeout)


if __name__ == "__main__":
  sys.exit(main())
