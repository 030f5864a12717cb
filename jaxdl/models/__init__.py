"""Model registry: `get_model(name, **kwargs) -> Model`.

Each module listed in `_MODULES` defines `MODELS: dict[str, Callable[..., Model]]`
and `EXAMPLES` (the experiment that trains each model); adding a model is
adding a constructor and its example there (and the module here if it is new):
`tests/test_registry.py` then builds and steps it, with its task.
Modules are imported on first use so that `import jaxdl` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Callable

from jaxdl.models.base import Model, from_flax, make_rngs, split_variables
from jaxdl.configs import ConfigError

_MODULES = ("mlp", "cnn", "lstm", "transformer", "gan", "rbm", "dbn",
            "autoencoder")
_REGISTRY: dict[str, Callable[..., Model]] | None = None


def registry() -> dict[str, Callable[..., Model]]:
  """Every model name -> its constructor (`constructor(**kwargs) -> Model`).

  Built from the `MODELS` dict of each module in `_MODULES`; a new model is
  one module (or one entry) there.
  """
  global _REGISTRY
  if _REGISTRY is None:
    reg = {}
    for mod in _MODULES:
      try:
        m = importlib.import_module(f"jaxdl.models.{mod}")
      except ModuleNotFoundError as e:
        if e.name == f"jaxdl.models.{mod}":
          continue
        raise
      reg.update(getattr(m, "MODELS", {}))
    _REGISTRY = reg
  return _REGISTRY


def examples() -> dict[str, tuple[str, dict]]:
  """Every model name -> (experiment config, {dotted field: value}) of a run
  that trains it with its task: the `EXAMPLES` dict beside each module's
  `MODELS` (the registry-driven tests and the benchmark read it)."""
  out = {}
  for mod in _MODULES:
    out.update(getattr(importlib.import_module(f"jaxdl.models.{mod}"), "EXAMPLES", {}))
  return out


def example_config(name: str, **overrides):
  """The config of model `name`'s example run (`examples()`): its experiment's
  `get_config()` with the example's fields, then `overrides`, set ({dotted
  field: value}; a dict value becomes a ConfigDict)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxdl.configs import set_field  # pylint: disable=g-import-not-at-top
  experiment, example = examples()[name]
  c = importlib.import_module(f"experiments.configs.{experiment}").get_config()
  for key, value in {**example, **overrides}.items():
    set_field(c, key, ml_collections.ConfigDict(value) if isinstance(value, dict) else value)
  return c


def get_model(name: str, **kwargs) -> Model:
  """The registered model `name` built with `kwargs`: a `Model` whose
  `init(key, example) -> variables` and `apply(variables, x, *, train, rngs)
  -> (outputs, new_state)` are pure functions (compose them with jax.grad,
  jax.vmap, jax.jvp, lax.scan). Raises ConfigError for an unknown name."""
  reg = registry()
  if name not in reg:
    raise ConfigError(f"unknown model {name!r}: choose one of {sorted(reg)} "
                     "(--config.model.name=...)")
  model = reg[name](**kwargs)
  return model if model.name else Model(model.init, model.apply, model.module, name,
                                       model.rng_names)


__all__ = ["Model", "example_config", "examples", "from_flax", "make_rngs", "split_variables", "get_model", "registry"]
