"""`train_and_evaluate(config, workdir)`: the training loop every experiment runs.

Starting on a workdir that holds checkpoints resumes from the latest one: the
train state (params, optimizer, model state, rng, step) and the input
pipeline's position, so the resumed run sees exactly the batches, and draws
exactly the random numbers, of the uninterrupted run.

Workdir layout: config.json, metrics.jsonl, summary.json, tensorboard/,
checkpoints/<step>/{state,data}.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from jaxdl import checkpoint, configs, parallel
from jaxdl import logging as jlog
from jaxdl.data import load_dataset, pipeline
from jaxdl.tasks import build_task
from jaxdl.train.engine import Engine


class WorkdirError(OSError):
  """The workdir cannot be created or written."""


def prepare_workdir(workdir: str) -> str:
  if not workdir:
    raise WorkdirError("no workdir given; pass --workdir=DIR (the run's folder)")
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
    self.task = build_task(config, self.info, self.num_steps)
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
    self.engine = Engine(self.task, self.mesh, example)
    self.checkpointer = checkpoint.Checkpointer(
        os.path.join(self.workdir, "checkpoints"),
        max_to_keep=config.get("keep_checkpoints", 3),
        best_metric=self.task.best_metric, best_mode=self.task.best_mode,
        async_save=config.get("async_checkpoints", True))

  def data_iterator(self):
    aug = self.config.get("augment", {})
    return pipeline.train_iterator(
        self.train_source, global_batch_size=self.config.batch_size,
        seed=self.config.seed, num_batches=self.num_steps,
        process_index=self.pindex, process_count=self.pcount,
        crop_padding=aug.get("crop_padding", 0), flip=aug.get("flip", False),
        mean=self.mean, std=self.std)

  def abstract_state(self):
    return checkpoint.abstract_with_shardings(self.engine.abstract_state,
                                              self.engine.state_shardings)

  def restore_or_init(self, data_iterator=None):
    """(state, resumed step or None)."""
    latest = self.checkpointer.latest_step()
    if latest is None:
      return self.engine.init_state(self.config.seed), None
    state = self.checkpointer.restore(latest, self.abstract_state(), data_iterator)
    return state, latest

  def evaluate(self, state) -> dict[str, float]:
    bs = self.config.get("eval_batch_size") or self.config.batch_size
    return self.engine.evaluate(state, pipeline.eval_batches(
        self.test_source, global_batch_size=bs, process_index=self.pindex,
        process_count=self.pcount, mean=self.mean, std=self.std))


def train_and_evaluate(config, workdir: str, *, stream=None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary dict."""
  t_start = time.perf_counter()
  run = Run(config, workdir)
  cfg, engine, ckpt = run.config, run.engine, run.checkpointer
  _write_json(os.path.join(run.workdir, "config.json"), cfg.to_dict())
  it = run.data_iterator()
  state, resumed = run.restore_or_init(it)
  start = int(resumed or 0)
  eval_every = cfg.eval_every or run.steps_per_epoch
  ckpt_every = cfg.checkpoint_every or eval_every
  writer = jlog.MetricWriter(run.workdir, tensorboard=cfg.get("tensorboard", True))
  progress = jlog.Progress(run.num_steps, start, cfg.batch_size, stream=stream,
                           every=cfg.log_every)
  if resumed is not None:
    progress.write(f"resumed from step {resumed} in {ckpt.directory}")
  t_first = None
  pending = None  # (step, device metrics): fetched one step late
  eval_metrics: dict[str, float] = {}
  t_train = time.perf_counter()
  try:
    for step in range(start + 1, run.num_steps + 1):
      batch = parallel.global_batch(next(it), run.mesh)
      state, metrics = engine.train_step(state, batch)
      _fault_point("step", step)
      if t_first is None:
        jax.block_until_ready(metrics)
        t_first = time.perf_counter() - t_train
      if pending is not None:
        _log_train(writer, progress, *pending)
        pending = None
      if step % cfg.log_every == 0 or step == run.num_steps:
        pending = (step, metrics)
      else:
        progress.update(step)
      do_eval = step % eval_every == 0 or step == run.num_steps
      do_ckpt = step % ckpt_every == 0 or step == run.num_steps
      if do_eval or do_ckpt:
        if pending is not None:
          _log_train(writer, progress, *pending)
          pending = None
      if do_eval:
        eval_metrics = run.evaluate(state)
        eval_metrics.update(run.task.on_evaluate(state, run.workdir, step) or {})
        writer.write_scalars(step, "eval", eval_metrics)
        progress.write(f"eval step {step}: " + " ".join(
            f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items())))
      if do_ckpt:
        ckpt.save(step, state, it, metrics=eval_metrics if do_eval else None)
        _fault_point("save", step)
    if pending is not None:
      _log_train(writer, progress, *pending)
    ckpt.wait()
  finally:
    progress.close()
    writer.close()
    ckpt.close()
  if not eval_metrics and resumed is not None:
    eval_metrics = run.evaluate(state)
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
  }
  _write_json(os.path.join(run.workdir, "summary.json"), summary)
  return summary


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


def _log_train(writer, progress, step, metrics):
  host = {k: float(v) for k, v in parallel.to_host(metrics).items()}
  writer.write_scalars(step, "train", host)
  progress.update(step, host)
