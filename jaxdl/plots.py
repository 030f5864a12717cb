"""Figures of a run: training/eval curves, confusion matrix, image grids.

Matplotlib is used through its object API with the Agg canvas only (no
`pyplot`): nothing is ever shown, no global backend is switched (a notebook's
stays as it is), and it works on any headless worker. Every PNG is written to a
temp file and renamed, so a reader never sees half a figure. Sizes are exact:
a figure asked for as W x H pixels is saved as W x H pixels.

The experiment entry point (`jaxdl.experiment`) calls `write_run_plots(
run.workdir, run=run, state=state)` after training: workdir/curves.png, and
workdir/confusion_matrix.png for classifiers.
"""

from __future__ import annotations

import collections
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from jaxdl import images

CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
# Train-only metrics worth a panel of their own (eval metrics always get one),
# besides the task's `shown_metrics`.
_TRAIN_PANELS = ("learning_rate", "grad_norm")
_PANEL_W, _PANEL_H, _DPI = 400, 300, 100


def read_metrics(workdir_or_path: str) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
  """{split: {metric: (steps, values)}} from a run's metrics.jsonl.

  Torn or foreign lines are skipped; a step logged twice (a resumed run before
  the log was cut back) keeps its last value.
  """
  path = workdir_or_path
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  series: dict[str, dict[str, dict[int, float]]] = collections.defaultdict(
      lambda: collections.defaultdict(dict))
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        rec = json.loads(line)
        step, split, metrics = int(rec["step"]), str(rec["split"]), rec["metrics"]
      except (ValueError, KeyError, TypeError):
        continue
      for k, v in metrics.items():
        try:
          series[split][k][step] = float(v)
        except (TypeError, ValueError):
          continue
  out = {}
  for split, ms in series.items():
    out[split] = {}
    for k, pts in ms.items():
      steps = np.array(sorted(pts), np.int64)
      out[split][k] = (steps, np.array([pts[s] for s in steps], np.float64))
  return out


def _panels(metrics, shown=()) -> list[str]:
  ev = sorted(metrics.get("eval", {}), key=lambda k: (k != "loss", k))
  tr = metrics.get("train", {})
  names = list(ev)
  if "loss" in tr and "loss" not in names:
    names.insert(0, "loss")
  if "accuracy" in tr and "accuracy" not in names:
    names.append("accuracy")
  names += [k for k in (*shown, *_TRAIN_PANELS) if k in tr and k not in names]
  if not names:  # nothing known: every train metric
    names = sorted(tr)
  return names[:9]


def _new_figure(width: int, height: int):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str) -> str:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  tmp = path + ".tmp"
  fig.savefig(tmp, dpi=_DPI, format="png")  # no bbox_inches='tight': exact size
  os.replace(tmp, path)
  return path


def curves_size(num_panels: int) -> tuple[int, int]:
  """(width, height) in pixels of a curves figure with `num_panels` panels."""
  ncols = min(3, max(num_panels, 1))
  nrows = int(math.ceil(max(num_panels, 1) / ncols))
  return ncols * _PANEL_W, nrows * _PANEL_H


def plot_curves(metrics_or_workdir: Any, path: str, *, names: Sequence[str] | None = None,
                title: str | None = None) -> tuple[int, int]:
  """Training (line) and eval (line + dots) curves, one panel per metric.

  `metrics_or_workdir`: a run folder, a metrics.jsonl path, or `read_metrics`'s
  dict. Panels: the eval metrics (loss first) plus train-only loss, accuracy,
  learning rate and gradient norm when logged. Loss-like panels use a log
  y-axis when the values span more than two decades. Returns (width, height)
  in pixels (`curves_size(number of panels)`).
  """
  metrics = (read_metrics(metrics_or_workdir) if isinstance(metrics_or_workdir, str)
             else metrics_or_workdir)
  names = list(names) if names else _panels(metrics)
  if not names:
    raise ValueError("no metrics to plot (empty metrics.jsonl?)")
  width, height = curves_size(len(names))
  ncols = min(3, len(names))
  nrows = int(math.ceil(len(names) / ncols))
  fig = _new_figure(width, height)
  for i, name in enumerate(names):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    for split, style in (("train", dict(lw=1.2, alpha=0.8)),
                         ("eval", dict(lw=1.6, marker="o", ms=3))):
      if name in metrics.get(split, {}):
        steps, values = metrics[split][name]
        ax.plot(steps, values, label=split, **style)
    vals = np.concatenate([metrics[s][name][1] for s in ("train", "eval")
                           if name in metrics.get(s, {})] or [np.zeros(0)])
    vals = vals[np.isfinite(vals)]
    if "loss" in name and len(vals) and vals.min() > 0 and vals.max() / vals.min() > 100:
      ax.set_yscale("log")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)
  return width, height


