"""Task registry (it lives with the tasks): `config.task` -> a `jaxdl.train.task.Task`.

Each module listed here defines `TASKS: dict[str, type]`, constructors
`Task(config, info)` (or `Task(config, info, total_steps)`).
"""

from __future__ import annotations

import importlib
import inspect
from jaxdl.configs import ConfigError

_MODULES = ("jaxdl.train.classification", "jaxdl.train.gan", "jaxdl.train.rbm",
            "jaxdl.train.autoencoder", "jaxdl.train.language_model")


def _registry() -> dict:
  from jaxdl.train.classification import ClassificationTask  # pylint: disable=g-import-not-at-top
  reg = {"classification": ClassificationTask}
  for name in _MODULES:
    try:
      reg.update(getattr(importlib.import_module(name), "TASKS", {}))
    except ModuleNotFoundError as e:
      if e.name != name:
        raise
  return reg


def task_names() -> list[str]:
  return sorted(_registry())


def build_task(config, info: dict, total_steps: int):
  reg = _registry()
  name = config.task
  if name not in reg:
    raise ConfigError(f"unknown task {name!r}: choose one of {sorted(reg)} (--config.task=...)")
  cls = reg[name]
  if "total_steps" in inspect.signature(cls).parameters:
    return cls(config, info, total_steps=total_steps)
  return cls(config, info)
