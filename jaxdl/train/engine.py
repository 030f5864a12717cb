"""The compiled core: state construction, train step and eval step.

One `jax.jit` each over the ('data',) mesh: the batch is sharded along 'data',
the state replicated (`NamedSharding`), the state donated to the train step.
The state is never materialised on one device first: shapes come from
`jax.eval_shape(init)` and the real state from `jax.jit(init, out_shardings=...)`.

What every task shares lives here, inside that one train step:
  * the optimizers: one per `task.param_groups()` entry, from its config
    section (`jaxdl.train.optim.make_optimizer`), their states built here;
  * gradient accumulation (`grad_accum_steps` = k): the batch is split into k
    micro-batches (rows i, i+k, ... so each device keeps its own rows) in a
    `lax.scan`, their gradients and metrics averaged with the weights
    `task.loss_weight` gives, so k micro-batches equal the whole batch;
  * the compute dtype: with `dtype='bfloat16'` the params and float inputs
    are cast to bf16 for the forward and backward pass; gradients come back
    float32, params, optimizer state and model state stay float32;
  * the non-finite guard: a step is bad when a `task.guarded_metrics` value,
    or the norm of a gradient or update of any `ctx.apply` (where a bad
    gradient shows; the norms are the metrics' own), is NaN/Inf; a task that
    never calls `ctx.apply` has its new params and optimizer state scanned.
    `nonfinite='skip'` keeps the old params/optimizer/model state (`jnp.where` on the flag, as
    `optax.apply_if_finite` does for one optimizer; here for the whole step,
    every optimizer of it at once); 'stop' applies it and the loop stops at
    its next check. The counts live in `state.health` (checkpointed and
    checksummed with the state): no second jitted call, no host sync.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import parallel
from jaxdl.ops import platform
from jaxdl.train import optim
from jaxdl.train.state import TrainState, new_health, step_key
from jaxdl.train.task import Task

NONFINITE_MODES = ("stop", "skip")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def unit_scale(x):
  """uint8 pixels sent as bytes -> float32 in [0, 1] (on the device)."""
  return x.astype(jnp.float32) * np.float32(1 / 255) if x.dtype == jnp.uint8 else x


def _all_finite(tree) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _cast_like(tree, like):
  return jax.tree.map(lambda x, y: x.astype(y.dtype) if hasattr(y, "dtype") else x,
                      tree, like)


class NonFiniteError(FloatingPointError):
  """A loss, gradient or parameter went NaN/Inf with `config.nonfinite='stop'`."""


class StepContext:
  """What a task's `train_update` gets from the engine (inside the jit)."""

  def __init__(self, engine: "Engine", step: jax.Array):
    self._engine, self._step = engine, step
    self.dtype = engine.dtype
    self.accum_steps = engine.accum_steps
    self.finite_updates: list[jax.Array] = []  # one flag per `apply` (the guard's)

  def compute(self, tree):
    """Floating leaves cast to the compute dtype (identity for float32)."""
    if self.dtype == jnp.float32:
      return tree
    return jax.tree.map(lambda x: x.astype(self.dtype)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

  def accumulate(self, grad_fn: Callable, params, model_state, batch, key):
    """(grads, model_state, metrics) of `grad_fn(params, model_state, batch,
    key) -> (grads, model_state, metrics)` over the step's micro-batches,
    params and float inputs in the compute dtype, gradients in the params'
    dtype. Micro-batch i gets key fold_in(key, i) (the whole batch: `key`)."""
    task = self._engine.task

    def one(ms, mb, k):
      g, ms_new, m = grad_fn(self.compute(params), ms, self.compute(mb), k)
      m = {n: jnp.asarray(v, jnp.float32) for n, v in m.items()}
      return _cast_like(g, params), _cast_like(ms_new, ms), m

    n = self.accum_steps
    if n == 1:
      return one(model_state, batch, key)
    micro = jax.tree.map(
        lambda x: x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, xs):
      acc_g, acc_m, acc_w, ms = carry
      mb, i = xs
      g, ms, m = one(ms, mb, None if key is None else jax.random.fold_in(key, i))
      w = jnp.asarray(task.loss_weight(mb), jnp.float32)
      acc_g = jax.tree.map(lambda a, b: a + w * b, acc_g, g)
      acc_m = jax.tree.map(lambda a, b: a + w * b, acc_m, m)
      return (acc_g, acc_m, acc_w + w, ms), None

    first = jax.tree.map(lambda x: x[0], micro)
    m_shape = jax.eval_shape(lambda: one(model_state, first, key)[2])
    init = (jax.tree.map(jnp.zeros_like, params),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape),
            jnp.float32(0), model_state)
    (g, m, w, model_state), _ = jax.lax.scan(body, init, (micro, jnp.arange(n)))
    w = jnp.maximum(w, jnp.finfo(jnp.float32).tiny)
    return (jax.tree.map(lambda x: (x / w).astype(x.dtype), g), model_state,
            jax.tree.map(lambda x: x / w, m))

  def grads(self, loss_fn: Callable, params, model_state, batch, key):
    """`accumulate` of the gradient of `loss_fn(params, model_state, batch,
    key) -> (loss, (model_state, metrics))`; metrics include 'loss'."""
    def grad_fn(p, ms, b, k):
      (loss, (ms, m)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, ms, b, k)
      return g, ms, {**m, "loss": loss}
    return self.accumulate(grad_fn, params, model_state, batch, key)

  def apply(self, group: str, grads, params, opt_state):
    """(params, opt_state, stats) after group `group`'s optimizer step on its
    params (`params` and `opt_state` are the group's own); stats: grad_norm,
    update_norm, learning_rate."""
    tx, schedule = self._engine.optimizers[group]
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    stats = {"grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates),
             "learning_rate": jnp.asarray(schedule(self._step), jnp.float32)}
    # A NaN/Inf gradient makes its norm or the update's non-finite: the guard
    # reads these norms (computed for the metrics anyway), not the params.
    self.finite_updates.append(jnp.isfinite(stats["grad_norm"] + stats["update_norm"]))
    return params, opt_state, stats

  def switch(self, index, branches, operand):
    """`jax.lax.switch` for branches that call `apply` (their guard flags are
    returned from the branch; a flag must not leak out of a traced branch)."""
    def wrap(branch):
      def run(op):
        outer, self.finite_updates = self.finite_updates, []
        out = branch(op)
        flags, self.finite_updates = self.finite_updates, outer
        return out, jnp.all(jnp.stack(flags)) if flags else jnp.array(True)
      return run
    out, finite = jax.lax.switch(index, [wrap(b) for b in branches], operand)
    self.finite_updates.append(finite)
    return out


