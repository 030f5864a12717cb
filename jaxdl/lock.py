"""One run per workdir: `workdir/.lock`, created atomically with O_EXCL.

Two launches on one workdir would interleave checkpoints and metrics, and the
second one's checkpoint manager would delete the first one's in-flight save
as a "leftover" tmp directory. So the second launch refuses to start, naming
the first (pid, host, start time). The lock holds JSON {pid, host, boot_id,
pid_start, started}. A lock whose process is gone (same host, and no live
process with that pid and start time) is stale -- the run was SIGKILLed or
the machine rebooted -- and is taken over with a message. A lock from another
host (a relaunch on another node of a shared filesystem) is judged by its
heartbeat: the holder touches the file every HEARTBEAT_S seconds, and a lock
not touched for STALE_AFTER_S (env JAXDL_LOCK_STALE_S) is stale.

Only process 0 of a multi-process run takes the lock (the others share its
workdir by design).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # 10 missed heartbeats: the holder on another host is gone


def stale_after_s() -> float:
  return float(os.environ.get("JAXDL_LOCK_STALE_S", STALE_AFTER_S))


class WorkdirError(OSError):
  """The workdir cannot be created or written."""


def prepare_workdir(workdir: str) -> str:
  if not workdir:
    raise WorkdirError("no workdir given; pass --workdir=DIR (the run's folder)")
  if "://" in workdir:
    # The lock (O_EXCL), atomic renames and appends need a POSIX filesystem.
    raise WorkdirError(f"--workdir={workdir}: jaxdl writes its run folder with local "
                       "file operations; pass a local or shared POSIX path (a "
                       "bucket mounted with gcsfuse or similar works)")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} is not writable ({e.strerror}); pass "
                       "--workdir=DIR with a folder you can write") from None
  return workdir


class WorkdirLockedError(OSError):
  """Another live run holds the workdir; the message names it."""


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return ""


def _pid_start(pid: int) -> str:
  """The process's start time in clock ticks since boot ('' if unknown)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      stat = f.read()
  except OSError:
    return ""
  # Field 22, counted after the parenthesised command name (which may hold spaces).
  return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  return True


def _describe(info: dict[str, Any]) -> str:
  started = info.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(
      started, (int, float)) else "?"
  return f"pid {info.get('pid')} on host {info.get('host')} (started {when})"


class WorkdirLock:
  """Context manager holding `workdir/.lock` for the life of a run.

  `acquire()` raises WorkdirLockedError if a live run holds it; a stale lock
  is taken over and `report` (default: stderr) is told so.
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               report: Callable[[str], None] | None = None):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.enabled = enabled
    self.report = report or (lambda msg: print(msg, file=sys.stderr, flush=True))
    self.held = False
    self.took_over: dict[str, Any] | None = None
    self._mine = {"pid": os.getpid(), "host": socket.gethostname(),
                  "boot_id": _boot_id(), "pid_start": _pid_start(os.getpid()),
                  "started": time.time()}

  def _read(self, path: str) -> dict[str, Any] | None:
    try:
      with open(path, encoding="utf-8") as f:
        info = json.load(f)
      return info if isinstance(info, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # empty or garbage: a writer died between create and write

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(self._mine, f)
      f.flush()
      os.fsync(f.fileno())
    return True

  def is_stale(self, info: dict[str, Any]) -> bool:
    """True if the lock's process is certainly gone (this host only)."""
    if not info:
      # Unreadable: a holder killed between O_EXCL and the write. Judge by age.
      try:
        return time.time() - os.path.getmtime(self.path) > 10
      except OSError:
        return True
    if info.get("host") != self._mine["host"]:
      try:  # another host: its heartbeat
        return time.time() - os.path.getmtime(self.path) > stale_after_s()
      except OSError:
        return True
    if info.get("boot_id") and self._mine["boot_id"] and \
        info["boot_id"] != self._mine["boot_id"]:
      return True  # rebooted since
    pid = info.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
      return True
    # pid alive: stale only if it was reused by a process started later.
    return bool(info.get("pid_start")) and _pid_start(pid) not in ("", info["pid_start"])

  def acquire(self) -> "WorkdirLock":
    if not self.enabled or self.held:
      return self
    for _ in range(20):
      if self._create():
        self.held = True
        self._beat = threading.Event()
        threading.Thread(target=self._heartbeat, args=(self._beat,), daemon=True).start()
        return self
      info = self._read(self.path)
      if info is None:
        continue  # released meanwhile: try again
      if not self.is_stale(info):
        who = _describe(info) if info else "a run that is just starting (empty lock file)"
        other = info.get("host") not in (None, self._mine["host"])
        raise WorkdirLockedError(
            f"workdir {os.path.dirname(self.path)} is in use by another run: "
            f"{who}; wait for it, stop it, or pass another --workdir"
            + (f" (its lock is taken over once its heartbeat is {stale_after_s():.0f} s old)"
               if other else f" (delete {self.path} only if that run is certainly gone)"))
      # Take over atomically: rename the stale lock to a name only we use, check
      # it is still the one we judged stale, then create ours with O_EXCL.
      aside = f"{self.path}.stale.{os.getpid()}"
      try:
        os.rename(self.path, aside)
      except FileNotFoundError:
        continue  # someone else took it over first
      moved = self._read(aside)
      if moved != info:  # raced: we moved a fresh lock; put it back
        try:
          os.link(aside, self.path)
        except FileExistsError:
          pass
        os.unlink(aside)
        continue
      os.unlink(aside)
      self.took_over = info
      self.report(f"warning: took over the stale lock {self.path} of "
                  f"{_describe(info) if info else 'an unknown process'} (no longer running)")
    raise WorkdirLockedError(f"could not take the lock {self.path} (contended); try again")

  def _heartbeat(self, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:
        pass  # gone or unwritable: the next acquire by another run decides

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    self._beat.set()
    info = self._read(self.path)
    if info and info.get("pid") == self._mine["pid"] and \
        info.get("started") == self._mine["started"]:
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def holder(workdir: str) -> dict[str, Any] | None:
  """The lock's record, or None if the workdir is not locked."""
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def held_by_another_live_run(workdir: str) -> bool:
  """True if a live process other than this one holds the workdir's lock.

  A reader (evaluation, export) opening a live run's checkpoints must then not
  clean up "leftover" tmp directories: they are that run's save in flight.
  """
  info = holder(workdir)
  if info is None or info.get("pid") == os.getpid():
    return False
  return not WorkdirLock(workdir, report=lambda m: None).is_stale(info)
