"""The compiled core: state construction, train step and eval step.

One `jax.jit` each over the ('data',) mesh: the batch is sharded along 'data',
the state replicated (`NamedSharding`), the state donated to the train step.
The state is never materialised on one device first: shapes come from
`jax.eval_shape(init)` and the real state from `jax.jit(init, out_shardings=...)`
(the PRNG-heavy init runs compiled, once).

Every train step also reports `metrics['nonfinite']` (1.0 when a loss, a
gradient norm or a new parameter is NaN/Inf). With `nonfinite='skip'` such an
update is dropped inside the step (`jnp.where` on the flag: params, optimizer
and model state unchanged, only `step` advances); with 'stop' (the default)
the update is applied and the training loop stops at its next check.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import parallel
from jaxdl.data import pipeline
from jaxdl.train.state import TrainState, step_key
from jaxdl.train.task import Task


NONFINITE_MODES = ("stop", "skip")


def checked_metrics(metrics: dict[str, Any]) -> list[str]:
  """The metrics whose non-finite value marks a bad step: losses and grad norms."""
  return sorted((k for k in metrics if k.endswith("loss") or "grad_norm" in k),
                key=lambda k: (not k.endswith("loss"), k))


def step_is_finite(metrics: dict[str, Any], params: Any) -> jax.Array:
  """A bool scalar: every checked metric and every new parameter is finite.

  Generic over tasks: NaN/Inf gradients reach the params through the update,
  so params + losses catch them without the task's cooperation.
  """
  flags = [jnp.all(jnp.isfinite(metrics[k])) for k in checked_metrics(metrics)]
  flags += [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


class Engine:
  """Compiles a Task's functions for a mesh."""

  def __init__(self, task: Task, mesh, example_batch: dict[str, Any],
               nonfinite: str = "stop"):
    if nonfinite not in NONFINITE_MODES:
      raise ValueError(f"nonfinite={nonfinite!r}: choose one of {NONFINITE_MODES}")
    self.task, self.mesh, self.nonfinite = task, mesh, nonfinite
    self.serial = parallel.serial_dispatch()
    self.replicated = parallel.replicated(mesh)
    self.batch_sharding = parallel.batch_sharding(mesh)
    # Global shapes of a batch (the example may be per-process or global).
    self._example = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
                     for k, v in example_batch.items()}
    self.trace_count = 0  # how many times the train step was traced

    def init(seed):
      key = jax.random.PRNGKey(seed)
      init_key, rng = jax.random.split(key)
      params, opt_state, model_state = task.init(init_key, self._example)
      return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                        opt_state=opt_state, model_state=model_state, rng=rng)

    self.abstract_state = jax.eval_shape(init, 0)
    self.state_shardings = jax.tree.map(lambda _: self.replicated, self.abstract_state)
    self._init = jax.jit(init, static_argnums=0, out_shardings=self.state_shardings)

    def train_step(state: TrainState, batch):
      self.trace_count += 1
      new_state, metrics = task.train_update(state, batch, step_key(state))
      finite = step_is_finite(metrics, new_state.params)
      if nonfinite == "skip":
        # Keep the old params/optimizer/model state; only the step advances.
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
      metrics = dict(metrics, nonfinite=1.0 - finite.astype(jnp.float32))
      return new_state.replace(step=state.step + 1), metrics

    self.train_step = jax.jit(
        train_step, donate_argnums=(0,),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, self.replicated))

    def train_step_in_block(state: TrainState, block):
      # A block holds K consecutive batches, aligned so that block j is
      # batches [jK, jK + K): this step's batch is number state.step % K.
      k = jax.tree.leaves(block)[0].shape[0]
      i = state.step % k
      batch = jax.tree.map(
          lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), block)
      if "inputs" in batch:  # uint8 images sent as bytes (see BlockIterator.block)
        batch["inputs"] = pipeline.device_unit_scale(batch["inputs"])
      return train_step(state, batch)

    # The same step, its batch taken on the device from a block of K batches
    # sent at once (`pipeline.BlockIterator`); the block is not donated, it
    # serves K steps.
    self.train_step_in_block = jax.jit(
        train_step_in_block, donate_argnums=(0,),
        in_shardings=(self.state_shardings, parallel.block_sharding(mesh)),
        out_shardings=(self.state_shardings, self.replicated))

    def eval_step(state: TrainState, batch, total):
      sums = task.eval_metrics(state, batch)
      sums = dict(sums, count=jnp.sum(batch["mask"]))
      return sums if total is None else jax.tree.map(jnp.add, total, sums)

    # Sums accumulate inside jit: no eager op ever touches a global array (in
    # multi-process runs every process must run the same compiled programs).
    self.eval_step = jax.jit(eval_step, out_shardings=self.replicated)

  def init_state(self, seed: int) -> TrainState:
    return self._init(seed)

  def evaluate(self, state: TrainState, batches) -> dict[str, float]:
    """Means over a split of the task's per-example metric sums."""
    total = None
    for batch in batches:
      total = self.eval_step(state, parallel.global_batch(batch, self.mesh), total)
      if self.serial:
        jax.block_until_ready(total)
    total = parallel.to_host(total)
    count = float(total.pop("count"))
    return self.task.finalize_eval(
        {k: float(v) / max(count, 1.0) for k, v in total.items()})


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads,
                    **replace) -> tuple[TrainState, jax.Array]:
  """Optimizer update; returns the new state and the update's global norm."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(params=params, opt_state=opt_state, **replace), optax.tree.norm(updates)
