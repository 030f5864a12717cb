"""`train_and_evaluate(config, workdir)`: the training loop every experiment runs.

The loop only drives: the engine (`jaxdl.train.engine`) runs the step, the
checkpointer (`jaxdl.checkpoint`) saves and verifies, the writers
(`jaxdl.logging`) record. A workdir that holds checkpoints resumes from the
newest that verifies (state and data position: the resumed run equals the
uninterrupted one). Faults are in README "Reliability": one run per workdir
(`jaxdl.lock`), SIGTERM/SIGINT save the step and exit (`jaxdl.preemption`),
a SIGKILL loses only what was not committed, a damaged checkpoint is moved
aside for the next newest, a NaN/Inf step (`state.health`) stops the run or
is dropped (`config.nonfinite`). Workdir: .lock, config.json, metrics.jsonl,
summary.json, tensorboard/, NAME_<step>.png|.txt (what the task's
on_evaluate returned), checkpoints/<step>/{state,data,meta}, corrupt/<step>.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxdl import checkpoint, configs, faults, lock, parallel, preemption, summary as model_summary
from jaxdl.checksum import params_sha256
from jaxdl.lock import WorkdirError, prepare_workdir  # noqa: F401 (part of this API)
from jaxdl import logging as jlog
from jaxdl.data import DataError, load_dataset, pipeline, unit_images
from jaxdl.ops import platform
from jaxdl.train.engine import Engine, Health, NonFiniteError  # noqa: F401 (part of this API)
from jaxdl.train.registry import build_task


@contextlib.contextmanager
def _bad_value(what: str):
  """A TypeError/ValueError of a task or model constructor (or of the model's
  init, traced when the engine is built) is a bad config value, not a crash."""
  try:
    yield
  except (TypeError, ValueError) as e:
    if isinstance(e, (configs.ConfigError, DataError)):
      raise
    first = (str(e).strip().splitlines() or [""])[0]
    raise configs.ConfigError(f"{what} ({type(e).__name__}: {first})") from e


class Run:
  """Everything a run builds before its first step (tests and tools reuse it).

  The caller validates the config (`configs.validate`) first.
  """

  def __init__(self, config, workdir: str, *, mesh=None):
    self.mesh = mesh or parallel.make_mesh()
    self.config = config
    self.workdir = prepare_workdir(workdir)
    self.train_source, self.test_source, self.info = load_dataset(config, self.workdir)
    self.steps_per_epoch = len(self.train_source) // config.batch_size
    if self.steps_per_epoch == 0:
      raise configs.ConfigError(
          f"batch_size={config.batch_size} is larger than the {len(self.train_source)} "
          f"training examples; pass --config.batch_size={max(1, len(self.train_source) // 2)}")
    self.num_steps = config.num_steps or config.num_epochs * self.steps_per_epoch
    task_name = config.task
    with _bad_value(f"task {task_name!r} rejects its settings; check its --config.* settings"):
      self.task = build_task(config, self.info, self.num_steps)
    if self.task.wants_reference_images:
      train, test = unit_images(self.train_source), unit_images(self.test_source)
      if train is not None and test is not None:
        self.task.set_reference_data(train[0], train[1], test[0])
    self.pcount, self.pindex = jax.process_count(), jax.process_index()
    self.mean = tuple(config.normalize.mean) or None
    self.std = tuple(config.normalize.std) or None
    self._pipeline_args = dict(
        global_batch_size=config.batch_size, seed=config.seed, process_index=self.pindex,
        process_count=self.pcount, crop_padding=config.augment.crop_padding,
        flip=config.augment.flip, mean=self.mean, std=self.std)
    self.batches = pipeline.TrainBatches(self.train_source, **self._pipeline_args)
    local = self.batches(0)
    example = {k: np.zeros((v.shape[0] * self.pcount,) + v.shape[1:], v.dtype)
               for k, v in local.items()}
    what = (f"cannot build model {config.model.name!r} from model.kwargs="
            f"{dict(config.model.kwargs)}; check the --config.model.kwargs.* values"
            if task_name == "classification" else
            f"cannot build the models of task {task_name!r}; check their --config.* settings")
    with _bad_value(what):
      self.engine = Engine(self.task, self.mesh, example, total_steps=self.num_steps,
                           dtype=config.dtype, grad_accum_steps=config.grad_accum_steps,
                           nonfinite=config.nonfinite)
    self.checkpointer = checkpoint.Checkpointer(
        os.path.join(self.workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
        best_metric=self.task.best_metric, best_mode=self.task.best_mode,
        async_save=config.async_checkpoints,
        cleanup_tmp=not lock.held_by_another_live_run(self.workdir))

  def data_iterator(self):
    return pipeline.train_iterator(
        self.train_source, num_batches=self.num_steps, **self._pipeline_args,
        batches_per_transfer=platform.batches_per_transfer(
            self.config.batches_per_transfer, jax.default_backend()))

  def abstract_state(self):
    return checkpoint.abstract_with_shardings(self.engine.abstract_state,
                                              self.engine.state_shardings)

  def restore_or_init(self, data_iterator=None):
    """(state, resumed step or None) from the newest checkpoint that verifies;
    the data iterator ends at that step's position, or at its start."""
    start = data_iterator.get_state() if data_iterator is not None else None
    try:
      state, step = self.checkpointer.restore_latest(self.abstract_state(), data_iterator)
    except checkpoint.NoUsableCheckpointError as e:
      if not self.config.start_over:
        raise
      for s in e.steps:
        self.checkpointer.quarantine(s)
      moved = jlog.set_aside_metrics(self.workdir, "before_start_over")
      print(f"warning: no checkpoint verifies; starting over from step 0 (config.start_over)"
            f"; steps {e.steps} moved to corrupt/"
            + (f", the old metrics to {moved}" if moved else ""), file=sys.stderr)
      state, step = None, None
    if step is None:
      if data_iterator is not None:
        data_iterator.set_state(start)  # a failed attempt may have moved it
      return self.engine.init_state(self.config.seed), None
    return state, step

  def evaluate(self, state, step: int) -> tuple[dict[str, float], dict[str, Any]]:
    """(eval scalars, the task's images and texts) at `step`."""
    bs = self.config.eval_batch_size or self.config.batch_size
    metrics = self.engine.evaluate(state, pipeline.eval_batches(
        self.test_source, global_batch_size=bs, process_index=self.pindex,
        process_count=self.pcount, mean=self.mean, std=self.std))
    extras = self.task.on_evaluate(state, self.workdir, step) or {}
    metrics.update({k: float(v) for k, v in extras.items() if isinstance(v, (int, float))})
    return metrics, {k: v for k, v in extras.items() if not isinstance(v, (int, float))}


