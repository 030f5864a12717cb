"""Re-evaluates a run's checkpoint on its test split, without the training code.

    python -m jaxdl.evaluate --workdir=runs/mnist_mlp [--which=latest|best]

Restores the checkpoint (`jaxdl.runs.restore_state`, any device count), runs
the same evaluation the training loop ran (`Run.evaluate` plus the task's
`on_evaluate`), prints the metrics and writes `workdir/evaluate.json`. For
classifiers it also computes every test example's prediction and writes the
confusion matrix (in evaluate.json and as `workdir/confusion_matrix.png`).

The workdir lock is held while the checkpoint is read: opening the checkpoint
manager cleans up half-written saves, which must never race a live run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import numpy as np


class ToolError(ValueError):
  """A one-line user error of a tool (bad flag, missing file, wrong input)."""


@contextlib.contextmanager
def restored(workdir: str, which: str = "latest", mesh=None):
  """Yields (run, state, step) with the workdir lock held.

  Raises ToolError (one line) for a folder that is not a run, a run without
  checkpoints, or a `which` other than 'latest'/'best'.
  """
  from jaxdl import checkpoint, lock, runs  # pylint: disable=g-import-not-at-top
  if which not in ("latest", "best"):
    raise ToolError(f"--which={which!r}: choose 'latest' or 'best'")
  if not workdir:
    raise ToolError("no workdir given; pass --workdir=DIR of a run")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    config = runs.load_config(workdir)
  except checkpoint.CheckpointError as e:
    raise ToolError(str(e)) from None
  try:
    with lock.WorkdirLock(workdir):
      try:
        run, state, step = runs.restore_state(workdir, which=which, mesh=mesh, config=config)
      except checkpoint.CheckpointError as e:
        raise ToolError(str(e)) from None
      if step is None:  # 'best' without eval metrics in any checkpoint
        raise ToolError(f"no {which} checkpoint in {workdir}/checkpoints; try --which=latest")
      yield run, state, step
  except lock.WorkdirLockedError as e:
    raise ToolError(str(e)) from None


def classifies(task) -> bool:
  return bool(getattr(task, "classifies", False)) and hasattr(task, "predict")


def predict_split(run, state, source=None, batch_size: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities [N, C], labels [N]) for every example of `source` (default:
  the test split), in order, preprocessed exactly as the evaluation does."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxdl.data import pipeline  # pylint: disable=g-import-not-at-top
  source = run.test_source if source is None else source
  bs = batch_size or run.config.get("eval_batch_size") or run.config.batch_size
  task = run.task
  fn = jax.jit(task.predict)
  params, model_state = jax.device_get((state.params, state.model_state))
  probs, labels = [], []
  for batch in pipeline.eval_batches(source, global_batch_size=bs, mean=run.mean,
                                     std=run.std):
    keep = batch["mask"] > 0
    p = np.asarray(fn(params, model_state, batch["inputs"]))
    probs.append(p[keep])
    labels.append(np.asarray(batch["label"])[keep])
  return np.concatenate(probs), np.concatenate(labels)


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
  """int64 [num_classes, num_classes]: rows are true classes, columns predictions."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
  return cm


def class_names(run, num_classes: int) -> list[str]:
  """The dataset's class names, else 'negative'/'positive' for IMDB, else 0..C-1."""
  names = list(run.info.get("class_names") or [])
  if len(names) == num_classes:
    return [str(n) for n in names]
  if run.config.get("dataset") == "imdb" and num_classes == 2:
    return ["negative", "positive"]
  return [str(i) for i in range(num_classes)]


def run_confusion(run, state) -> tuple[np.ndarray, list[str]] | None:
  """(confusion matrix of `state` on the run's test split, class names), or
  None when the run's task does not classify."""
  if not classifies(run.task):
    return None
  probs, labels = predict_split(run, state)
  n = probs.shape[-1]
  return confusion_matrix(labels, probs.argmax(-1), n), class_names(run, n)


def evaluate_workdir(workdir: str, which: str = "latest", *, confusion: bool = True,
                     write: bool = True, mesh=None) -> dict[str, Any]:
  """Evaluates `workdir`'s checkpoint; returns (and writes) the evaluate.json dict.

  Keys: workdir, which, step, metrics (as in summary.json's 'eval'), and for
  classifiers num_examples, class_names, confusion_matrix (rows: true class).
  """
  with restored(workdir, which, mesh=mesh) as (run, state, step):
    metrics, _ = run.evaluate(state, step)
    result: dict[str, Any] = {"workdir": run.workdir, "which": which, "step": int(step),
                              "metrics": metrics}
    if confusion and classifies(run.task):
      cm, names = run_confusion(run, state)
      result.update(num_examples=int(cm.sum()), class_names=names,
                    confusion_matrix=cm.tolist())
      if write:
        from jaxdl import plots  # pylint: disable=g-import-not-at-top
        png = os.path.join(run.workdir, "confusion_matrix.png")
        plots.plot_confusion_matrix(cm, names, png)
        result["confusion_matrix_png"] = png
    if write:
      path = os.path.join(run.workdir, "evaluate.json")
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=True)
      os.replace(tmp, path)
  return result


def format_result(result: dict[str, Any]) -> str:
  lines = [f"step {result['step']} ({result['which']}) of {result['workdir']}: " + " ".join(
      f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items()))]
  if "confusion_matrix_png" in result:
    lines.append(f"confusion matrix of {result['num_examples']} test examples: "
                 f"{result['confusion_matrix_png']}")
  lines.append(f"wrote {os.path.join(result['workdir'], 'evaluate.json')}")
  return "\n".join(lines)


def tool_main(body) -> None:
  """absl main for the tools: quiet logs, one `error:` line + exit 1 on failure."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]} (see --helpfull)",
            file=sys.stderr)
      sys.exit(2)

  def main(argv):
    if not flags.FLAGS["verbosity"].present:
      absl_logging.set_verbosity(absl_logging.WARNING)
    from jaxdl import runtime  # pylint: disable=g-import-not-at-top
    runtime.setup()  # the process setup training runs with (jaxdl.experiment)
    from jaxdl.configs import ConfigError  # pylint: disable=g-import-not-at-top
    from jaxdl.data.errors import DataError  # pylint: disable=g-import-not-at-top
    try:
      body(argv)
    except (ToolError, ConfigError, DataError, OSError) as e:
      msg = " ".join(str(e).split()) or type(e).__name__
      print(f"error: {msg}", file=sys.stderr)
      sys.exit(1)

  app.run(main, flags_parser=parse)


def _main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ToolError(f"unexpected arguments {argv[1:]}; pass --workdir=DIR")
  f = flags.FLAGS
  result = evaluate_workdir(f.workdir, f.which, confusion=f.confusion)
  print(format_result(result))


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "the run's folder")
  flags.DEFINE_enum("which", "latest", ["latest", "best"], "which checkpoint to evaluate")
  flags.DEFINE_bool("confusion", True, "classifiers: also the confusion matrix (json + png)")


if __name__ == "__main__":
  _define_flags()
  tool_main(_main)