class Engine:
  """Compiles a Task's functions for a mesh."""

  def __init__(self, task: Task, mesh, example_batch: dict[str, Any], *,
               total_steps: int = 0, dtype: str = "float32", grad_accum_steps: int = 1,
               nonfinite: str = "stop"):
    if nonfinite not in NONFINITE_MODES:
      raise ValueError(f"nonfinite={nonfinite!r}: choose one of {NONFINITE_MODES}")
    if dtype not in DTYPES:
      raise ValueError(f"dtype={dtype!r}: choose one of {tuple(DTYPES)}")
    self.task, self.mesh, self.nonfinite = task, mesh, nonfinite
    self.dtype, self.accum_steps = DTYPES[dtype], int(grad_accum_steps)
    self.serial = parallel.serial_dispatch()
    self.replicated = parallel.replicated(mesh)
    self.batch_sharding = parallel.batch_sharding(mesh)
    self.groups = task.param_groups()
    self.optimizers = {
        name: optim.make_optimizer(g.optimizer, total_steps if g.total_steps is None
                                   else g.total_steps)
        for name, g in self.groups.items()}
    # Global shapes of a batch (the example may be per-process or global).
    self._example = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
                     for k, v in example_batch.items()}
    self.trace_count = 0  # how many times the train step was traced

    def init(seed):
      init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
      params, model_state = task.init(init_key, self._example)
      return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                        opt_state=self.init_opt_state(params), model_state=model_state,
                        rng=rng, health=new_health())

    self.abstract_state = jax.eval_shape(init, 0)
    self.state_shardings = jax.tree.map(lambda _: self.replicated, self.abstract_state)
    # Run once: on CPU compiled at LLVM -O1, the same values in a fraction of
    # the time (`platform.init_compiler_options`).
    self._init = jax.jit(init, static_argnums=0, out_shardings=self.state_shardings,
                         compiler_options=platform.init_compiler_options(
                             mesh.devices.flat[0].platform))
    self.train_step = jax.jit(
        self._train_step, donate_argnums=(0,),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, self.replicated))

    def train_step_in_block(state: TrainState, block):
      # A block holds K consecutive batches, aligned so that block j is
      # batches [jK, jK + K): this step's batch is number state.step % K.
      k = jax.tree.leaves(block)[0].shape[0]
      batch = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(
          a, state.step % k, 0, keepdims=False), block)
      if "inputs" in batch:  # uint8 images sent as bytes (see BlockIterator.block)
        batch["inputs"] = unit_scale(batch["inputs"])
      return self._train_step(state, batch)

    # The same step, its batch taken on the device from a block of K batches
    # sent at once (`pipeline.BlockIterator`); the block serves K steps.
    self.train_step_in_block = jax.jit(
        train_step_in_block, donate_argnums=(0,),
        in_shardings=(self.state_shardings, parallel.block_sharding(mesh)),
        out_shardings=(self.state_shardings, self.replicated))

    def eval_step(state: TrainState, batch, total):
      sums = dict(task.eval_metrics(state, batch), count=jnp.sum(batch["mask"]))
      return sums if total is None else jax.tree.map(jnp.add, total, sums)

    # Sums accumulate inside jit: no eager op ever touches a global array (in
    # multi-process runs every process must run the same compiled programs).
    self.eval_step = jax.jit(eval_step, out_shardings=self.replicated)

  def init_opt_state(self, params):
    """One group over all params: its optimizer state; else {group: state}."""
    (name, group), *others = self.groups.items()
    if not others and group.key is None:
      return self.optimizers[name][0].init(params)
    return {name: self.optimizers[name][0].init(params if g.key is None else params[g.key])
            for name, g in self.groups.items()}

  def guard_names(self) -> list[str]:
    """What the bits of `health['first_bad_what']` stand for, in order."""
    return [*self.task.guarded_metrics, "gradients or updates"]

  def _train_step(self, state: TrainState, batch):
    self.trace_count += 1
    ctx = StepContext(self, state.step)
    new_state, metrics = self.task.train_update(ctx, state, batch, step_key(state))
    bits = [_all_finite(metrics[k]) for k in self.task.guarded_metrics if k in metrics]
    # A NaN/Inf gradient: the norms of every `ctx.apply` (free); a task that
    # updates its params otherwise gets them scanned (5-10% of a small step).
    bits.append(jnp.all(jnp.stack(ctx.finite_updates)) if ctx.finite_updates
                else _all_finite((new_state.params, new_state.opt_state)))
    finite = jnp.all(jnp.stack(bits))
    if self.nonfinite == "skip":
      # Keep the old params/optimizer/model state; only the step advances.
      new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    h = state.health
    bad = ~finite
    what = sum((~b).astype(jnp.int32) << i for i, b in enumerate(bits))
    new = (h["first_bad_step"] == 0) & bad
    health = {"bad_steps": h["bad_steps"] + bad.astype(jnp.int32),
              "first_bad_step": jnp.where(new, state.step + 1, h["first_bad_step"]),
              "first_bad_what": jnp.where(new, what, h["first_bad_what"])}
    # `health` also travels with the metrics: the state is donated to the next step.
    metrics = dict(metrics, nonfinite=bad.astype(jnp.float32), health=health)
    return new_state.replace(step=state.step + 1, rng=state.rng, health=health), metrics

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


