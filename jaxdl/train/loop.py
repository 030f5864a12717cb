"""`train_and_evaluate(config, workdir)`: the training loop every experiment runs.

Starting on a workdir that holds checkpoints resumes from the latest one: the
train state (params, optimizer, model state, rng, step) and the input
pipeline's position, so the resumed run sees exactly the batches, and draws
exactly the random numbers, of the uninterrupted run.

Faults (see README "Reliability"): one run per workdir (`workdir/.lock`,
`jaxdl.lock`); a SIGKILL at any moment loses only the steps after the last
committed checkpoint (orbax commits by rename; leftovers are cleaned at the
next launch, and metrics.jsonl is cut back to the resumed step); a checkpoint
that fails its checksums is moved to checkpoints/corrupt/ and the next newest
is used; a NaN/Inf loss, gradient or parameter stops the run
(`config.nonfinite='stop'`, the default) or drops that update ('skip'); a
failed write (disk full, unwritable) is one error line with the committed
checkpoints intact.

Non-finite checks add no host sync per step: each step's flag is folded into
a small on-device tracker (first bad step, which metric, count), and the
tracker is read with the metrics already fetched one step late at log steps,
before every checkpoint save and at the end.

Workdir layout: .lock, config.json, metrics.jsonl, summary.json, tensorboard/,
checkpoints/<step>/{state,data,meta}, checkpoints/corrupt/<step>.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import checkpoint, configs, lock, parallel, plots, summary as model_summary
from jaxdl import logging as jlog
from jaxdl.data import DataError, load_dataset, pipeline
from jaxdl.ops import platform
from jaxdl.tasks import build_task
from jaxdl.train.engine import Engine, checked_metrics


class WorkdirError(OSError):
  """The workdir cannot be created or written."""


class NonFiniteError(FloatingPointError):
  """A loss, gradient or parameter went NaN/Inf with `config.nonfinite='stop'`."""


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


def _num_steps(config, n_train: int) -> tuple[int, int]:
  spe = n_train // config.batch_size
  if spe == 0:
    raise configs.ConfigError(
        f"batch_size={config.batch_size} is larger than the {n_train} training "
        f"examples; pass --config.batch_size={max(1, n_train // 2)}")
  return (config.num_steps or config.num_epochs * spe), spe


def _write_json(path: str, obj: Any) -> None:
  if jax.process_index() == 0:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


class Run:
  """Everything a run builds before its first step (tests and tools reuse it)."""

  def __init__(self, config, workdir: str, *, mesh=None):
    self.mesh = mesh or parallel.make_mesh()
    configs.validate(config, self.mesh.size)
    self.config = config
    self.workdir = prepare_workdir(workdir)
    self.train_source, self.test_source, self.info = load_dataset(config, self.workdir)
    self.num_steps, self.steps_per_epoch = _num_steps(config, len(self.train_source))
    try:
      self.task = build_task(config, self.info, self.num_steps)
    except (TypeError, ValueError) as e:
      if isinstance(e, (configs.ConfigError, DataError)):
        raise
      # A task constructor rejecting its settings is a bad value, not a crash.
      raise configs.ConfigError(
          f"task {config.get('task', 'classification')!r}: "
          f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}; check its "
          "--config.* settings") from e
    self.pcount, self.pindex = jax.process_count(), jax.process_index()
    norm = config.get("normalize", {})
    self.mean = tuple(norm.get("mean", ())) or None
    self.std = tuple(norm.get("std", ())) or None
    aug = config.get("augment", {})
    self.batches = pipeline.TrainBatches(
        self.train_source, global_batch_size=config.batch_size, seed=config.seed,
        process_index=self.pindex, process_count=self.pcount,
        crop_padding=aug.get("crop_padding", 0), flip=aug.get("flip", False),
        mean=self.mean, std=self.std)
    local = self.batches(0)
    example = {k: np.zeros((v.shape[0] * self.pcount,) + v.shape[1:], v.dtype)
               for k, v in local.items()}
    try:
      self.engine = Engine(self.task, self.mesh, example,
                           nonfinite=config.get("nonfinite", "stop"))
    except (TypeError, ValueError) as e:
      if isinstance(e, (configs.ConfigError, DataError)):
        raise
      # Model init is traced here: a wrongly typed model.kwargs value fails now.
      why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
      task = config.get("task", "classification")
      if task != "classification":
        raise configs.ConfigError(f"cannot build the models of task {task!r} ({why}); "
                                  "check their --config.* settings") from e
      raise configs.ConfigError(
          f"cannot build model {config.model.name!r} from model.kwargs="
          f"{dict(config.model.get('kwargs', {}))} ({why}); "
          "check the --config.model.kwargs.* values") from e
    self.checkpointer = checkpoint.Checkpointer(
        os.path.join(self.workdir, "checkpoints"),
        max_to_keep=config.get("keep_checkpoints", 3),
        best_metric=self.task.best_metric, best_mode=self.task.best_mode,
        async_save=config.get("async_checkpoints", True),
        cleanup_tmp=not lock.held_by_another_live_run(self.workdir))
    self.restored_extra: dict[str, Any] = {}

  def data_iterator(self):
    aug = self.config.get("augment", {})
    return pipeline.train_iterator(
        self.train_source, global_batch_size=self.config.batch_size,
        seed=self.config.seed, num_batches=self.num_steps,
        process_index=self.pindex, process_count=self.pcount,
        crop_padding=aug.get("crop_padding", 0), flip=aug.get("flip", False),
        mean=self.mean, std=self.std,
        batches_per_transfer=platform.batches_per_transfer(
            self.config.get("batches_per_transfer", 1), jax.default_backend()))

  def abstract_state(self):
    return checkpoint.abstract_with_shardings(self.engine.abstract_state,
                                              self.engine.state_shardings)

  def restore_or_init(self, data_iterator=None):
    """(state, resumed step or None) from the newest checkpoint that verifies.

    Corrupt checkpoints on the way are reported and moved aside (see
    `Checkpointer.restore_latest`); the data iterator ends at the restored
    step's position, or at its start when nothing was restored.
    """
    start = data_iterator.get_state() if data_iterator is not None else None
    state, step, extra = self.checkpointer.restore_latest(self.abstract_state(),
                                                          data_iterator)
    self.restored_extra = extra
    if step is None:
      if data_iterator is not None:
        data_iterator.set_state(start)  # a failed attempt may have moved it
      return self.engine.init_state(self.config.seed), None
    return state, step

  def evaluate(self, state) -> dict[str, float]:
    bs = self.config.get("eval_batch_size") or self.config.batch_size
    return self.engine.evaluate(state, pipeline.eval_batches(
        self.test_source, global_batch_size=bs, process_index=self.pindex,
        process_count=self.pcount, mean=self.mean, std=self.std))


def train_and_evaluate(config, workdir: str, *, stream=None, mesh=None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary dict.

  `mesh` defaults to every device. Raises ConfigError / DataError /
  WorkdirError / WorkdirLockedError / CheckpointError / NonFiniteError with
  one-line messages.
  """
  mesh = mesh or parallel.make_mesh()
  configs.validate(config, mesh.size)  # a bad flag must not create or lock a workdir
  workdir = prepare_workdir(workdir)
  with lock.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    try:
      return _train(config, workdir, mesh, stream)
    except OSError as e:
      if isinstance(e, (WorkdirError, lock.WorkdirLockedError)):
        raise
      where = f" ({e.filename})" if getattr(e, "filename", None) else ""
      raise WorkdirError(
          f"writing to workdir {workdir} failed: {e.strerror or e}{where}; the disk may "
          "be full or the folder unwritable; committed checkpoints are intact, "
          "relaunch to resume") from None