def train_and_evaluate(config, workdir: str, *, stream=None, mesh=None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary dict."""
  return train(config, workdir, stream=stream, mesh=mesh)[0]


def train(config, workdir: str, *, stream=None, mesh=None):
  """(summary, run, final state). `mesh` defaults to every device. Raises
  ConfigError / DataError / WorkdirError / WorkdirLockedError / CheckpointError /
  NonFiniteError with one-line messages, Preempted after a SIGTERM/SIGINT."""
  mesh = mesh or parallel.make_mesh()
  configs.validate(config, mesh.size)  # a bad flag must not create or lock a workdir
  workdir = prepare_workdir(workdir)
  with lock.WorkdirLock(workdir, enabled=jax.process_index() == 0) as held, \
      preemption.Watch(release=held.release) as watch:
    try:
      return _train(Run(config, workdir, mesh=mesh), stream, watch)
    except OSError as e:
      if isinstance(e, (WorkdirError, lock.WorkdirLockedError)):
        raise
      where = f" ({e.filename})" if getattr(e, "filename", None) else ""
      raise WorkdirError(
          f"writing to workdir {workdir} failed: {e.strerror or e}{where}; the disk may "
          "be full or the folder unwritable; committed checkpoints are intact, "
          "relaunch to resume") from None


def _train(run: Run, stream, watch: preemption.Watch):
  t_start = time.perf_counter()
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
    return {**saved, "resumed_from": resumed}, run, state
  # Only now, with the checkpoint accepted for this config: a refused launch
  # (another model's checkpoint) must leave the run's config.json as it was.
  jlog.write_json(os.path.join(run.workdir, "config.json"), cfg.to_dict())
  eval_every = cfg.eval_every or run.steps_per_epoch
  ckpt_every = cfg.checkpoint_every or eval_every
  writer = jlog.MetricWriter(run.workdir, tensorboard=cfg.tensorboard, resume_step=start)
  progress = jlog.Progress(run.num_steps, start, cfg.batch_size, stream=stream,
                           every=cfg.log_every, shown=run.task.shown_metrics)
  if resumed is not None:
    progress.write(f"resumed from step {resumed} in {ckpt.directory}")
  else:
    table, _ = model_summary.write_model_summary(run.workdir, run.task, run.batches(0))
    progress.write(table)
  health = Health(cfg.nonfinite, engine.guard_names(), int(state.health["bad_steps"]))
  t_first, pending, eval_metrics = None, None, {}
  t_train = time.perf_counter()

  def log(entry, write=True):  # (step, device metrics), fetched one step late
    host = parallel.to_host(entry[1])
    h = host.pop("health")
    host = {k: float(v) for k, v in host.items()}
    health.check(entry[0], {k: int(v) for k, v in h.items()}, host, progress, ckpt)
    if write:
      writer.write_scalars(entry[0], "train", host)
      progress.update(entry[0], host)

  blocks = isinstance(it, pipeline.BlockIterator)
  stopped = None  # the step a SIGTERM / SIGINT stopped the run at
  try:
    for step in range(start + 1, run.num_steps + 1):
      if blocks:  # one transfer per K steps; the step picks its batch
        state, metrics = engine.train_step_in_block(
            state, it.next_device_block(lambda b: parallel.global_block(b, run.mesh)))
      else:
        state, metrics = engine.train_step(state, parallel.global_batch(next(it), run.mesh))
      if engine.serial:
        jax.block_until_ready(state)
      faults.point("step", step)
      if t_first is None:
        jax.block_until_ready(metrics)
        t_first = time.perf_counter() - t_train
      if pending is not None:
        log(pending)
        pending = None
      if step % cfg.log_every == 0 or step == run.num_steps:
        pending = (step, metrics)
      else:
        progress.update(step)
      do_eval = step % eval_every == 0 or step == run.num_steps
      stop = watch.stop_at(step)
      do_ckpt = step % ckpt_every == 0 or step == run.num_steps or stop
      if do_eval or do_ckpt:  # the health is checked before anything is saved
        log(pending or (step, metrics), write=pending is not None)
        pending = None
      if do_eval:
        eval_metrics, extras = run.evaluate(state, step)
        writer.write_eval(step, eval_metrics, extras)
        progress.write(f"eval step {step}: " + " ".join(
            f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items())))
      if do_ckpt:
        if stop:  # the previous save first, within the grace period
          watch.await_save(ckpt, step, cfg.preemption_grace_s)
        ckpt.save(step, state, it, metrics=eval_metrics if do_eval else None)
        faults.point("save", step)
      if stop:
        stopped = step
        watch.await_save(ckpt, step, cfg.preemption_grace_s)
        break
    ckpt.wait()
  except BaseException:
    _close_quietly(ckpt)  # the first error is the one to report
    writer.close()
    raise
  finally:
    progress.close()
  ckpt.close()
  if stopped is not None:
    writer.close()
    raise preemption.Preempted(stopped, watch.signum)
  if not eval_metrics and resumed is not None:  # e.g. killed before summary.json
    eval_metrics, _ = run.evaluate(state, start)
  writer.write_hparams(jlog.flatten_hparams(cfg), eval_metrics)
  writer.close()
  train_time = time.perf_counter() - t_train
  steps_done = run.num_steps - start
  summary = {
      "final_step": run.num_steps,
      "resumed_from": resumed,
      "eval": eval_metrics,
      "wall_time_s": time.perf_counter() - t_start,
      "first_step_s": t_first,
      "examples_per_sec": (steps_done * cfg.batch_size / train_time) if steps_done else 0.0,
      "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
      "num_devices": run.mesh.size,
      "num_processes": run.pcount,
      "params_sha256": params_sha256(state.params),
      "skipped_steps": health.bad_steps if cfg.nonfinite == "skip" else 0,
  }
  jlog.write_json(os.path.join(run.workdir, "summary.json"), summary)
  return summary, run, state


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
  return saved if parallel.agree(ok) else None


def _close_quietly(ckpt) -> None:
  try:
    ckpt.close()
  except Exception as e:  # pylint: disable=broad-except
    print(f"warning: {e}", file=sys.stderr, flush=True)


