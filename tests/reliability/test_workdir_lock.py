"""Two runs on one workdir: the second refuses to start, naming the first;
a lock left by a killed run is detected as stale and taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import relutil
from jaxdl import lock


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _write_lock(wd, **info):
  (wd / ".lock").write_text(json.dumps(info))


def test_second_holder_is_refused_and_named(tmp_path):
  with lock.WorkdirLock(str(tmp_path)) as first:
    assert first.held and lock.holder(str(tmp_path))["pid"] == os.getpid()
    with pytest.raises(lock.WorkdirLockedError) as e:
      lock.WorkdirLock(str(tmp_path)).acquire()
    msg = str(e.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg
    assert "--workdir" in msg and "\n" not in msg
  assert not (tmp_path / ".lock").exists()    # released on exit
  with lock.WorkdirLock(str(tmp_path)):        # and free again
    pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  pid = _dead_pid()
  _write_lock(tmp_path, pid=pid, host=socket.gethostname(), started=time.time() - 60)
  messages = []
  with lock.WorkdirLock(str(tmp_path), report=messages.append) as l:
    assert l.took_over["pid"] == pid
    assert lock.holder(str(tmp_path))["pid"] == os.getpid()
  assert len(messages) == 1 and f"pid {pid}" in messages[0] and "stale" in messages[0]


def test_reused_pid_is_stale(tmp_path):
  # Our own pid, but a different process start time: the pid was reused.
  _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), pid_start="1",
              started=0)
  with lock.WorkdirLock(str(tmp_path), report=lambda m: None) as l:
    assert l.took_over is not None


def test_live_lock_from_another_host_is_refused(tmp_path):
  # Its heartbeat (the file's mtime) is fresh: that run may be alive.
  _write_lock(tmp_path, pid=_dead_pid(), host="some-other-host", started=time.time())
  with pytest.raises(lock.WorkdirLockedError, match="on host some-other-host.*heartbeat"):
    lock.WorkdirLock(str(tmp_path)).acquire()


def test_lock_from_another_host_with_an_old_heartbeat_is_taken_over(tmp_path):
  # A relaunch on another node of a shared filesystem after the holder died.
  _write_lock(tmp_path, pid=1, host="some-other-host", started=time.time() - 3600)
  old = time.time() - lock.STALE_AFTER_S - 5
  os.utime(tmp_path / ".lock", (old, old))
  messages = []
  with lock.WorkdirLock(str(tmp_path), report=messages.append) as l:
    assert l.took_over["host"] == "some-other-host"
    assert lock.holder(str(tmp_path))["host"] == socket.gethostname()
  assert len(messages) == 1 and "some-other-host" in messages[0], messages


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path, monkeypatch):
  monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
  with lock.WorkdirLock(str(tmp_path)):
    os.utime(tmp_path / ".lock", (0, 0))
    time.sleep(0.5)
    assert time.time() - os.path.getmtime(tmp_path / ".lock") < 1.0
    # So another host's launch sees a live run.
    with pytest.raises(lock.WorkdirLockedError):
      l = lock.WorkdirLock(str(tmp_path))
      l._mine["host"] = "another-host"  # pylint: disable=protected-access
      l.acquire()


def test_torn_lock_file_is_stale_only_when_old(tmp_path):
  (tmp_path / ".lock").write_text("")         # a holder died between create and write
  with pytest.raises(lock.WorkdirLockedError):
    lock.WorkdirLock(str(tmp_path)).acquire()  # fresh: maybe still being written
  old = time.time() - 60
  os.utime(tmp_path / ".lock", (old, old))
  with lock.WorkdirLock(str(tmp_path), report=lambda m: None) as l:
    assert l.held


def test_disabled_lock_is_for_non_zero_processes(tmp_path):
  with lock.WorkdirLock(str(tmp_path)):
    with lock.WorkdirLock(str(tmp_path), enabled=False) as other:
      assert not other.held


def test_two_launches_on_one_workdir(tmp_path):
  args = ["--config.dataset=digits", "--config.num_epochs=0", "--config.num_steps=100000",
          "--config.batch_size=32", "--config.checkpoint_every=20", "--config.log_every=20",
          "--config.tensorboard=False", "--num_cpu_devices=1", f"--workdir={tmp_path}"]
  first = relutil.start("mnist_mlp", *args)
  try:
    deadline = time.time() + 120
    while not relutil.committed_steps(tmp_path):  # it holds the lock and has saved
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
      time.sleep(0.2)
    second = relutil.run("mnist_mlp", *args)
    assert second.returncode == 1
    err = relutil.error_lines(second)
    assert len(err) == 1, second.stderr[-2000:]
    assert err[0].startswith("error: workdir ") and "in use by another run" in err[0]
    assert f"pid {first.pid} on host {socket.gethostname()}" in err[0]
    assert first.poll() is None                     # the first run is untouched
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()
  # The killed run's lock is stale: the next launch takes it over and resumes.
  committed = relutil.committed_steps(tmp_path)
  args[2] = f"--config.num_steps={max(committed) + 5}"
  third = relutil.run("mnist_mlp", *args)
  assert third.returncode == 0, third.stderr[-2000:]
  assert f"took over the stale lock {tmp_path / '.lock'} of pid {first.pid}" in third.stderr
  assert f"resumed from step {max(committed)}" in third.stdout
  assert not (tmp_path / ".lock").exists()


def test_reader_of_a_live_run_leaves_its_save_in_flight_alone(tmp_path):
  from jaxdl.configs import base_config  # pylint: disable=g-import-not-at-top
  from jaxdl.train import loop  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.model.kwargs = {"hidden": (8,)}
  c.num_steps, c.num_epochs, c.batch_size = 5, 0, 32
  in_flight = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp"
  in_flight.mkdir(parents=True)
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, pid=live.pid, host=socket.gethostname(),
                pid_start=lock._pid_start(live.pid), started=time.time())
    assert lock.held_by_another_live_run(str(tmp_path))
    loop.Run(c, str(tmp_path)).checkpointer.close()  # e.g. an evaluation tool
    assert in_flight.is_dir()                          # the live run's save survives
  finally:
    live.kill()
    live.wait()
  assert not lock.held_by_another_live_run(str(tmp_path))  # now stale
  loop.Run(c, str(tmp_path)).checkpointer.close()
  assert not in_flight.exists()                        # a dead run's leftovers go
