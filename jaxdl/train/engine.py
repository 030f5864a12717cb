"""The compiled core: state construction, train step and eval step.

One `jax.jit` each over the ('data',) mesh: the batch is sharded along 'data',
the state replicated (`NamedSharding`), the state donated to the train step.
The state is never materialised on one device first: shapes come from
`jax.eval_shape(init)` and the real state from `jax.jit(init, out_shardings=...)`
(the PRNG-heavy init runs compiled, once).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import parallel
from jaxdl.train.state import TrainState, step_key
from jaxdl.train.task import Task


class Engine:
  """Compiles a Task's functions for a mesh."""

  def __init__(self, task: Task, mesh, example_batch: dict[str, Any]):
    self.task, self.mesh = task, mesh
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
      return new_state.replace(step=state.step + 1), metrics

    self.train_step = jax.jit(
        train_step, donate_argnums=(0,),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, self.replicated))

    def eval_step(state: TrainState, batch):
      sums = task.eval_metrics(state, batch)
      sums = dict(sums, count=jnp.sum(batch["mask"]))
      return sums

    self.eval_step = jax.jit(eval_step,
                             in_shardings=(self.state_shardings, self.batch_sharding),
                             out_shardings=self.replicated)

  def init_state(self, seed: int) -> TrainState:
    return self._init(seed)

  def evaluate(self, state: TrainState, batches) -> dict[str, float]:
    """Means over a split of the task's per-example metric sums."""
    total = None
    for batch in batches:
      sums = self.eval_step(state, parallel.global_batch(batch, self.mesh))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = parallel.to_host(total)
    count = float(total.pop("count"))
    return {k: float(v) / max(count, 1.0) for k, v in total.items()}


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads,
                    **replace) -> tuple[TrainState, jax.Array]:
  """Optimizer update; returns the new state and the update's global norm."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(params=params, opt_state=opt_state, **replace), optax.tree.norm(updates)
