"""Running experiments as users do: `python -m experiments.<name> ...` in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

from conftest import REPO

PY = sys.executable

# The figures drawn after training (matplotlib, and a pass over the test split
# for the confusion matrix) cost a launch about 1.5 s: only the tests that look
# at them ask for them (plots=True).
NO_PLOTS = "--config.plots=False"


def launch_cmd(module: str, *args, patch: dict | None = None, fsize: int | None = None,
               plots: bool = False) -> list[str]:
  """`python -m experiments.<module> args`, through a small wrapper when needed.

  patch: {"module.path:DICT_NAME": {key: value}} updates applied first (e.g.
  the sha256 of a generated dataset file; the reading code is unchanged).
  fsize: RLIMIT_FSIZE in bytes (a write past it fails with EFBIG, like a full
  disk; SIGXFSZ is ignored so it does not kill the process).
  """
  args = args if plots else (*args, NO_PLOTS)
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


def launch_env(env: dict | None = None) -> dict:
  """This process's environment for a launch, with `env` on top (the fault
  hook only where a test asks for it; the session's compilation cache)."""
  out = dict(os.environ)
  out.pop("JAXDL_FAULT_KILL", None)
  out.update(env or {})
  out.setdefault("JAXDL_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla"))
  return out


def run_experiment(module, *args, env=None, timeout=600, **kw):
  """Runs `launch_cmd(module, *args, **kw)` to completion (text output)."""
  return subprocess.run(launch_cmd(module, *args, **kw), cwd=REPO, env=launch_env(env),
                        capture_output=True, text=True, timeout=timeout)


def summary(workdir):
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())
