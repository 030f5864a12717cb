"""Model summary: layers, output shapes and parameter counts (like Keras'
`model.summary()`), computed without running anything (shapes only).

The training loop prints it and writes `workdir/model_summary.txt` when a run
starts fresh (not on resume).

`num_params` equals the parameter count the run reports in summary.json.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def count_params(params: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))


def _abstract_params(task, example_batch) -> Any:
  """The params tree of `task.init` as ShapeDtypeStructs (nothing computed)."""
  import jax  # pylint: disable=g-import-not-at-top
  batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
           if not hasattr(v, "dtype") else jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in example_batch.items()}
  params, _ = jax.eval_shape(task.init, jax.random.key(0), batch)
  return params


def params_table(params: Any) -> str:
  """One row per parameter array: path, shape, dtype, count; then the total."""
  import jax  # pylint: disable=g-import-not-at-top
  rows = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    rows.append((name, "x".join(map(str, leaf.shape)) or "scalar", str(leaf.dtype),
                 int(np.prod(leaf.shape))))
  w0 = max([len("parameter")] + [len(r[0]) for r in rows])
  w1 = max([len("shape")] + [len(r[1]) for r in rows])
  w2 = max([len("dtype")] + [len(r[2]) for r in rows])
  lines = [f"{'parameter':<{w0}}  {'shape':<{w1}}  {'dtype':<{w2}}  {'count':>12}",
           "-" * (w0 + w1 + w2 + 18)]
  lines += [f"{a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d:>12,}" for a, b, c, d in rows]
  return "\n".join(lines)


def _tabulate(model, x) -> str | None:
  """flax's layer table (module, inputs, outputs, params) or None if the
  module is not a plain `__call__(x, *, train)` (e.g. needs rngs at eval)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  module = getattr(model, "module", None)
  if module is None:
    return None
  try:
    return nn.tabulate(module, jax.random.key(0), compute_flops=False,
                       console_kwargs={"width": 120, "force_terminal": False,
                                       "color_system": None})(x, train=False)
  except Exception:  # pylint: disable=broad-except
    return None


def model_summary(task, example_batch: dict[str, Any]) -> tuple[str, int]:
  """(table, num_params) for `task`'s model(s) on `example_batch`'s inputs.

  A task with one `model` taking `batch['inputs']` (classification, language
  model, autoencoder) gets flax's layer table (`nn.tabulate`: each layer's
  input and output shapes and parameters) on one example. Other tasks (GAN,
  RBM) and models that cannot be tabulated get a table of every parameter
  array. The last line is always `Total parameters: N`, N counted from the
  params `task.init` creates (what the TrainState holds).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = _abstract_params(task, example_batch)
  n = count_params(params)
  table = None
  model = getattr(task, "model", None)
  x = example_batch.get("inputs")
  if model is not None and x is not None:
    table = _tabulate(model, jnp.zeros((1,) + tuple(np.shape(x)[1:]), np.asarray(x).dtype
                                       if not hasattr(x, "dtype") else x.dtype))
  title = getattr(model, "name", "") or type(task).__name__
  if table is None:
    table = f"{title}: parameters\n" + params_table(params)
  lines = [l.rstrip() for l in table.splitlines()
           if not l.strip().startswith("Total Parameters:")]  # flax's; ours is below
  table = "\n".join(lines).strip("\n") + f"\nTotal parameters: {n:,}"
  return table, n


def write_model_summary(workdir: str, task, example_batch: dict[str, Any]) -> tuple[str, int]:
  """`model_summary` also written to `workdir/model_summary.txt` (process 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  table, n = model_summary(task, example_batch)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "model_summary.txt")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(table + "\n")
    os.replace(path + ".tmp", path)
  return table, n