def _train(config, workdir: str, mesh, stream) -> dict[str, Any]:
  t_start = time.perf_counter()
  run = Run(config, workdir, mesh=mesh)
  cfg, engine, ckpt = run.config, run.engine, run.checkpointer
  it = run.data_iterator()
  try:
    state, resumed = run.restore_or_init(it)
  except BaseException:
    _close_quietly(ckpt)
    raise
  start = int(resumed or 0)
  saved = _finished_summary(run.workdir, state) if start >= run.num_steps else None
  if saved is not None:
    # A finished run launched again: nothing to train, and its summary (wall
    # time, examples/s, the task's own eval metrics) stays as it was.
    ckpt.close()
    if jax.process_index() == 0:
      print(f"run already finished at step {start} in {run.workdir}; summary.json "
            "unchanged", file=stream or sys.stdout, flush=True)
    return {**saved, "resumed_from": resumed}
  # Only now, with the checkpoint accepted for this config: a refused launch
  # (another model's checkpoint) must leave the run's config.json as it was.
  _write_json(os.path.join(run.workdir, "config.json"), cfg.to_dict())
  _truncate_metrics(os.path.join(run.workdir, "metrics.jsonl"), start)
  eval_every = cfg.eval_every or run.steps_per_epoch
  ckpt_every = cfg.checkpoint_every or eval_every
  guard = _NonFiniteGuard(cfg.get("nonfinite", "stop"), engine.replicated,
                          skipped=int(run.restored_extra.get("skipped_steps", 0)))
  writer = jlog.MetricWriter(run.workdir, tensorboard=cfg.get("tensorboard", True))
  progress = jlog.Progress(run.num_steps, start, cfg.batch_size, stream=stream,
                           every=cfg.log_every)
  if resumed is not None:
    progress.write(f"resumed from step {resumed} in {ckpt.directory}")
  else:
    table, _ = model_summary.write_model_summary(run.workdir, run.task, run.batches(0))
    progress.write(table)
  t_first = None
  pending = None  # (step, device metrics, device tracker): fetched one step late
  eval_metrics: dict[str, float] = {}
  t_train = time.perf_counter()

  def log_pending():
    nonlocal pending
    if pending is not None:
      _log_train(writer, progress, guard, ckpt, *pending)
      pending = None

  blocks = isinstance(it, pipeline.BlockIterator)
  to_device = lambda b: parallel.global_block(b, run.mesh)
  try:
    for step in range(start + 1, run.num_steps + 1):
      if blocks:  # one transfer per K steps; the step picks its batch
        state, metrics = engine.train_step_in_block(state, it.next_device_block(to_device))
      else:
        batch = parallel.global_batch(next(it), run.mesh)
        state, metrics = engine.train_step(state, batch)
      tracker = guard.track(metrics, state.step)
      if engine.serial:
        jax.block_until_ready((state, tracker))
      _fault_point("step", step)
      if t_first is None:
        jax.block_until_ready(metrics)
        t_first = time.perf_counter() - t_train
      log_pending()
      if step % cfg.log_every == 0 or step == run.num_steps:
        pending = (step, metrics, tracker)
      else:
        progress.update(step)
      do_eval = step % eval_every == 0 or step == run.num_steps
      do_ckpt = step % ckpt_every == 0 or step == run.num_steps
      if do_eval or do_ckpt:
        log_pending()
        guard.check(guard.fetch(tracker), ckpt)  # before anything is saved
      if do_eval:
        eval_metrics = run.evaluate(state)
        eval_metrics.update(run.task.on_evaluate(state, run.workdir, step) or {})
        writer.write_scalars(step, "eval", eval_metrics)
        writer.write_step_images(step, run.workdir)
        writer.write_step_texts(step, run.workdir)
        progress.write(f"eval step {step}: " + " ".join(
            f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items())))
      if do_ckpt:
        ckpt.save(step, state, it, metrics=eval_metrics if do_eval else None,
                  extra={"skipped_steps": guard.skipped})
        _fault_point("save", step)
    log_pending()
    if guard.tracker is not None:
      guard.check(guard.fetch(guard.tracker), ckpt)
    ckpt.wait()
  except BaseException:
    _close_quietly(ckpt)  # the first error is the one to report
    writer.close()
    raise
  finally:
    progress.close()
  ckpt.close()
  if not eval_metrics and resumed is not None:  # e.g. killed before summary.json
    eval_metrics = run.evaluate(state)
    eval_metrics.update(run.task.on_evaluate(state, run.workdir, start) or {})
  writer.write_hparams(jlog.flatten_hparams(cfg), eval_metrics)
  writer.close()
  wall = time.perf_counter() - t_start
  train_time = time.perf_counter() - t_train
  steps_done = run.num_steps - start
  summary = {
      "final_step": run.num_steps,
      "resumed_from": resumed,
      "eval": eval_metrics,
      "wall_time_s": wall,
      "first_step_s": t_first,
      "examples_per_sec": (steps_done * cfg.batch_size / train_time) if steps_done else 0.0,
      "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
      "num_devices": run.mesh.size,
      "num_processes": run.pcount,
      "params_sha256": params_sha256(state.params),
      "skipped_steps": guard.skipped,
  }
  _write_json(os.path.join(run.workdir, "summary.json"), summary)
  plots.write_run_plots(run.workdir, run=run, state=state)
  return summary


