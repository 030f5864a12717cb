"""SIGTERM / SIGINT (a scheduler's preemption notice, Ctrl-C): the run finishes
its step, saves it synchronously, writes its metrics, releases the lock, says
one line and exits 143 / 130; relaunched, it ends bit-identical to an
uninterrupted run. (Several processes: tests/test_scale_out.py.)"""

from __future__ import annotations

import importlib
import io
import re
import signal
import threading
import time

import numpy as np
import pytest

import relutil
from conftest import set_field
from jaxdl import preemption
from jaxdl.train import loop

# Two families, their experiment configs on the bundled digits (the data does
# not matter here; launches stay cheap): 100 steps, an (async) checkpoint every
# 10, evaluations every 50.
FAMILIES = {
    "mnist_mlp": {"batch_size": 64},
    "mnist_autoencoder": {"batch_size": 32},
}


def _config(name):
  c = importlib.import_module(f"experiments.configs.{name}").get_config()
  for k, v in dict(FAMILIES[name], dataset="digits", num_epochs=0, num_steps=100,
                   checkpoint_every=10, eval_every=50, log_every=10,
                   tensorboard=False).items():
    set_field(c, k, v)
  return c


def _moments(seed: int) -> list[tuple[str, str, int]]:
  """(signal, fault point, the step it stops at): 5 SIGTERM and 5 SIGINT,
  alternating, at random steps; one of each right after an async save was
  started ('save:N': the signal arrives during that save, the next step stops)."""
  rng = np.random.default_rng(seed)
  steps = sorted(rng.choice(np.arange(3, 97, 3), size=10, replace=False).tolist())
  out, stopped, need_save = [], 0, {"term", "int"}
  for i, s in enumerate(steps):
    sig = "term" if i % 2 == 0 else "int"
    save = s // 10 * 10
    if sig in need_save and save > stopped:
      need_save.discard(sig)
      out.append((sig, f"save:{save}", save + 1))
    else:
      out.append((sig, f"step:{s}", s))
    stopped = out[-1][2]
  assert not need_save, out
  return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sigterm_and_sigint_at_random_moments_lose_nothing(name, tmp_path, monkeypatch):
  assert threading.current_thread() is threading.main_thread()  # (signal handlers)
  config = _config(name)
  ref = loop.train_and_evaluate(config, str(tmp_path / "ref"), stream=io.StringIO())
  wd = tmp_path / "stopped"
  resumed = None
  for sig, at, want in _moments(seed=len(name)):
    monkeypatch.setenv("JAXDL_FAULT_KILL", f"{sig}:{at}")
    out = io.StringIO()
    with pytest.raises(preemption.Preempted) as e:
      loop.train_and_evaluate(config, str(wd), stream=out)
    assert e.value.step == want and e.value.saved, (at, str(e.value))
    assert e.value.exit_code == (143 if sig == "term" else 130)
    assert str(e.value) == f"preempted at step {want}; checkpoint saved; relaunch to resume"
    assert want in relutil.committed_steps(wd)                  # saved, committed
    assert not (wd / ".lock").exists()                           # released
    if resumed is not None:
      assert f"resumed from step {resumed}" in out.getvalue()   # no step lost
    resumed = want
  monkeypatch.delenv("JAXDL_FAULT_KILL")
  out = io.StringIO()
  got = loop.train_and_evaluate(config, str(wd), stream=out)
  assert f"resumed from step {resumed}" in out.getvalue()
  assert got["params_sha256"] == ref["params_sha256"]
  assert got["eval"] == ref["eval"]
  assert relutil.metrics_records(wd) == relutil.metrics_records(tmp_path / "ref")


QUICK = ("--flagfile=experiments/flagfiles/quickstart.flags", "--config.num_epochs=0",
         "--config.checkpoint_every=20", "--config.eval_every=100000",
         "--config.tensorboard=False", "--num_cpu_devices=1")


def test_a_real_sigterm_saves_and_exits_143(tmp_path):
  # From outside, as a scheduler sends it, while the run trains.
  wd = tmp_path / "run"
  p = relutil.start("cifar_cnn", *QUICK, "--config.num_steps=1000000", f"--workdir={wd}")
  try:
    deadline = time.monotonic() + 120
    while not relutil.committed_steps(wd):
      assert p.poll() is None and time.monotonic() < deadline, p.communicate()
      time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
  finally:
    if p.poll() is None:
      p.kill()
  assert p.returncode == 143, err[-2000:]
  last = out.strip().splitlines()[-1]
  step = int(last.split()[3].rstrip(";"))
  assert last == f"preempted at step {step}; checkpoint saved; relaunch to resume"
  assert max(relutil.committed_steps(wd)) == step
  assert not (wd / ".lock").exists() and "Traceback" not in err


def test_a_save_past_the_grace_period_keeps_the_previous_checkpoint(tmp_path):
  wd = tmp_path / "run"
  args = (*QUICK, "--config.num_steps=100", f"--workdir={wd}")
  r = relutil.run("cifar_cnn", *args, "--config.preemption_grace_s=0.000001",
                  env={"JAXDL_FAULT_KILL": "term:step:50"})
  assert r.returncode == 143, r.stderr[-2000:]
  # The kept one is the last committed: step 40, or step 20 where step 40's
  # async save was still in flight when the grace period ran out (a loaded
  # machine); that save is then given up too, never half kept.
  last = r.stdout.strip().splitlines()[-1]
  kept = re.fullmatch(
      r"preempted at step 50; its checkpoint did not finish within "
      r"config.preemption_grace_s; kept the previous one \(step (20|40) in (.+)\); "
      r"relaunch to resume", last)
  assert kept and kept[2] == str(wd / "checkpoints"), last
  kept = int(kept[1])
  assert relutil.committed_steps(wd) == [20, 40][:kept // 20] and not (wd / ".lock").exists()
  r = relutil.run("cifar_cnn", *args)
  assert r.returncode == 0 and f"resumed from step {kept}" in r.stdout, r.stderr[-2000:]


def test_a_second_signal_stops_at_once():
  code = ("import os, signal\n"
          "from jaxdl import preemption\n"
          "with preemption.Watch() as w:\n"
          "  os.kill(os.getpid(), signal.SIGTERM)\n"
          "  print('stop at step', w.stop_at(7), flush=True)\n"
          "  os.kill(os.getpid(), signal.SIGTERM)\n"
          "  print('still running', flush=True)\n")
  import subprocess  # pylint: disable=g-import-not-at-top
  r = subprocess.run([relutil.PY, "-c", code], cwd=relutil.REPO, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == -signal.SIGTERM, r.stderr[-2000:]
  assert r.stdout == "stop at step True\n"
