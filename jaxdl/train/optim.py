"""Optimizers, schedules and penalties from a config, through optax."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jaxdl.configs import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine")


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
  lr = float(cfg.learning_rate)
  kind = cfg.get("schedule", "constant")
  decay_steps = int(cfg.get("decay_steps", 0) or total_steps)
  if kind == "constant":
    return optax.constant_schedule(lr)
  if kind == "step":
    # Multiply by `step_factor` at each boundary (fractions of decay_steps or steps).
    boundaries = [int(b * decay_steps) if b < 1 else int(b)
                  for b in cfg.get("step_boundaries", (0.5, 0.75))]
    factor = float(cfg.get("step_factor", 0.1))
    return optax.piecewise_constant_schedule(lr, {b: factor for b in boundaries})
  if kind == "cosine":
    return optax.cosine_decay_schedule(lr, max(decay_steps, 1),
                                       alpha=float(cfg.get("final_fraction", 0.0)))
  if kind == "warmup_cosine":
    warmup = int(cfg.get("warmup_steps", 0))
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(decay_steps, warmup + 1),
        end_value=lr * float(cfg.get("final_fraction", 0.0)))
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

  Fields: name, learning_rate, schedule (+ warmup_steps, decay_steps,
  step_boundaries, step_factor, final_fraction), momentum, b1, b2, eps,
  weight_decay (decoupled, adamw; for other optimizers added to the update),
  l1 and l2 (penalties added to the gradient, i.e. l2 * w and l1 * sign(w)),
  grad_clip_norm (global norm, 0 = off).
  """
  name = cfg.get("name", "adam")
  schedule = make_schedule(cfg, total_steps)
  if name == "sgd":
    opt = optax.sgd(schedule)
  elif name == "momentum":
    opt = optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.9)))
  elif name == "nesterov":
    opt = optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.9)), nesterov=True)
  elif name == "adam":
    opt = optax.adam(schedule, b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
                     eps=float(cfg.get("eps", 1e-8)))
  elif name == "adamw":
    opt = optax.adamw(schedule, b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
                      eps=float(cfg.get("eps", 1e-8)),
                      weight_decay=float(cfg.get("weight_decay", 1e-4)))
  elif name == "adagrad":
    opt = optax.adagrad(schedule, eps=float(cfg.get("eps", 1e-7)))
  elif name == "rmsprop":
    opt = optax.rmsprop(schedule, decay=float(cfg.get("decay", 0.9)),
                        eps=float(cfg.get("eps", 1e-8)),
                        momentum=float(cfg.get("momentum", 0.0)))
  else:
    raise ConfigError(f"unknown optimizer {name!r}: choose one of {OPTIMIZERS} "
                     "(--config.optimizer.name=...)")
  chain = []
  if float(cfg.get("grad_clip_norm", 0.0)) > 0:
    chain.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
  if float(cfg.get("l2", 0.0)) > 0:
    chain.append(optax.add_decayed_weights(float(cfg.l2)))
  if float(cfg.get("l1", 0.0)) > 0:
    chain.append(_l1_penalty(float(cfg.l1)))
  chain.append(opt)
  wd = float(cfg.get("weight_decay", 0.0))
  if wd > 0 and name != "adamw":
    # Decoupled decay after the optimizer: w -= lr(step) * wd * w.
    chain.append(_scaled_decay(wd, schedule))
  return optax.chain(*chain), schedule


def _scaled_decay(wd: float, schedule: Callable) -> optax.GradientTransformation:
  def init(_):
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    lr = schedule(state.count)
    new = jax.tree.map(lambda u, p: u - lr * wd * p, updates, params)
    return new, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return optax.GradientTransformation(init, update)
