"""Helpers for the fault-injection tests: launch an experiment as users do
(a subprocess), optionally under a file-size limit or with dataset hashes
registered for generated files, and read back what the workdir holds."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from runner import NO_PLOTS  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[2]
PY = sys.executable
TMP_MARKER = ".orbax-checkpoint-tmp"


def launch_cmd(module: str, *args, patch: dict | None = None,
               fsize: int | None = None) -> list[str]:
  """`python -m experiments.<module> args`, through a small wrapper when needed.

  patch: {"module.path:DICT_NAME": {key: value}} updates applied first (e.g.
  the sha256 of a generated dataset file). fsize: RLIMIT_FSIZE in bytes (a
  write past it fails with EFBIG, like a full disk; SIGXFSZ is ignored so it
  does not kill the process).
  """
  args = (*args, NO_PLOTS)  # (no test here looks at the figures)
  if not patch and fsize is None:
    return [PY, "-m", f"experiments.{module}", *args]
  code = ["import importlib, runpy, sys"]
  if fsize is not None:
    code += ["import resource, signal",
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)",
             f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))"]
  for target, mapping in (patch or {}).items():
    mod, name = target.split(":")
    code.append(f"getattr(importlib.import_module({mod!r}), {name!r}).update({mapping!r})")
  code += [f"sys.argv = [{module!r}] + sys.argv[1:]",
           f"runpy.run_module('experiments.{module}', run_name='__main__')"]
  return [PY, "-c", "\n".join(code), *args]


def _env(env: dict | None) -> dict:
  extra, env = env or {}, dict(os.environ)
  env.pop("JAXDL_FAULT_KILL", None)  # only where a test asks for it
  env.update(extra)
  env.setdefault("JAXDL_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla"))
  return env


def run(module: str, *args, env: dict | None = None, timeout: int = 300, **kw):
  """Runs to completion; returns the CompletedProcess (text stdout/stderr)."""
  return subprocess.run(launch_cmd(module, *args, **kw), cwd=REPO, env=_env(env),
                        capture_output=True, text=True, timeout=timeout)


def start(module: str, *args, env: dict | None = None, **kw) -> subprocess.Popen:
  return subprocess.Popen(launch_cmd(module, *args, **kw), cwd=REPO, env=_env(env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())


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
