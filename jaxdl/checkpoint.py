"""Checkpoints: the only module that imports orbax.

A checkpoint holds two items: 'state' (the TrainState, saved with
`StandardSave` and restored into an abstract target that carries the *current*
shardings, so a run can resume on another device count) and 'data' (the grain
iterator's position, through grain's orbax handler). Paths are absolute; saves
are asynchronous; the last `max_to_keep` and the best by a chosen metric are
kept.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names it."""


class Checkpointer:
  """Save/restore of (train state, data iterator) under `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    if best_metric:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=(best_mode == "min"),
          n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True)
    self.best_metric, self.best_mode = best_metric, best_mode
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric else self.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any = None,
           metrics: dict | None = None) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    return self._manager.save(step, args=ocp.args.Composite(**items),
                              metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores 'state' into `abstract_state`'s shapes, dtypes and shardings.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding`
    (see `abstract_with_shardings`). The data iterator, if given, is moved to
    the saved position in place.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if data_iterator is not None:
      self.restore_data(step, data_iterator)
    return restored["state"]

  def restore_data(self, step: int, data_iterator: Any) -> None:
    self._manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(data_iterator)))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the given (current) shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