def _finished_summary(workdir: str, state) -> dict[str, Any] | None:
  """The saved summary.json if it is that of the restored state (same final
  step and params), else None; every process gets the same answer."""
  try:
    with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
      saved = json.load(f)
    ok = (isinstance(saved, dict) and saved.get("final_step") == int(state.step) and
          saved.get("params_sha256") == params_sha256(state.params))
  except (OSError, ValueError):
    saved, ok = None, False
  return saved if checkpoint.agree(ok) else None


def _close_quietly(ckpt) -> None:
  try:
    ckpt.close()
  except Exception as e:  # pylint: disable=broad-except
    print(f"warning: {e}", file=sys.stderr, flush=True)


class _NonFiniteGuard:
  """Folds each step's `nonfinite` flag into an on-device tracker (no host sync).

  tracker = {first: first bad step (0: none), what: bitmask over `names`,
  count: bad steps so far, including those restored from the checkpoint}.
  """

  def __init__(self, mode: str, sharding, skipped: int = 0):
    self.mode, self.sharding = mode, sharding
    self.skipped = skipped  # host copy, as of the last fetch
    self.names: list[str] | None = None
    self.tracker = None
    self._update = jax.jit(self._update_fn)

  def _update_fn(self, tracker, metrics, step):
    names = checked_metrics(metrics)
    bits = [~jnp.all(jnp.isfinite(metrics[k])) for k in names]
    bad = metrics["nonfinite"] > 0
    bits.append(bad & ~jnp.any(jnp.stack(bits)) if bits else bad)  # params only
    mask = sum(b.astype(jnp.int32) << i for i, b in enumerate(bits))
    new = (tracker["first"] == 0) & bad
    return {"first": jnp.where(new, step.astype(jnp.int32), tracker["first"]),
            "what": jnp.where(new, mask, tracker["what"]),
            "count": tracker["count"] + bad.astype(jnp.int32)}

  def track(self, metrics, step):
    if self.tracker is None:
      self.names = checked_metrics(metrics) + ["params (gradients or updates)"]
      init = {"first": 0, "what": 0, "count": self.skipped}
      # Global replicated scalars (every process passes the same value).
      self.tracker = {k: jax.make_array_from_callback(
          (), self.sharding, lambda _, v=v: np.asarray(v, np.int32)) for k, v in init.items()}
    self.tracker = self._update(self.tracker, metrics, step)
    return self.tracker

  def fetch(self, tracker) -> dict[str, int]:
    host = {k: int(v) for k, v in parallel.to_host(tracker).items()}
    self.skipped = host["count"]
    return host

  def check(self, host: dict[str, int], ckpt) -> None:
    """Raises NonFiniteError in 'stop' mode once a bad step was seen."""
    if self.mode != "stop" or not host["first"]:
      return
    what = [n for i, n in enumerate(self.names or []) if host["what"] >> i & 1]
    try:
      ckpt.wait()
    except checkpoint.CheckpointError:
      pass  # reported below as "latest committed"
    latest = ckpt.latest_step()
    good = (f"step {latest} in {ckpt.directory}" if latest is not None
            else "none yet (the run would start over)")
    raise NonFiniteError(
        f"non-finite {' and '.join(what) or 'values'} at step {host['first']} "
        f"(config.nonfinite='stop'); nothing after it was saved; last good checkpoint: "
        f"{good}; relaunch to resume from it (e.g. with a lower "
        f"--config.optimizer.learning_rate), or pass --config.nonfinite=skip to drop "
        f"such updates")


