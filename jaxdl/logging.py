"""Metric writers (the only place that writes metrics): JSON lines, TensorBoard
event files (tensorboardX, no TensorFlow) and the progress display.

Only process 0 writes; on other processes every call is a no-op.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxdl import images


def _is_chief() -> bool:
  return jax.process_index() == 0


def write_json(path: str, obj: Any) -> None:
  """`obj` as JSON at `path`, atomically (process 0 only)."""
  if _is_chief():
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def set_aside_metrics(workdir: str, tag: str) -> str | None:
  """Renames `workdir/metrics.jsonl` to `metrics.jsonl.<tag>.<time>` (process
  0); the new name, or None where there was no log to move."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  new = f"{path}.{tag}.{int(time.time())}"
  if _is_chief():
    os.replace(path, new)
  return new


def truncate_metrics(path: str, last_step: int) -> None:
  """Drops the records after `last_step` (a resumed run redoes them) and a torn
  last line."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [l for l in f.read().split("\n") if l.strip()]
  keep = []
  for line in lines:
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if isinstance(rec, dict) and int(rec.get("step", 0)) <= last_step:
      keep.append(line)
  if len(keep) != len(lines):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write("".join(l + "\n" for l in keep))
    os.replace(path + ".tmp", path)


class MetricWriter:
  """`workdir/metrics.jsonl` (one {"step", "split", "metrics"} per line),
  TensorBoard events under `workdir/tensorboard`, and the images and texts
  of an evaluation as `workdir/NAME_{step:06d}.png|.txt`. `resume_step`: the
  step a resumed run starts after (later records are dropped)."""

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None):
    self.enabled = _is_chief()
    self.workdir = workdir
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    if resume_step is not None:
      truncate_metrics(os.path.join(workdir, "metrics.jsonl"), resume_step)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

  def write_scalars(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, "metrics": clean}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(f"{split}/{k}", v, int(step))

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """`image`: uint8 or float [H, W, C] (or [H, W])."""
    if not self.enabled or self._tb is None:
      return
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    self._tb.add_image(tag, image, int(step), dataformats="HWC")

  def write_eval(self, step: int, metrics: dict[str, float], extras: dict[str, Any]) -> None:
    """The eval scalars, and what the task's on_evaluate returned: each array
    an image (`NAME_{step:06d}.png` and TensorBoard image NAME), each str a
    text (`NAME_{step:06d}.txt` and TensorBoard text NAME)."""
    self.write_scalars(step, "eval", metrics)
    if not self.enabled:
      return
    for name, value in sorted(extras.items()):
      path = os.path.join(self.workdir, f"{name}_{int(step):06d}")
      if isinstance(value, str):
        with open(path + ".txt.tmp", "w", encoding="utf-8") as f:
          f.write(value)
        os.replace(path + ".txt.tmp", path + ".txt")
        self.write_text(step, name, value)
      else:
        image = images.to_uint8(value)
        images.save_png(path + ".png", image)
        self.write_image(step, name, image)

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Plain text to TensorBoard's Text tab (indented: markdown keeps it verbatim)."""
    if not self.enabled or self._tb is None:
      return
    self._tb.add_text(tag, "\n".join("    " + line for line in text.split("\n")),
                      int(step))

  def write_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    if not self.enabled or self._tb is None:
      return
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in hparams.items()}
    # tensorboardX's add_hparams has no `run_name` (that is torch's); `name` is
    # the sub-folder of tensorboard/ that holds the HParams session.
    self._tb.add_hparams(flat, {f"hparam/{k}": float(v) for k, v in metrics.items()},
                         name="hparams")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """A progress bar on a terminal (updated in place), plain lines otherwise.

  Shows the step, the latest training metrics, examples/s and the ETA.
  """

  def __init__(self, total_steps: int, start_step: int, batch_size: int,
               stream=None, every: int = 100, force_bar: bool | None = None,
               shown: tuple[str, ...] = ("loss", "accuracy")):
    self.enabled = _is_chief()
    self.shown = tuple(shown)  # the task's `shown_metrics`
    self.total, self.batch_size, self.every = total_steps, batch_size, max(every, 1)
    self.stream = stream or sys.stdout
    self.start_step = start_step
    self.t0 = time.perf_counter()
    tty = self.stream.isatty() if force_bar is None else force_bar
    self.bar = None
    if self.enabled and tty:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      # A terminal that reports no size (a fresh pty, some CI runners) would get
      # no bar at all from tqdm (it hides bars beyond `nrows`): give it one.
      try:
        size = os.get_terminal_size(self.stream.fileno())
      except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
      width = ({"dynamic_ncols": True} if size.columns > 0 and size.lines > 0
               else {"ncols": size.columns or 120, "nrows": size.lines or 24})
      self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream,
                      unit="step", mininterval=0.2, **width)
    self._last_step = start_step

  def examples_per_sec(self, step: int) -> float:
    dt = time.perf_counter() - self.t0
    return (step - self.start_step) * self.batch_size / dt if dt > 0 else 0.0

  def update(self, step: int, metrics: dict[str, float] | None = None) -> None:
    if not self.enabled:
      return
    eps = self.examples_per_sec(step)
    done = step - self.start_step
    eta = (self.total - step) * (time.perf_counter() - self.t0) / done if done else 0.0
    shown = {k: metrics[k] for k in self.shown if metrics and k in metrics}
    if self.bar is not None:
      self.bar.update(step - self._last_step)
      self.bar.set_postfix({**{k: f"{v:.4f}" for k, v in shown.items()},
                            "ex/s": f"{eps:,.0f}"}, refresh=False)
    elif step % self.every == 0 or step == self.total:
      parts = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
      print(f"step {step}/{self.total} {parts} | {eps:,.0f} examples/s | ETA {_fmt_eta(eta)}",
            file=self.stream, flush=True)
    self._last_step = step

  def write(self, line: str) -> None:
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.write(line, file=self.stream)
    else:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def flatten_hparams(config: Any, prefix: str = "") -> dict[str, Any]:
  """A (nested) config as flat {'optimizer.learning_rate': 0.001, ...} for
  `MetricWriter.write_hparams`: TensorBoard's HParams tab takes scalars only,
  so sequences become strings.

  The training loop writes them at the end of a run with the final eval metrics.
  """
  items = config.items() if hasattr(config, "items") else []
  flat: dict[str, Any] = {}
  for k, v in items:
    key = f"{prefix}{k}"
    if hasattr(v, "items"):
      flat.update(flatten_hparams(v, key + "."))
    elif isinstance(v, (bool, int, float, str)):
      flat[key] = v
    elif v is None:
      flat[key] = "None"
    else:
      flat[key] = str(tuple(v)) if isinstance(v, (list, tuple)) else str(v)
  return flat
