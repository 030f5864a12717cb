"""Checkpoints: the only module that imports orbax.

A checkpoint `checkpoints/<step>/` holds three items, committed together by
orbax (written under `<step>.orbax-checkpoint-tmp*`, renamed when complete):

  state  the TrainState (`StandardSave`), restored into an abstract target
         that carries the *current* shardings, so a run can resume on another
         device count;
  data   the grain iterator's position (grain's orbax handler);
  meta   a small JSON written by jaxdl: per-leaf sha256 of the state's host
         bytes (tree order), each leaf's shape and dtype, the iterator state,
         the items saved and the caller's extras (e.g. skipped-step counts).

orbax keeps no checksum of array data, so `meta` is what makes a flipped bit
detectable. A restore is verified against it: the leaf paths, shapes and
dtypes first (a mismatch means a different model, not corruption: the run
stops, nothing is moved), then every leaf's sha256 and the iterator position.
A checkpoint that fails is reported with its step and path and moved to
`checkpoints/corrupt/<step>` (never deleted), and the next newest is tried.

Saves are asynchronous; the last `max_to_keep` and the best by a chosen metric
are kept. An eval step's metrics are saved with it (orbax's `metrics` item), so
the best is still known, kept and chosen after any number of relaunches. A
state holding NaN/Inf is never saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

META_FORMAT = 1
CORRUPT_DIR = "corrupt"
TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names it."""


class CorruptCheckpointError(CheckpointError):
  """One checkpoint failed to restore or verify (the run can fall back)."""

  def __init__(self, step: int, path: str, problem: str):
    super().__init__(f"checkpoint step {step} at {path} is unusable: {problem}")
    self.step, self.path, self.problem = step, path, problem


class CheckpointMismatchError(CheckpointError):
  """The checkpoint is intact but was written for another state structure."""


def _one_line(text: Any) -> str:
  return " ".join(str(text).split())[:400]


def short_error(e: BaseException) -> str:
  """One short line for an orbax/tensorstore error (their messages embed a spec)."""
  msg = " ".join(str(e).split())
  m = re.search(r'Failed writing: "([^"]+)".*?\[os_error_code=\W?(\d+)', msg)
  if m:
    return f"{os.strerror(int(m.group(2)))} writing {m.group(1)}"
  m = re.search(r"os_error_code=\W?(\d+)", msg)
  if m:
    return os.strerror(int(m.group(1)))
  for cut in (" [tensorstore_spec", " See full TensorStore", " [source locations"):
    msg = msg.split(cut)[0]
  return msg[:240] or type(e).__name__


class _DropReraisedOrbaxErrors(logging.Filter):
  """orbax logs a traceback for a failed async save and then re-raises it to us;
  jaxdl reports it as one line, so the logged copy is dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.exc_info and
                f"{os.sep}orbax{os.sep}" in record.pathname)


_FILTER = _DropReraisedOrbaxErrors()
if _FILTER not in logging.getLogger("absl").filters:
  logging.getLogger("absl").addFilter(_FILTER)


def _quiet_closed_loop_hook(previous):
  """After one tensorstore op fails, orbax closes its event loop while sibling ops
  are still in flight; each one's completion callback then hits the closed loop
  and is printed as an "unraisable" traceback (dozens of them). The failure itself
  is raised to jaxdl and reported once, so only that echo is dropped."""

  def hook(args):
    if args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed":
      return
    previous(args)

  hook.jaxdl_quiet = True
  return hook


if not getattr(sys.unraisablehook, "jaxdl_quiet", False):
  sys.unraisablehook = _quiet_closed_loop_hook(sys.unraisablehook)


def _leaf_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def _host_leaves(state: Any) -> list[tuple[str, np.ndarray]]:
  """(path, numpy) per leaf in tree order; replicated arrays read from shard 0."""
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  out = []
  for path, x in flat:
    if isinstance(x, jax.Array):
      x = x.addressable_data(0) if x.is_fully_replicated else x
    out.append((_leaf_name(path), np.asarray(x)))
  return out


def _digest(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def describe_state(state: Any, leaves=None) -> dict[str, dict[str, Any]]:
  """{leaf path: {shape, dtype, sha256}} over the host bytes, tree order."""
  return {name: {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": _digest(a)}
          for name, a in (leaves if leaves is not None else _host_leaves(state))}


def nonfinite_leaves(state: Any, leaves=None) -> list[str]:
  """Paths of floating leaves that hold NaN or Inf."""
  return [name for name, a in (leaves if leaves is not None else _host_leaves(state))
          if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a))]


def _data_state(data_iterator: Any) -> Any:
  try:
    return json.loads(json.dumps(data_iterator.get_state(), default=str))
  except Exception:  # pylint: disable=broad-except
    return None  # not JSON-able: the position is then not cross-checked


def _data_process_count(data_dir: str) -> int | None:
  """N of grain's `process_<i>-of-<N>.json` files in a data item (None: none found)."""
  try:
    names = os.listdir(data_dir)
  except OSError:
    return None
  counts = {int(m.group(1)) for m in
            (re.fullmatch(r"process_\d+-of-(\d+)\.json", n) for n in names) if m}
  return counts.pop() if len(counts) == 1 else None


