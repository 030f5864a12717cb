"""Checkpoints: the only module that imports orbax.

`checkpoints/<step>/` holds three items, committed together by orbax: `state`
(the TrainState, restored into a target with the *current* shardings, so a
run resumes on another device count), `data` (grain's iterator position) and
`meta`, jaxdl's record: each leaf's shape, dtype and two 32-bit checksums
(the sum and the odd-position-weighted sum of its words: any one flipped bit
changes the second), computed on the device in one jitted call, the iterator
position and the process count. A restore is verified against `meta`
(structure first: a mismatch is another model, not damage); a checkpoint that
fails is moved to `checkpoints/corrupt/<step>` and the next newest tried.
Saves are asynchronous; the last `max_to_keep` and the best by the task's
metric (saved with each eval step) are kept; a NaN/Inf state is never saved;
a killed run's half-written saves are removed when the manager opens
(`cleanup_tmp`, off for readers of a live run).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxdl.checksum import describe_state, failed_checksum, structure_difference
from jaxdl.parallel import agree

META_FORMAT = 2
CORRUPT_DIR = "corrupt"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names it."""


class CorruptCheckpointError(CheckpointError):
  """One checkpoint failed to restore or verify (the run can fall back)."""

  def __init__(self, step: int, path: str, problem: str):
    super().__init__(f"checkpoint step {step} at {path} is unusable: {problem}")
    self.step, self.path, self.problem = step, path, problem


class CheckpointMismatchError(CheckpointError):
  """The checkpoint is intact but was written for another state structure."""

  def __init__(self, msg: str, what: str = ""):
    super().__init__(msg)
    self.what = what  # the difference, the same for every step of another config


class NoUsableCheckpointError(CheckpointError):
  """Checkpoints exist but none restores and verifies; `steps` lists them."""

  def __init__(self, msg: str, steps: list[int]):
    super().__init__(msg)
    self.steps = steps


def short_error(e: BaseException) -> str:
  """One short line for an orbax/tensorstore error (their messages embed a spec;
  tensorstore gives its errno only in its text)."""
  if isinstance(e, OSError) and e.errno:
    return os.strerror(e.errno)
  msg, m = " ".join(str(e).split()), re.search(r"os_error_code=\W?(\d+)", str(e))
  return os.strerror(int(m.group(1))) if m else (msg[:240] or type(e).__name__)


def _data_state(data_iterator: Any) -> Any:
  try:
    return json.loads(json.dumps(data_iterator.get_state(), default=str))
  except Exception:  # pylint: disable=broad-except
    return None  # not JSON-able: the position is then not cross-checked


