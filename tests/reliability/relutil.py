"""Helpers for the fault-injection tests: launch an experiment as users do
(a subprocess), optionally under a file-size limit or with dataset hashes
registered for generated files, and read back what the workdir holds."""

from __future__ import annotations

import json
import pathlib
import subprocess

from runner import (PY, REPO, launch_cmd, launch_env, run_experiment,  # pylint: disable=g-bad-import-order
                    summary)  # noqa: F401 (the tests use it from here)

TMP_MARKER = ".orbax-checkpoint-tmp"


def run(module: str, *args, timeout: int = 300, **kw):
  """Runs to completion; returns the CompletedProcess (text stdout/stderr)."""
  return run_experiment(module, *args, timeout=timeout, **kw)


def start(module: str, *args, env: dict | None = None, **kw) -> subprocess.Popen:
  return subprocess.Popen(launch_cmd(module, *args, **kw), cwd=REPO, env=launch_env(env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_lines(proc) -> list[str]:
  return [l for l in proc.stderr.splitlines() if l.strip()]


def committed_steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def tmp_dirs(workdir) -> list[str]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(p.name for p in d.iterdir() if TMP_MARKER in p.name) if d.is_dir() else []


def metrics_records(workdir) -> list[tuple]:
  """(step, split, metrics) per line of metrics.jsonl; every line must parse."""
  out = []
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    out.append((r["step"], r["split"], r["metrics"]))
  return out
