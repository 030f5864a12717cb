"""The train state: a plain pytree that checkpoints whole."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """step, params, opt_state, model_state (batch-norm stats, RBM chains...), rng,
  health.

  Multi-network tasks (the GAN) keep dicts in `params` and `opt_state`
  ({'generator': ..., 'discriminator': ...}). `rng` is a raw uint32 key
  (`jax.random.PRNGKey`) so it saves as an ordinary array; the step's key is
  `fold_in(rng, step)` (see `step_key`). `health` counts the non-finite steps
  (`new_health`; kept by the engine's guard, saved and verified with the rest).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array
  health: Any = None


def new_health() -> dict[str, jax.Array]:
  """bad_steps: steps with a non-finite guarded value so far; first_bad_step:
  the first of them (0: none); first_bad_what: a bitmask over
  `Engine.guard_names()` of what was non-finite then."""
  z = jnp.zeros([], jnp.int32)
  return {"bad_steps": z, "first_bad_step": z, "first_bad_what": z}


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(state.rng, state.step)
