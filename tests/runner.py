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


def run_experiment(module, *args, env=None, patch_sha=None, timeout=600, plots=False):
  """Runs `python -m experiments.<module> args...`; `patch_sha` ({'jaxdl.data.sources.
  KNOWN_SHA256': {key: sha256}}) registers the sha256 of generated dataset files
  first (the reading code is unchanged)."""
  args = args if plots else (*args, NO_PLOTS)
  env = dict(os.environ, **(env or {}))
  env.setdefault("JAXDL_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla"))
  if patch_sha:
    updates = "; ".join(
        f"importlib.import_module({t.rsplit('.', 1)[0]!r}).{t.rsplit('.', 1)[1]}.update({v!r})"
        for t, v in patch_sha.items())
    code = ("import importlib, runpy, sys; "
            f"{updates}; "
            f"sys.argv = ['{module}'] + sys.argv[1:]; "
            f"runpy.run_module('experiments.{module}', run_name='__main__')")
    cmd = [PY, "-c", code, *args]
  else:
    cmd = [PY, "-m", f"experiments.{module}", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def summary(workdir):
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())
