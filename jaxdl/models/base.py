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
  rng_names: tuple[str, ...] = ("dropout",)  # the rng streams `apply` draws from


def make_rngs(model: Model, key: jax.Array | None) -> dict[str, jax.Array] | None:
  """One key per stream the model draws from (None for None: no sampling)."""
  if key is None:
    return None
  keys = jax.random.split(key, max(2, len(model.rng_names)))
  return dict(zip(model.rng_names, keys))


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
    if rngs is not None and any(n not in rngs for n in rng_names):
      # flax would silently skip a stream it is not given (the VAE would not
      # sample): the one rngs convention is every stream or none.
      missing = [n for n in rng_names if n not in rngs]
      raise ValueError(f"model {name or type(module).__name__} draws from rng streams "
                       f"{tuple(rng_names)}; rngs has no {missing} (pass "
                       "jaxdl.models.make_rngs(model, key), or rngs=None for no sampling)")
    state = {k: v for k, v in variables.items() if k != "params"}
    if train and state:
      out, new_state = module.apply(variables, x, train=True, rngs=rngs,
                                    mutable=list(state))
      return out, dict(new_state)
    return module.apply(variables, x, train=train, rngs=rngs), state

  return Model(init=init, apply=apply, module=module, name=name,
               rng_names=tuple(rng_names))


def split_variables(variables: Variables) -> tuple[Any, Variables]:
  """(params, model_state) from a variables dict."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}
