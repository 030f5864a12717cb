"""Reading a finished or running run back from its workdir.

`load_config(workdir)` gives the resolved config the run saved (forced CPU
fast paths read as 'auto': `jaxdl.ops.platform.platform_neutral`);
`restore_state(workdir)` rebuilds the run (dataset, task, engine) on the
devices of *this* process and restores its latest or best checkpoint, whatever
topology saved it. Used by evaluation, prediction, export and the tests.
"""

from __future__ import annotations

import json
import os

import ml_collections

from jaxdl import checkpoint, configs
from jaxdl.ops import platform
from jaxdl.train import optim


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(os.path.abspath(workdir), "config.json")
  if not os.path.exists(path):
    raise checkpoint.CheckpointError(
        f"{path} not found: {workdir} is not a jaxdl run folder; pass --workdir=DIR of a run")
  with open(path, encoding="utf-8") as f:
    config = configs.with_defaults(platform.platform_neutral(json.load(f)))
  opt = config.optimizer
  if opt.momentum is not None and "momentum" not in optim.HYPERPARAMS.get(opt.name, {}):
    # Written by a jaxdl whose base config set momentum=0.9 for every
    # optimizer; this one never used it.
    opt.momentum = None
  return config


def restore_state(workdir: str, which: str = "latest", mesh=None, config=None):
  """(run, state, step) from `workdir`'s latest (or best) checkpoint.

  The best is the kept checkpoint with the best eval `task.best_metric`
  (`task.best_mode`), from the metrics saved with each eval step's checkpoint.
  """
  from jaxdl.train import loop  # pylint: disable=g-import-not-at-top
  config = config or load_config(workdir)
  run = loop.Run(config, workdir, mesh=mesh)
  ckpt = run.checkpointer
  step = ckpt.best_step() if which == "best" else ckpt.latest_step()
  if step is None:
    latest = ckpt.latest_step()
    ckpt.close()
    if latest is not None:
      # e.g. the GAN with FID off, or a run saved before checkpoints kept metrics
      raise checkpoint.CheckpointError(
          f"no checkpoint in {ckpt.directory} has an eval {run.task.best_metric!r} to "
          "rank it by; pass --which=latest")
    raise checkpoint.CheckpointError(
        f"no checkpoint in {ckpt.directory}: train first, or pass --workdir=DIR of a run")
  state = ckpt.restore(step, run.abstract_state())
  return run, state, step
