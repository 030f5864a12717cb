"""Classifies image files or texts with a trained run, without the training code.

    python -m jaxdl.predict --workdir=runs/mnist_mlp digit.png photo.jpg [--resize]
    python -m jaxdl.predict --workdir=runs/imdb_lstm --text="A wonderful film" reviews.txt

Images (PNG, JPEG, anything Pillow reads) are converted to the dataset's
channels (grayscale or RGB) and must have its height and width: a wrong size
is an error naming the expected size, unless `--resize` is given (bilinear).
Pixels then go through exactly the evaluation's preprocessing (uint8 -> [0, 1],
then the run's `normalize.mean/std`). Text runs (IMDB: the dataset info has
'vocab_size') take `--text` strings and/or .txt files (one text per non-empty
line), encoded with the run's saved `workdir/tokenizer.json` and padded to
the run's `maxlen`.

Prints, for each input, the top `--top_k` classes with their probabilities
(class names from the dataset info when it has them), or one JSON object per
line with `--json`. Errors are one `error: ...` line and exit status 1.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from jaxdl.evaluate import ToolError, class_names, classifies, restored, tool_main

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
              ".ppm")


class Predictor:
  """A restored classifier and its preprocessing; `predict(x) -> probabilities`."""

  def __init__(self, run, state, step: int):
    import jax  # pylint: disable=g-import-not-at-top
    if not classifies(run.task):
      raise ToolError(f"task {run.config.task!r} with loss "
                      f"{run.config.get('loss')!r} does not classify; predict needs a "
                      "classification run")
    self.run, self.step, self.info = run, step, run.info
    self.params, self.model_state = jax.device_get((state.params, state.model_state))
    self._fn = jax.jit(run.task.predict)
    self.is_text = "vocab_size" in self.info
    shape = self.info.get("input_shape")
    self.input_shape = tuple(int(d) for d in shape) if shape is not None else None
    self._names: list[str] | None = None
    self.tokenizer = None
    if self.is_text:
      from jaxdl.data import text  # pylint: disable=g-import-not-at-top
      path = os.path.join(run.workdir, "tokenizer.json")
      if not os.path.exists(path):
        raise ToolError(f"{path} not found: the run's tokenizer is needed to encode text")
      self.tokenizer = text.Tokenizer.load(path)

  def predict(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities [N, C] of preprocessed inputs (chunks of `batch_size`)."""
    out = [np.asarray(self._fn(self.params, self.model_state, inputs[i:i + batch_size]))
           for i in range(0, len(inputs), batch_size)]
    return np.concatenate(out)

  def class_names(self, num_classes: int) -> list[str]:
    if self._names is None or len(self._names) != num_classes:
      self._names = class_names(self.run, num_classes)
    return self._names

  # Images -------------------------------------------------------------------

  def load_image(self, path: str, resize: bool = False) -> np.ndarray:
    """uint8 [H, W, C] of the dataset's shape from an image file."""
    from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
    if self.input_shape is None or len(self.input_shape) != 3:
      raise ToolError(f"this run's inputs have shape {self.input_shape}, not images")
    h, w, c = self.input_shape
    if c not in (1, 3):
      raise ToolError(f"this run's images have {c} channels; only 1 or 3 can be read")
    try:
      with Image.open(path) as img:
        img.load()
        img = img.convert("L" if c == 1 else "RGB")
    except FileNotFoundError:
      raise ToolError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
      raise ToolError(f"{path}: not a readable image ({e})") from None
    if img.size != (w, h):
      if not resize:
        raise ToolError(
            f"{path} is {img.size[0]}x{img.size[1]} (width x height) but the model expects "
            f"{w}x{h} images; pass --resize to resize it")
      img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.uint8)
    return x.reshape(h, w, c)

  def preprocess_images(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> the evaluation's float32 inputs."""
    from jaxdl.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.normalize({"inputs": np.asarray(images, np.uint8)},
                              self.run.mean, self.run.std)["inputs"]

  def predict_images(self, paths: Sequence[str], resize: bool = False) -> np.ndarray:
    x = np.stack([self.load_image(p, resize) for p in paths])
    return self.predict(self.preprocess_images(x))

  # Text ---------------------------------------------------------------------

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    from jaxdl.data import text  # pylint: disable=g-import-not-at-top
    maxlen = int(self.info.get("maxlen") or self.run.config.maxlen)
    return text.pad_sequences([self.tokenizer.encode(t) for t in texts], maxlen,
                              truncating=self.info.get("truncating", "post"))

  def predict_texts(self, texts: Sequence[str]) -> np.ndarray:
    return self.predict(self.encode_texts(texts))


def load_predictor(workdir: str, which: str = "latest") -> Predictor:
  """A Predictor for `workdir`'s latest (or best) checkpoint."""
  with restored(workdir, which) as (run, state, step):
    return Predictor(run, state, step)


def top_k(probs: np.ndarray, names: Sequence[str], k: int) -> list[tuple[int, str, float]]:
  """[(class index, name, probability)] of the k most probable classes."""
  order = np.argsort(-probs, kind="stable")[:max(1, k)]
  return [(int(i), names[i], float(probs[i])) for i in order]


def collect_inputs(predictor: Predictor, args: Sequence[str], texts: Sequence[str]
                   ) -> list[tuple[str, Any]]:
  """[(label shown, image path or text)] from the positional args and --text."""
  items: list[tuple[str, Any]] = []
  if predictor.is_text:
    for t in texts:
      items.append((t if len(t) <= 40 else t[:37] + "...", t))
    for path in args:
      try:
        with open(path, encoding="utf-8", errors="replace") as f:
          lines = [l.strip() for l in f]
      except OSError as e:
        raise ToolError(f"{path}: cannot read ({e.strerror})") from None
      items += [(f"{path}:{i + 1}", l) for i, l in enumerate(lines) if l]
  else:
    if texts:
      raise ToolError("--text is for text runs; this run classifies images: pass image files")
    for path in args:
      if os.path.isdir(path):
        items += [(os.path.join(path, n), os.path.join(path, n)) for n in sorted(os.listdir(path))
                  if n.lower().endswith(IMAGE_EXTS)]
      else:
        items.append((path, path))
  if not items:
    kind = "--text=... strings or .txt files" if predictor.is_text else "image files"
    raise ToolError(f"nothing to classify: pass {kind} after the flags")
  return items


def _main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  predictor = load_predictor(f.workdir, f.which)
  items = collect_inputs(predictor, argv[1:], f.text or [])
  if predictor.is_text:
    probs = predictor.predict_texts([v for _, v in items])
  else:
    probs = predictor.predict_images([v for _, v in items], resize=f.resize)
  names = predictor.class_names(probs.shape[-1])
  for (label, _), p in zip(items, probs):
    top = top_k(p, names, f.top_k)
    if f.json:
      print(json.dumps({"input": label, "top": [{"class": n, "index": i, "probability": q}
                                                for i, n, q in top]}))
    else:
      print(f"{label}: " + ", ".join(f"{n} {q:.4f}" for _, n, q in top))


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "the run's folder")
  flags.DEFINE_enum("which", "latest", ["latest", "best"], "which checkpoint to use")
  flags.DEFINE_bool("resize", False, "resize images of another size to the model's")
  flags.DEFINE_multi_string("text", [], "a text to classify (text runs; repeatable)")
  flags.DEFINE_integer("top_k", 3, "classes shown per input")
  flags.DEFINE_bool("json", False, "one JSON object per input instead of text lines")


if __name__ == "__main__":
  _define_flags()
  tool_main(_main)