class Checkpointer:
  """Save/verified restore of (train state, data iterator) under `directory`;
  `report` receives the one-line warnings (default: stderr)."""

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True, report: Callable[[str], None] | None = None,
               cleanup_tmp: bool = True):
    self.directory = os.path.abspath(directory)
    self.best_metric, self.best_mode = best_metric, best_mode
    self.report = report or (lambda msg: print(msg, file=sys.stderr, flush=True))
    self._pending: int | None = None  # step of the save in flight
    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = (lambda m: m[best_metric]) if best_metric else None
    if best_metric:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
          keep_checkpoints_without_metrics=False))
    self._options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn makes orbax write each save's metrics and read them back when
        # it opens (so the best is known after a relaunch); the policy keeps.
        best_fn=best_fn, best_mode=best_mode, enable_async_checkpointing=async_save,
        # orbax's own cleanup runs in the background until the first save (a
        # killed run's leftovers outlived a reader's open+close): jaxdl's is below.
        cleanup_tmp_directories=False, create=True)
    try:  # fail at launch, not at the first save after hours of training
      os.makedirs(self.directory, exist_ok=True)
      probe = os.path.join(self.directory, f".write_test_{os.getpid()}")
      with open(probe, "w", encoding="utf-8") as f:
        f.write("ok")
      os.remove(probe)
      self._set_aside_unreadable_metrics()
      self._manager = ocp.CheckpointManager(self.directory, options=self._options,
                                            item_names=("state", "data", "meta"))
      for name in os.listdir(self.directory) if cleanup_tmp and jax.process_index() == 0 else ():
        if ".orbax-checkpoint-tmp" in name:  # a killed run's half-written save
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    except OSError as e:
      why = ("a file is in the way" if os.path.exists(self.directory) and
             not os.path.isdir(self.directory) else short_error(e))
      raise CheckpointError(
          f"checkpoint directory {self.directory} is not writable ({why}); "
          "check the workdir's permissions and free space, or pass another --workdir"
      ) from None

  def _set_aside_unreadable_metrics(self) -> None:
    """Moves a step's unreadable `metrics` item to corrupt/<step>.metrics: orbax
    reads them all when it opens and fails on one that is not JSON. The step
    itself is fine (its state has its own checksums), so it is kept, as a
    recent step only: it is no longer ranked for the best."""
    if jax.process_index() == 0:
      for name in sorted(os.listdir(self.directory)):
        item = os.path.join(self.directory, name, "metrics")
        if not name.isdigit() or not os.path.isfile(os.path.join(item, "metrics")):
          continue
        try:
          with open(os.path.join(item, "metrics"), encoding="utf-8") as f:
            metrics = json.load(f)
          if isinstance(metrics, dict) and isinstance(
              metrics.get(self.best_metric, 0.0) if self.best_metric else 0.0, (int, float)):
            continue
        except (OSError, ValueError):
          pass
        dst = self._move_aside(item, f"{name}.metrics")
        self.report(f"warning: the eval metrics of checkpoint step {name} ({item}) are "
                    f"unreadable; moved them to {dst}; the step is kept but no longer "
                    "ranked as the best")
    agree(True)  # the other processes wait for it

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
           metrics: dict | None = None) -> bool:
    """Starts an async save of step `step`; raises CheckpointError if it can't:
    a state with NaN/Inf, too little disk space, or an error of the previous
    async save (which surfaces here)."""
    self.wait()  # the previous save's error belongs to that step, not this one
    leaves = describe_state(state)
    bad = [name for name, d in leaves.items() if not d.pop("finite")]
    if bad:
      raise CheckpointError(
          f"refusing to save step {step}: non-finite values in {', '.join(bad[:3])}"
          f"{' ...' if len(bad) > 3 else ''}; latest good checkpoint: {self.latest_committed()}")
    need = sum(x.nbytes for x in jax.tree.leaves(state)) + (1 << 20)
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise CheckpointError(
          f"not enough disk space to save step {step} to {self.directory}: needs about "
          f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; free some space and "
          f"relaunch (committed checkpoints are intact, latest: {self.latest_committed()})")
    meta = {"format": META_FORMAT, "step": int(step), "leaves": leaves,
            "items": ["state", "meta"], "data_state": None,
            "process_count": jax.process_count()}
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

  def latest_committed(self) -> str:
    """The newest committed step (its final folder exists; not the in-flight one)."""
    steps = sorted(int(n) for n in os.listdir(self.directory)
                   if n.isdigit() and os.path.isdir(os.path.join(self.directory, n)))
    return f"step {steps[-1]} in {self.directory}" if steps else f"none in {self.directory}"

  def _save_error(self, step: int | None, e: BaseException) -> CheckpointError:
    if isinstance(e, CheckpointError):
      return e
    self._pending = None
    # The failed save's other write tasks failed too; asyncio would print each
    # one's traceback ("Task exception was never retrieved"); the line below
    # reports them all.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    for finish in (self._manager.wait_until_finished,  # its writer threads stop, then
                   self._manager.reload):  # the failed step is forgotten (never committed)
      try:
        finish()
      except Exception:  # pylint: disable=broad-except
        pass
    io_error = isinstance(e, OSError) or "os_error_code" in str(e) or "Error writing" in str(e)
    why = (f"{short_error(e)}; the disk may be full or the directory unwritable" if io_error
           else f"{type(e).__name__}: {short_error(e)}")
    return CheckpointError(
        f"saving {'a checkpoint' if step is None else f'step {step}'} to {self.directory} "
        f"failed ({why}); committed checkpoints are intact (latest: {self.latest_committed()})")

  def wait(self, timeout: float | None = None) -> bool:
    """Blocks until the save in flight is committed (raises CheckpointError);
    False if it is still running after `timeout` seconds."""
    if timeout is not None and self._pending is not None:
      waiter = threading.Thread(target=self._manager.wait_until_finished, daemon=True)
      waiter.start()
      waiter.join(timeout)
      if waiter.is_alive():
        return False
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._pending, e) from None
    self._pending = None
    return True

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass

  # -- restore --------------------------------------------------------------

  def _restore_item(self, step: int, item: str, args) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(step, os.path.join(self.step_path(step), item),
                                   f"restore failed ({short_error(e)})") from None

  def read_meta(self, step: int) -> dict:
    """The step's `meta` item; CorruptCheckpointError if missing or garbage."""
    meta = self._restore_item(step, "meta", ocp.args.JsonRestore())
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or \
        not isinstance(meta.get("leaves"), dict):
      raise CorruptCheckpointError(step, os.path.join(self.step_path(step), "meta"),
                                   "meta is not a jaxdl checksum record")
    return meta

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """The state of step `step` (into `abstract_with_shardings` structs), checked
    against its `meta`; the data iterator, if given, moved to the saved position.
    Raises CorruptCheckpointError (damage) or CheckpointMismatchError (another model)."""
    meta = self.read_meta(step)
    self._check_structure(step, meta, abstract_state)
    data_dir = os.path.join(self.step_path(step), "data")
    if data_iterator is not None and "data" not in meta.get("items", ()):
      raise CorruptCheckpointError(step, data_dir, "saved without the data position")
    state = self._restore_item(step, "state", ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      if (meta.get("process_count") != jax.process_count() and
          isinstance(meta.get("data_state"), dict)):
        # Saved by another number of processes: grain keeps one file per
        # process, but jaxdl's position (the next global batch) is the same on
        # every process, and meta recorded it.
        data_iterator.set_state(meta["data_state"])
      else:
        self._restore_item(step, "data", grain.checkpoint.CheckpointRestore(data_iterator))
    bad = failed_checksum(meta["leaves"], state)
    if bad:
      raise CorruptCheckpointError(step, os.path.join(self.step_path(step), "state"),
                                   f"leaf {bad} fails its checksum (array data changed on disk)")
    position = _data_state(data_iterator) if data_iterator is not None else None
    if position is not None and meta.get("data_state") not in (None, position):
      raise CorruptCheckpointError(
          step, data_dir, f"data position {position} != recorded {meta['data_state']}")
    return state

  def _check_structure(self, step: int, meta: dict, abstract_state: Any) -> None:
    what = structure_difference(meta["leaves"], abstract_state)
    if what:
      raise CheckpointMismatchError(
          f"checkpoint step {step} at {self.step_path(step)} was written for another model "
          f"or config ({what}); use a new --workdir, or restore the config it was trained "
          "with", what)

  def _move_aside(self, src: str, name: str) -> str:
    """Renames `src` to `corrupt/<name>[.n]` (same filesystem: atomic)."""
    base = dst = os.path.join(self.directory, CORRUPT_DIR, name)
    for n in range(1, 1 << 20):
      if not os.path.exists(dst):
        break
      dst = f"{base}.{n}"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.rename(src, dst)
    return dst

  def quarantine(self, step: int) -> str | None:
    """Moves step `step` aside to `corrupt/<step>[.n]` (process 0); returns the new path."""
    src, dst = self.step_path(step), None
    if jax.process_index() == 0 and os.path.exists(src):
      dst = self._move_aside(src, str(step))
    agree(True)  # every process sees it moved before reloading
    self._manager.reload()
    return dst

  def restore_latest(self, abstract_state: Any, data_iterator: Any = None
                     ) -> tuple[Any, int | None]:
    """(state, step) of the newest checkpoint that verifies, (None, None) when
    there is none. Newer ones that fail are then reported and moved to
    `corrupt/`, whatever failed: data, meta, or a structure that differs from
    the state's while an older step's matches. When no step verifies, nothing
    is moved: the same structure difference at every step is a
    CheckpointMismatchError (the config changed), anything else a
    NoUsableCheckpointError."""
    failed: list[tuple[int, CheckpointError]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, problem = self.restore(step, abstract_state, data_iterator), None
      except (CorruptCheckpointError, CheckpointMismatchError) as e:
        problem = e
      if agree(problem is None):
        for bad, why in failed:
          moved = self.quarantine(bad)
          if jax.process_index() == 0:
            self.report(f"warning: {why or f'checkpoint step {bad} failed on another process'}"
                        f"; moved it to {moved}; fell back to checkpoint step {step}")
        return state, step
      failed.append((step, problem))
    if not failed:
      return None, None
    whats = {getattr(e, "what", None) for _, e in failed}
    if len(whats) == 1 and None not in whats:  # the same difference at every step
      raise failed[0][1]
    raise NoUsableCheckpointError(
        f"no usable checkpoint in {self.directory}: steps {[s for s, _ in failed]} all "
        f"fail to restore or verify (newest: {failed[0][1]}); pass another --workdir for "
        "a new run, or --config.start_over=True to train this one again from step 0 "
        "(the checkpoints are then moved to corrupt/)", [s for s, _ in failed])


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the given (current) shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
