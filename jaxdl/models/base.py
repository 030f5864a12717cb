"""A model is a pair of pure functions, `init` and `apply`.

    variables = model.init(key, example)
    outputs, model_state = model.apply(variables, x, train=True, rngs={'dropout': k})

`variables` is a dict of collections: 'params' plus any mutable state
('batch_stats', ...). `apply` returns the outputs and the new non-param
collections (the input ones, unchanged, when nothing was updated), so the train
state threads mutable state in and out explicitly (the AlgoPerf convention).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import flax.linen as nn

Variables = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Model:
  """A pure `init`/`apply` pair; `module` is kept for summaries (may be None)."""

  init: Callable[..., Variables]
  apply: Callable[..., tuple[Any, Variables]]
  module: nn.Module | None = None
  name: str = ""


def from_flax(module: nn.Module, rng_names: Sequence[str] = ("dropout",),
              name: str = "") -> Model:
  """Wraps a linen module whose `__call__(x, *, train)` into a Model."""

  def init(key: jax.Array, example: Any) -> Variables:
    keys = jax.random.split(key, len(rng_names) + 1)
    rngs = {"params": keys[0], **{n: k for n, k in zip(rng_names, keys[1:])}}
    variables = module.init(rngs, example, train=False)
    return dict(variables)

  def apply(variables: Variables, x: Any, *, train: bool = False,
            rngs: dict[str, jax.Array] | None = None):
    state = {k: v for k, v in variables.items() if k != "params"}
    if train and state:
      out, new_state = module.apply(variables, x, train=True, rngs=rngs,
                                    mutable=list(state))
      return out, dict(new_state)
    return module.apply(variables, x, train=train, rngs=rngs), state

  return Model(init=init, apply=apply, module=module, name=name)


def split_variables(variables: Variables) -> tuple[Any, Variables]:
  """(params, model_state) from a variables dict."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}
