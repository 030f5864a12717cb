"""A Task is what an experiment trains; the engine compiles around it.

The engine (`jaxdl.train.engine`) owns the mesh, shardings, jit, donation,
the step counter and the step key. A task supplies pure functions:

  init(key, batch)              -> (params, opt_state, model_state)
  train_update(state, batch, key) -> (state, metrics)
      one optimisation step; `key` is already fold_in(rng, step); return the
      state with new params/opt_state/model_state (leave `step` and `rng`
      alone: the engine advances them). `metrics` is a flat dict of scalars.
  eval_metrics(state, batch)     -> dict of per-example SUMS over the batch,
      weighted by batch['mask'] (0 for padding rows of the last eval batch);
      the engine adds them up over the split and divides by the mask's sum.
  finalize_eval(metrics)         -> those means, turned into the reported
      metrics on the host (e.g. perplexity = exp(token loss / token count));
      the default returns them unchanged.
  on_evaluate(state, workdir, step) -> dict of host-side extras (PNG grids,
      FID...), run on every process after each evaluation; only process 0
      should write files (`jax.process_index() == 0`).

Batches are dicts of arrays: 'inputs', plus 'label' for supervised data, and
'mask' (float32, 1 for real rows) in evaluation batches.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxdl.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Task:
  """Base class; see the module docstring for the contract."""

  name = "task"
  # Name of the eval metric used to pick the best checkpoint, and its mode.
  best_metric = "loss"
  best_mode = "min"

  def init(self, key: jax.Array, batch: Batch) -> tuple[Any, Any, Any]:
    raise NotImplementedError

  def train_update(self, state: TrainState, batch: Batch,
                   key: jax.Array) -> tuple[TrainState, Metrics]:
    raise NotImplementedError

  def eval_metrics(self, state: TrainState, batch: Batch) -> Metrics:
    raise NotImplementedError

  def finalize_eval(self, metrics: dict[str, float]) -> dict[str, float]:
    return metrics

  def on_evaluate(self, state: TrainState, workdir: str, step: int) -> dict:
    return {}