class Health:
  """Reads `state.health` on the host: stops the run ('stop') or reports the
  skipped updates ('skip')."""

  def __init__(self, mode: str, names: list[str], bad_steps: int):
    self.mode, self.names, self.bad_steps = mode, names, bad_steps

  def check(self, step: int, h: dict[str, int], host: dict, progress, ckpt) -> None:
    before, self.bad_steps = self.bad_steps, h["bad_steps"]
    if self.mode == "skip":
      host["skipped_steps"] = float(self.bad_steps)
      if self.bad_steps > before:
        progress.write(f"warning: skipped {self.bad_steps - before} update(s) with "
                       f"non-finite values up to step {step} ({self.bad_steps} in all)")
      return
    if not h["first_bad_step"]:
      return
    what = [n for i, n in enumerate(self.names) if h["first_bad_what"] >> i & 1]
    try:
      ckpt.wait()
    except Exception:  # pylint: disable=broad-except
      pass  # reported below as "latest committed"
    latest = ckpt.latest_step()
    good = (f"step {latest} in {ckpt.directory}" if latest is not None
            else "none yet (the run would start over)")
    raise NonFiniteError(
        f"non-finite {' and '.join(what) or 'values'} at step {h['first_bad_step']} "
        f"(config.nonfinite='stop'); nothing after it was saved; last good checkpoint: "
        f"{good}; relaunch to resume from it (e.g. with a lower "
        f"--config.optimizer.learning_rate), or pass --config.nonfinite=skip to drop "
        f"such updates")
