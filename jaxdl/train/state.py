"""The train state: a plain pytree that checkpoints whole."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step, params, opt_state, model_state (batch-norm stats, RBM chains...), rng.

  Multi-network tasks (the GAN) keep dicts in `params` and `opt_state`
  ({'generator': ..., 'discriminator': ...}). `rng` is a raw uint32 key
  (`jax.random.PRNGKey`) so it saves as an ordinary array; the step's key is
  `fold_in(rng, step)` (see `step_key`).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(state.rng, state.step)