def agree(ok: bool) -> bool:
  """True only if every process says ok (they must pick the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _default_report(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


class Checkpointer:
  """Save/verified restore of (train state, data iterator) under `directory`.

  `report` receives the one-line warnings (default: stderr); `cleanup_tmp`
  removes half-written save directories when the manager opens.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True,
               report: Callable[[str], None] | None = None,
               cleanup_tmp: bool = True):
    self.directory = os.path.abspath(directory)
    self.best_metric, self.best_mode = best_metric, best_mode
    self.report = report or _default_report
    self._pending: int | None = None  # step of the save in flight
    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric:
      best_fn = lambda m: m[best_metric]  # pylint: disable=unnecessary-lambda-assignment
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"),
          n=1, keep_checkpoints_without_metrics=False))
    self._options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn is what makes orbax write each save's metrics to disk
        # (<step>/metrics/metrics) and read them back when it opens, so that
        # BestN and best_step() still know the best after a relaunch. The
        # preservation_policy above decides what is kept.
        best_fn=best_fn, best_mode=best_mode,
        enable_async_checkpointing=async_save,
        # jaxdl removes half-written saves itself, synchronously (below):
        # orbax's cleanup runs in the background until the first save.
        cleanup_tmp_directories=False,
        create=True)
    self._manager = self._open()
    if cleanup_tmp and jax.process_index() == 0:
      # Half-written saves of a killed run; never those of a live one (a reader
      # opening a running run's workdir passes cleanup_tmp=False).
      for name in self.leftover_tmp_dirs():
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _open(self):
    try:  # fail at launch, not at the first save after hours of training
      os.makedirs(self.directory, exist_ok=True)
      probe = os.path.join(self.directory, f".write_test_{os.getpid()}")
      with open(probe, "w", encoding="utf-8") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      why = ("a file is in the way" if os.path.exists(self.directory) and
             not os.path.isdir(self.directory) else e.strerror or str(e))
      raise CheckpointError(
          f"checkpoint directory {self.directory} is not writable ({why}); "
          "check the workdir's permissions and free space, or pass another --workdir"
      ) from None
    self._set_aside_unreadable_metrics()
    try:
      return ocp.CheckpointManager(self.directory, options=self._options,
                                   item_names=("state", "data", "meta"))
    except OSError as e:
      raise CheckpointError(
          f"cannot open checkpoint directory {self.directory} ({_one_line(e)}); "
          "check the workdir's permissions and free space") from None

  def _set_aside_unreadable_metrics(self) -> None:
    """Moves a step's unreadable `metrics` item to corrupt/<step>.metrics.

    orbax reads every step's metrics when it opens and fails on one that is not
    JSON; the step itself is fine (its state has its own checksums), so it is
    kept, as a recent step only: it is no longer ranked for the best.
    """
    if jax.process_index() == 0:
      for name in sorted(os.listdir(self.directory)):
        item = os.path.join(self.directory, name, "metrics")
        if not name.isdigit() or not os.path.isfile(os.path.join(item, "metrics")):
          continue
        try:
          with open(os.path.join(item, "metrics"), encoding="utf-8") as f:
            metrics = json.load(f)
          ok = isinstance(metrics, dict) and (
              not self.best_metric or isinstance(metrics.get(self.best_metric), (int, float)))
        except (OSError, ValueError):
          ok = False
        if ok:
          continue
        base = dst = os.path.join(self.directory, CORRUPT_DIR, f"{name}.metrics")
        n = 1
        while os.path.exists(dst):
          dst, n = f"{base}.{n}", n + 1
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(item, dst)
        self.report(f"warning: the eval metrics of checkpoint step {name} ({item}) are "
                    f"unreadable; moved them to {dst}; the step is kept but no longer "
                    "ranked as the best")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("jaxdl_checkpoint_metrics")

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric else self.latest_step()

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # -- save -----------------------------------------------------------------

  def save(self, step: int, state: Any, data_iterator: Any = None,
           metrics: dict | None = None, extra: dict | None = None) -> bool:
    """Starts an async save of step `step`; raises CheckpointError if it can't.

    Refuses a state with NaN/Inf (a bad step must never become the latest
    checkpoint). An error of the previous async save surfaces here.
    """
    self.wait()  # the previous save's error belongs to that step, not this one
    leaves = _host_leaves(state)  # one device-to-host copy for all the checks
    bad = nonfinite_leaves(state, leaves)
    if bad:
      raise CheckpointError(
          f"refusing to save step {step}: non-finite values in {', '.join(bad[:3])}"
          f"{' ...' if len(bad) > 3 else ''}; latest good checkpoint: "
          f"{self._latest_desc()}")
    self._check_space(step, sum(a.nbytes for _, a in leaves))
    meta = {"format": META_FORMAT, "step": int(step), "leaves": describe_state(state, leaves),
            "items": ["state", "meta"], "data_state": None, "extra": extra or {}}
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
      meta["items"].append("data")
      meta["data_state"] = _data_state(data_iterator)
    items["meta"] = ocp.args.JsonSave(meta)
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
      if self.best_metric and self.best_metric not in metrics:
        metrics = None  # e.g. the GAN with FID off: kept as latest, not ranked
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items),
                                 metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from None
    self._pending = step
    return saved

  def _check_space(self, step: int, nbytes: int) -> None:
    """Refuses to start a save that cannot fit (a clean error instead of a torn write)."""
    need = nbytes + (1 << 20)
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      return
    if free < need:
      raise CheckpointError(
          f"not enough disk space to save step {step} to {self.directory}: needs about "
          f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; free some space and "
          f"relaunch (committed checkpoints are intact, latest: {self._latest_desc()})")

  def _latest_desc(self) -> str:
    steps = self._committed_steps()
    return (f"step {steps[-1]} in {self.directory}" if steps
            else f"none in {self.directory}")

  def _committed_steps(self) -> list[int]:
    """Steps whose final directory exists on disk (not the in-flight one)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(n) for n in os.listdir(self.directory)
                  if n.isdigit() and os.path.isdir(os.path.join(self.directory, n)))

  def _save_error(self, step: int | None, e: BaseException) -> CheckpointError:
    if isinstance(e, CheckpointError):
      return e
    self._pending = None
    # The failed save's other write tasks failed too; asyncio would print each
    # one's traceback ("Task exception was never retrieved") when it is
    # collected, some after the error line below. That line reports them all.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:  # let the failed save's writer threads stop before touching its files
      self._manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass
    try:
      self._manager.reload()  # forget the failed step: it was never committed
    except Exception:  # pylint: disable=broad-except
      pass
    if step is not None and jax.process_index() == 0 and os.path.isdir(self.directory):
      for name in os.listdir(self.directory):  # free what the torn write used
        if name.startswith(f"{step}{TMP_MARKER}"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    which = f"step {step}" if step is not None else "a checkpoint"
    text = str(e)
    io_error = isinstance(e, OSError) or "os_error_code" in text or "Error writing" in text
    why = (f"{short_error(e)}; the disk may be full or the directory unwritable" if io_error
           else f"{type(e).__name__}: {short_error(e)}")
    return CheckpointError(
        f"saving {which} to {self.directory} failed ({why}); committed checkpoints "
        f"are intact (latest: {self._latest_desc()})")

  def wait(self) -> None:
    """Blocks until the save in flight is committed (raises CheckpointError)."""
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._pending, e) from None
    self._pending = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass

  # -- restore --------------------------------------------------------------

  def _is_legacy(self, step: int) -> bool:
    """True for a checkpoint saved before jaxdl wrote `meta` (orbax's own step
    metadata lists the items saved; a `meta` listed there but gone is damage)."""
    step_dir = self.step_path(step)
    if os.path.exists(os.path.join(step_dir, "meta")):
      return False
    try:
      with open(os.path.join(step_dir, "_CHECKPOINT_METADATA"), encoding="utf-8") as f:
        items = json.load(f).get("item_handlers") or {}
    except (OSError, ValueError, AttributeError):
      return False
    return "state" in items and "meta" not in items

  def read_meta(self, step: int) -> dict | None:
    """The step's `meta` item (None for a legacy checkpoint without one);
    CorruptCheckpointError if missing or garbage."""
    path = os.path.join(self.step_path(step), "meta")
    if self._is_legacy(step):
      return None
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(step, path, f"meta unreadable ({short_error(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or \
        not isinstance(meta.get("leaves"), dict):
      raise CorruptCheckpointError(step, path, "meta is not a jaxdl checksum record")
    return meta

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores and verifies step `step` (see `restore_verified`); returns the state."""
    return self.restore_verified(step, abstract_state, data_iterator)[0]

  def restore_verified(self, step: int, abstract_state: Any,
                       data_iterator: Any = None) -> tuple[Any, dict]:
    """(state, extra) of step `step`, checked against its `meta` checksums.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding`
    (see `abstract_with_shardings`). The data iterator, if given, is moved to
    the saved position in place. Raises CorruptCheckpointError (the step is
    damaged) or CheckpointMismatchError (the step is for another model).
    """
    step_dir = self.step_path(step)
    meta = self.read_meta(step)
    if meta is None:
      if jax.process_index() == 0:
        self.report(f"warning: checkpoint step {step} at {step_dir} has no checksum record "
                    "(saved before jaxdl wrote one): restoring it unverified")
      meta = {"leaves": {}, "items": ["state", "data"], "data_state": None}
    else:
      self._check_structure(step, meta, abstract_state)
    if data_iterator is not None and "data" not in meta.get("items", ()):
      raise CorruptCheckpointError(step, step_dir, "saved without the data position")
    state_dir = os.path.join(step_dir, "state")
    for name in ("_METADATA", "manifest.ocdbt"):  # cheap checks before tensorstore
      if not os.path.isfile(os.path.join(state_dir, name)):
        raise CorruptCheckpointError(step, os.path.join(state_dir, name), "file missing")
    try:
      state = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(step, state_dir,
                                   f"restore failed ({short_error(e)})") from None
    if data_iterator is not None:
      saved_by = _data_process_count(os.path.join(step_dir, "data"))
      if (saved_by not in (None, jax.process_count()) and
          isinstance(meta.get("data_state"), dict)):
        # Saved by another number of processes: grain keeps one file per
        # process, but jaxdl's position (the next global batch) is the same on
        # every process, and meta recorded it.
        data_iterator.set_state(meta["data_state"])
      else:
        try:
          self._manager.restore(step, args=ocp.args.Composite(
              data=grain.checkpoint.CheckpointRestore(data_iterator)))
        except Exception as e:  # pylint: disable=broad-except
          raise CorruptCheckpointError(step, os.path.join(step_dir, "data"),
                                       f"restore failed ({short_error(e)})") from None
    got = describe_state(state)
    for name, want in meta["leaves"].items():
      if got[name]["sha256"] != want.get("sha256"):
        raise CorruptCheckpointError(
            step, os.path.join(step_dir, "state"),
            f"leaf {name} fails its sha256 check (array data changed on disk)")
    if data_iterator is not None and meta.get("data_state") is not None:
      if _data_state(data_iterator) != meta["data_state"]:
        raise CorruptCheckpointError(
            step, os.path.join(step_dir, "data"),
            f"data position {_data_state(data_iterator)} != recorded {meta['data_state']}")
    return state, dict(meta.get("extra") or {})

  def _check_structure(self, step: int, meta: dict, abstract_state: Any) -> None:
    want = {name: (list(a.shape), str(a.dtype)) for name, a in (
        (_leaf_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0])}
    have = {name: (list(v.get("shape", [])), v.get("dtype")) for name, v in meta["leaves"].items()}
    if want == have:
      return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    diff = [n for n in want if n in have and want[n] != have[n]]
    if missing or extra:
      what = f"leaves {missing[:2] or extra[:2]} {'missing from' if missing else 'only in'} the checkpoint"
    else:
      n = diff[0]
      what = f"leaf {n} is {have[n][1]}{have[n][0]} there but {want[n][1]}{want[n][0]} here"
    raise CheckpointMismatchError(
        f"checkpoint step {step} in {self.directory} was written for another model or "
        f"config ({what}); use a new --workdir, or restore the config it was trained with")

  def quarantine(self, step: int) -> str | None:
    """Moves step `step` aside to `corrupt/<step>[.n]` (process 0); returns the new path."""
    src = self.step_path(step)
    dst = None
    if jax.process_index() == 0 and os.path.exists(src):
      base = os.path.join(self.directory, CORRUPT_DIR, str(step))
      dst, n = base, 1
      while os.path.exists(dst):
        dst, n = f"{base}.{n}", n + 1
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.rename(src, dst)  # same filesystem: atomic
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"jaxdl_quarantine_{step}")
    self._manager.reload()
    return dst

  def restore_latest(self, abstract_state: Any, data_iterator: Any = None
                     ) -> tuple[Any, int | None, dict]:
    """(state, step, extra) of the newest checkpoint that verifies.

    Each newer one that fails is reported (step, path, problem) and moved to
    `corrupt/`; (None, None, {}) when none is left. A structure mismatch is
    raised, not skipped: it means the config changed, not that data rotted.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, extra = self.restore_verified(step, abstract_state, data_iterator)
        ok, problem = True, None
      except CorruptCheckpointError as e:
        ok, problem = False, e
      if agree(ok):
        return state, step, extra
      moved = self.quarantine(step)
      if jax.process_index() == 0:
        self.report(f"warning: {problem or f'checkpoint step {step} failed on another process'}"
                    f"; moved it to {moved}; falling back to an older checkpoint")
    return None, None, {}

  def restore_data(self, step: int, data_iterator: Any) -> None:
    self._manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(data_iterator)))

  def leftover_tmp_dirs(self) -> list[str]:
    """Half-written save directories (none after a clean open or a finished save)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(n for n in os.listdir(self.directory) if TMP_MARKER in n)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the given (current) shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
