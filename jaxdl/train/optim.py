"""Optimizers, schedules and penalties from a config, through optax."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdl.configs import OPTIMIZER_HYPERPARAMS, ConfigError, optimizer_config

# Each optimizer's own hyperparameters at torch.optim's defaults (the one
# place they are written; a config leaves them None). 'momentum' and
# 'nesterov' are torch's SGD with momentum=0.9 (torch's SGD has 0). Adam's
# eps is outside the square root, as in torch; RMSprop's too (torch's alpha is
# our `decay`). `weight_decay` is decoupled (w -= lr * wd * w after the
# update) for every optimizer; only AdamW's is non-zero by default (torch's
# 1e-2). Keras' values differ (RMSprop rho 0.9, eps 1e-7; Adagrad initial
# accumulator 0.1; AdamW weight decay 0.004): set them explicitly to match.
HYPERPARAMS = {
    "sgd": dict(weight_decay=0.0),
    "momentum": dict(momentum=0.9, weight_decay=0.0),
    "nesterov": dict(momentum=0.9, weight_decay=0.0),
    "adam": dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
    "adamw": dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2),
    "adagrad": dict(eps=1e-10, initial_accumulator_value=0.0, weight_decay=0.0),
    "rmsprop": dict(decay=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0),
}
OPTIMIZERS = tuple(HYPERPARAMS)
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine")


def complete(cfg: Any) -> ml_collections.ConfigDict:
  """`cfg` (a whole or partial optimizer section) with every field: the
  common ones from `configs.optimizer_config()`, the optimizer's own from
  HYPERPARAMS where `cfg` leaves them None. A hyperparameter the optimizer
  does not have is a ConfigError naming it."""
  given = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  out = optimizer_config(**given).to_dict()  # (an unknown field is an error)
  name = out["name"]
  if name not in HYPERPARAMS:
    raise ConfigError(f"unknown optimizer {name!r}: choose one of {OPTIMIZERS} "
                      "(--config.optimizer.name=...)")
  own = HYPERPARAMS[name]
  for k in OPTIMIZER_HYPERPARAMS:
    if out[k] is None:
      out[k] = own.get(k)
    elif k not in own:
      raise ConfigError(f"optimizer.{k}={out[k]} does not apply to {name} (its own: "
                        f"{', '.join(sorted(own))}); drop --config.optimizer.{k} or "
                        "choose another --config.optimizer.name")
  return ml_collections.ConfigDict(out)


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
  return _schedule(complete(cfg), total_steps)


def _schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  lr = float(cfg.learning_rate)
  kind = cfg.schedule
  decay_steps = int(cfg.decay_steps or total_steps)
  if kind == "constant":
    return optax.constant_schedule(lr)
  if kind == "step":
    # Multiply by `step_factor` at each boundary (fractions of decay_steps or steps).
    boundaries = [int(b * decay_steps) if b < 1 else int(b) for b in cfg.step_boundaries]
    return optax.piecewise_constant_schedule(
        lr, {b: float(cfg.step_factor) for b in boundaries})
  if kind == "cosine":
    return optax.cosine_decay_schedule(lr, max(decay_steps, 1),
                                       alpha=float(cfg.final_fraction))
  if kind == "warmup_cosine":
    warmup = int(cfg.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(decay_steps, warmup + 1),
        end_value=lr * float(cfg.final_fraction))
  raise ConfigError(f"unknown schedule {kind!r}: choose one of {SCHEDULES} "
                   "(--config.optimizer.schedule=...)")


def _l1_penalty(l1: float) -> optax.GradientTransformation:
  """Adds the gradient of l1 * sum|w| (its subgradient sign(w))."""
  def update(updates, state, params):
    return jax.tree.map(lambda g, p: g + l1 * jnp.sign(p), updates, params), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg: Any, total_steps: int = 0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optax transformation, learning-rate schedule) from `config.optimizer`.

  Fields (`configs.optimizer_config`): name, learning_rate, schedule (+
  warmup_steps, decay_steps, step_boundaries, step_factor, final_fraction),
  the optimizer's own hyperparameters (HYPERPARAMS: momentum, b1, b2, eps,
  decay, initial_accumulator_value, weight_decay), l1 and l2 (penalties
  added to the gradient, i.e. l2 * w and l1 * sign(w)), grad_clip_norm
  (global norm, 0 = off).
  """
  cfg = complete(cfg)
  name = cfg.name
  schedule = _schedule(cfg, total_steps)
  if name == "sgd":
    opt = optax.sgd(schedule)
  elif name in ("momentum", "nesterov"):
    opt = optax.sgd(schedule, momentum=cfg.momentum, nesterov=name == "nesterov")
  elif name == "adam":
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay)
  elif name == "adagrad":
    opt = optax.adagrad(schedule, initial_accumulator_value=cfg.initial_accumulator_value,
                        eps=cfg.eps)
  else:  # rmsprop
    opt = optax.rmsprop(schedule, decay=cfg.decay, eps=cfg.eps, eps_in_sqrt=False,
                        momentum=cfg.momentum or None)
  chain = []
  if cfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
  if cfg.l2 > 0:
    chain.append(optax.add_decayed_weights(float(cfg.l2)))
  if cfg.l1 > 0:
    chain.append(_l1_penalty(float(cfg.l1)))
  chain.append(opt)
  if cfg.weight_decay > 0 and name != "adamw":
    # Decoupled decay after the optimizer: w -= lr(step) * wd * w, as AdamW's.
    chain.append(_scaled_decay(float(cfg.weight_decay), schedule))
  return optax.chain(*chain), schedule


def _scaled_decay(wd: float, schedule: Callable) -> optax.GradientTransformation:
  def init(_):
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    lr = schedule(state.count)
    new = jax.tree.map(lambda u, p: u - lr * wd * p, updates, params)
    return new, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return optax.GradientTransformation(init, update)