def _truncate_metrics(path: str, last_step: int) -> None:
  """Drops records after `last_step` (redone by this launch) and a torn last line."""
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().split("\n")
  keep = []
  for line in lines:
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if isinstance(rec, dict) and int(rec.get("step", 0)) <= last_step:
      keep.append(line)
  if len(keep) != len([l for l in lines if l.strip()]):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("".join(l + "\n" for l in keep))
    os.replace(tmp, path)


def params_sha256(params) -> str:
  """sha256 over every parameter's bytes, in tree order (for exact-resume checks)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(parallel.to_host(params)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _fault_point(point: str, step: int) -> None:
  """Test hook for fault injection: JAXDL_FAULT_KILL='step:N' or 'save:N' SIGKILLs
  this process right after step N is dispatched, or right after the save of
  step N was started (the async write still in flight)."""
  if os.environ.get("JAXDL_FAULT_KILL") == f"{point}:{step}":
    os.kill(os.getpid(), signal.SIGKILL)


def _log_train(writer, progress, guard, ckpt, step, metrics, tracker):
  host, tr = parallel.to_host((metrics, tracker))
  host = {k: float(v) for k, v in host.items()}
  before = guard.skipped
  tr = {k: int(v) for k, v in tr.items()}
  guard.skipped = tr["count"]
  if guard.mode == "skip":
    host["skipped_steps"] = float(tr["count"])
    if tr["count"] > before:
      progress.write(f"warning: skipped {tr['count'] - before} update(s) with non-finite "
                     f"values up to step {step} ({tr['count']} in all)")
  writer.write_scalars(step, "train", host)
  progress.update(step, host)
  guard.check(tr, ckpt)
