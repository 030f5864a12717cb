"""A Task is what an experiment trains; the engine compiles around it.

The engine (`jaxdl.train.engine`) owns what every task shares: the mesh,
shardings, jit and donation, the step counter and the step key, the
optimizers (built from the config sections the task names in
`param_groups`), gradient accumulation, the compute dtype (bfloat16 compute
with float32 params and optimizer state) and the non-finite guard. A task
supplies pure functions:

  init(key, batch)  -> (params, model_state)
      the engine adds each group's optimizer state.
  loss(params, model_state, batch, key) -> (loss, (model_state, metrics))
      the scalar to minimise over `batch` and its metrics (scalars); `params`
      and the float inputs arrive in the compute dtype, so compute the loss
      in float32 (`.astype(jnp.float32)` on the outputs). The default
      `train_update` minimises it with the one group's optimizer.
  train_update(ctx, state, batch, key) -> (state, metrics)
      override where the algorithm needs its own update (alternating G/D,
      CD-k): `ctx.grads(loss_fn, ...)` / `ctx.accumulate(grad_fn, ...)` give
      accumulated gradients in the compute dtype, `ctx.apply(group, ...)` the
      group's optimizer step (see `jaxdl.train.engine.StepContext`; inside
      a `lax.switch`, use `ctx.switch`). Leave `step`, `rng` and `health` to
      the engine.
  loss_weight(batch) -> what the batch's loss is a mean over (rows by
      default, target tokens for the language model): micro-batches of an
      accumulated step are weighted by it, so that an accumulated step equals
      the whole batch's.
  eval_metrics(state, batch) -> dict of per-example SUMS over the batch,
      weighted by batch['mask'] (0 for padding rows of the last eval batch);
      the engine adds them up over the split and divides by the mask's sum.
  finalize_eval(metrics) -> those means turned into the reported metrics on
      the host (e.g. perplexity); the default returns them unchanged.
  on_evaluate(state, workdir, step) -> {name: value} computed on the host
      after each evaluation, on every process, writing no file: a float is an
      eval scalar (FID), an array [H, W, C] an image (a sample grid), a str a
      text; the training loop hands them to the writers (metrics.jsonl,
      TensorBoard, `workdir/NAME_{step:06d}.png|.txt`).

Declarations: `guarded_metrics` (a non-finite value of one of these, like a
non-finite gradient or parameter, marks the step as bad), `shown_metrics`
(the progress bar and the curves figure), `best_metric` / `best_mode`
(which checkpoint is the best). The rng streams a model draws from are its
own (`Model.rng_names`; `jaxdl.models.make_rngs(model, key)`).

Batches are dicts of arrays: 'inputs', plus 'label' for supervised data, and
'mask' (float32, 1 for real rows) in evaluation batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from jaxdl.configs import ConfigError
from jaxdl.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """Parameters trained by one optimizer.

  optimizer: a `config.optimizer`-style section (see `jaxdl.train.optim`).
  key: the entry of `params` the group trains (None: all of them).
  total_steps: the schedule's length (None: the run's steps).
  """

  optimizer: Any
  key: str | None = None
  total_steps: int | None = None


def section(config: Any, name: str, defaults: ml_collections.ConfigDict
            ) -> ml_collections.ConfigDict:
  """`defaults` (a task's config section at its defaults, the one place they
  are written) updated with `config[name]`; a field the defaults lack is a
  ConfigError naming it."""
  out = defaults.to_dict()
  given = config.get(name, None) if hasattr(config, "get") else None
  for k, v in (given.items() if given is not None else ()):
    if k not in out:
      raise ConfigError(f"{name}.{k}: no such field (the {name} section has "
                        f"{', '.join(sorted(out))}); check --config.{name}.*")
    out[k] = v.to_dict() if hasattr(v, "to_dict") else v
  return ml_collections.ConfigDict(out)


class Task:
  """Base class; see the module docstring for the contract."""

  name = "task"
  best_metric = "loss"
  best_mode = "min"
  guarded_metrics: tuple[str, ...] = ("loss",)
  shown_metrics: tuple[str, ...] = ("loss", "accuracy")
  # Set by tasks whose on_evaluate draws real images (FID, reconstructions):
  # the run hands them over with `set_reference_data` before training.
  wants_reference_images = False

  def param_groups(self) -> dict[str, ParamGroup]:
    """{group: ParamGroup}; one group over all params by default."""
    return {"all": ParamGroup(self.config.optimizer)}  # base_config() always has one

  def init(self, key: jax.Array, batch: Batch) -> tuple[Any, Any]:
    raise NotImplementedError

  def loss(self, params, model_state, batch: Batch, key: jax.Array):
    raise NotImplementedError

  def loss_weight(self, batch: Batch) -> jax.Array:
    return jax.numpy.float32(jax.tree.leaves(batch)[0].shape[0])

  def train_update(self, ctx, state: TrainState, batch: Batch,
                   key: jax.Array) -> tuple[TrainState, Metrics]:
    (group,) = self.param_groups()
    grads, model_state, metrics = ctx.grads(self.loss, state.params, state.model_state,
                                            batch, key)
    params, opt_state, stats = ctx.apply(group, grads, state.params, state.opt_state)
    return (state.replace(params=params, opt_state=opt_state, model_state=model_state),
            {**metrics, **stats})

  def eval_metrics(self, state: TrainState, batch: Batch) -> Metrics:
    raise NotImplementedError

  def finalize_eval(self, metrics: dict[str, float]) -> dict[str, float]:
    return metrics

  def on_evaluate(self, state: TrainState, workdir: str, step: int) -> dict:
    return {}

  def set_reference_data(self, train_images, train_labels, test_images) -> None:
    """Real float [N, H, W, C] images in [0, 1] (see `wants_reference_images`)."""