def plot_confusion_matrix(cm: Any, class_names: Sequence[str] | None, path: str, *,
                          size: tuple[int, int] = (640, 600), normalize: bool = True,
                          title: str | None = None) -> tuple[int, int]:
  """Confusion matrix heat map (rows: true class, columns: predicted).

  Colours are row-normalised (per-class recall) when `normalize`; every cell
  shows its count when there are at most 20 classes. Returns (width, height).
  """
  cm = np.asarray(cm, np.float64)
  n = cm.shape[0]
  if cm.ndim != 2 or cm.shape[1] != n:
    raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
  names = [str(c) for c in (class_names or range(n))]
  shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
  fig = _new_figure(*size)
  ax = fig.add_subplot(1, 1, 1)
  im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(n))
  ax.set_yticks(range(n))
  fs = 8 if n <= 10 else 6
  ax.set_xticklabels(names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right"
                     if max(map(len, names)) > 2 else "center", fontsize=fs)
  ax.set_yticklabels(names, fontsize=fs)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  total = cm.sum()
  acc = np.trace(cm) / total if total else 0.0
  ax.set_title(title or f"confusion matrix ({int(total)} examples, accuracy {acc:.4f})",
               fontsize=9)
  if n <= 20:
    for r in range(n):
      for c in range(n):
        ax.text(c, r, str(int(cm[r, c])), ha="center", va="center",
                fontsize=max(5, fs - 1), color="white" if shown[r, c] > 0.5 else "black")
  fig.tight_layout()
  _save(fig, path)
  return size


def write_run_plots(workdir: str, confusion=None, shown: Sequence[str] = ()) -> list[str]:
  """The figures of a finished run: `workdir/curves.png` from metrics.jsonl, and
  `workdir/confusion_matrix.png` when `confusion` = (matrix, class names) is
  given (`jaxdl.evaluate.run_confusion`); `shown`: the task's train metrics
  that get a panel (`Task.shown_metrics`). Only process 0 writes. Returns the
  paths written."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return []
  written = []
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    metrics = read_metrics(workdir)
    if _panels(metrics, shown):
      path = os.path.join(workdir, CURVES_PNG)
      plot_curves(metrics, path, names=_panels(metrics, shown),
                  title=os.path.basename(os.path.abspath(workdir)))
      written.append(path)
  if confusion is not None:
    path = os.path.join(workdir, CONFUSION_PNG)
    plot_confusion_matrix(*confusion, path)
    written.append(path)
  return written


def save_samples_grid(path: str, samples: Any, ncols: int | None = None) -> tuple[int, int]:
  """Generated samples ([N, H, W, C] in [0, 1] or uint8) as one PNG grid."""
  return images.save_grid_png(path, samples, ncols=ncols)


def save_reconstruction_grid(path: str, originals: Any, reconstructions: Any,
                             n: int = 8) -> tuple[int, int]:
  """Pairs of rows, originals above their reconstructions, `n` per row.

  Both are [N, H, W, C] (or [N, H, W]) in [0, 1] or uint8 of the same shape;
  the first min(N, ...) examples are shown in rows of `n`.
  """
  a = images.to_uint8(originals)
  b = images.to_uint8(reconstructions)
  if a.shape != b.shape:
    raise ValueError(f"originals {a.shape} and reconstructions {b.shape} differ in shape")
  n = max(1, min(n, len(a)))
  k = len(a) // n * n or len(a)
  rows = []
  for start in range(0, k, n):
    rows += [a[start:start + n], b[start:start + n]]
  return images.save_grid_png(path, np.concatenate(rows), ncols=n)
