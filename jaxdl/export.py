"""Exports a trained classifier as one self-contained StableHLO file.

    python -m jaxdl.export --workdir=runs/mnist_mlp --out=mnist.jaxdl [--which=best]

Writes two files:

* `OUT` (e.g. `mnist.jaxdl`): `jax.export.Exported.serialize()` bytes of the
  inference function *with the weights closed over as constants* (one file,
  no checkpoint, no flax, no jaxdl needed to run it). The input normalisation
  of the run (`config.normalize.mean/std`) and the softmax are inside.
* `OUT.json`: the signature and how to feed it: input shape (`null` for the
  batch dimension when it is polymorphic), dtype, value range and
  preprocessing, output shape and meaning, class names, the run, step, jax
  version and platforms. Text runs also get the tokenizer's word list there.

The batch dimension is symbolic (`jax.export.symbolic_shape('b')`): any batch
size runs. If a model cannot be exported that way, the export falls back to a
fixed batch (`--batch_size`, default 1) and says so in the sidecar
(`"batch_polymorphic": false`). Lowered for CPU and CUDA by default
(`--platforms`); jax picks the one it runs on. The models' 'auto' lowerings
(`jaxdl.ops.platform`) put the CPU fast paths in the CPU program only.

Inputs: images are float32 [batch, H, W, C] in [0, 1] (uint8 pixels / 255,
channels as the dataset: 1 = grayscale, 3 = RGB); text is int32 [batch, maxlen]
token ids (0 = padding, 1 = unknown word, words from 2, post-padded). Output:
float32 [batch, num_classes] class probabilities.

Loading it needs only jax, numpy and `flatbuffers` (jax reads serialized
exports with it but does not install it: `pip install jax numpy flatbuffers`):

    import json, numpy as np
    from jax import export
    with open("mnist.jaxdl", "rb") as f:
      exported = export.deserialize(bytearray(f.read()))
    meta = json.load(open("mnist.jaxdl.json"))
    x = np.zeros((2, *meta["input"]["shape"][1:]), meta["input"]["dtype"])  # [0, 1] pixels
    probs = np.asarray(exported.call(x))                  # [2, num_classes]
    print([meta["class_names"][i] for i in probs.argmax(-1)])
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from jaxdl.evaluate import ToolError, class_names, classifies, restored, tool_main

FORMAT = "jaxdl-export-v1: jax.export serialized Exported (StableHLO), weights as constants"
LOADER = """import json, numpy as np
from jax import export
with open(PATH, "rb") as f:
  exported = export.deserialize(bytearray(f.read()))
meta = json.load(open(PATH + ".json"))
probs = np.asarray(exported.call(x))  # x: meta["input"]["dtype"], shape meta["input"]["shape"]"""


def inference_fn(run, state):
  """(fn, input dtype, per-example input shape, preprocessing note) with the
  weights as host constants: fn(inputs) -> class probabilities."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params, model_state = jax.device_get((state.params, state.model_state))
  task, info = run.task, run.info
  if "vocab_size" in info:
    maxlen = int(info.get("maxlen") or run.config.maxlen)
    shape, dtype = (maxlen,), "int32"
    note = ("int32 token ids from the run's tokenizer (see 'tokenizer'): lowercase, <br /> "
            "-> space, Keras' punctuation filter, split on whitespace; word -> id "
            "(index in words + 2, unknown = 1), post-padded with 0 / "
            f"{info.get('truncating', 'post')}-truncated to maxlen={maxlen} (keeping "
            f"{'the end' if info.get('truncating') == 'pre' else 'the beginning'})")
    mean = std = None
  else:
    shape, dtype = tuple(int(d) for d in info["input_shape"]), "float32"
    mean, std = run.mean, run.std
    note = ("float32 pixels in [0, 1] (uint8 / 255), channels-last, "
            f"{'grayscale' if shape[-1] == 1 else 'RGB'}; "
            + (f"normalised inside with mean={list(mean)}, std={list(std)}" if mean
               else "no further normalisation"))

  def fn(x):
    if mean is not None:
      x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return task.predict(params, model_state, x)

  return fn, dtype, shape, note


def export_run(run, state, *, batch_size: int | None = None,
               platforms: Sequence[str] = ("cpu", "cuda")):
  """(jax.export.Exported, meta dict) of the run's inference function.

  `batch_size` None: polymorphic batch, falling back to a fixed batch of 1
  when the model does not export that way; an int: that fixed batch.
  `platforms` that fail to lower fall back to this process's backend.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax import export  # pylint: disable=g-import-not-at-top
  if not classifies(run.task):
    raise ToolError(f"task {run.config.task!r} does not classify; "
                    "export needs a classification run")
  fn, dtype, shape, note = inference_fn(run, state)
  jfn = jax.jit(fn)
  notes = []

  def lower(batch, plats):
    return export.export(jfn, platforms=tuple(plats))(
        jax.ShapeDtypeStruct((batch, *shape), np.dtype(dtype)))

  attempts = []
  if batch_size is None:
    attempts.append(export.symbolic_shape("b")[0])
  attempts.append(int(batch_size or 1))
  plats_options = [tuple(platforms)]
  if tuple(platforms) != (jax.default_backend(),):
    plats_options.append((jax.default_backend(),))
  exported, err = None, None
  for batch in attempts:
    for plats in plats_options:
      try:
        exported = lower(batch, plats)
        break
      except Exception as e:  # pylint: disable=broad-except
        err = e
        notes.append(f"batch={batch} platforms={list(plats)}: {type(e).__name__}: "
                     f"{(str(e).strip().splitlines() or [''])[0][:200]}")
    if exported is not None:
      break
  if exported is None:
    raise ToolError(f"jax.export failed: {notes[-1] if notes else err}")
  poly = not isinstance(exported.in_avals[0].shape[0], int)
  n_out = int(exported.out_avals[0].shape[-1])
  meta: dict[str, Any] = {
      "format": FORMAT,
      "jax_version": jax.__version__,
      "platforms": list(exported.platforms),
      "batch_polymorphic": poly,
      "input": {"shape": [None if poly else int(exported.in_avals[0].shape[0]), *shape],
                "dtype": dtype, "preprocessing": note,
                **({"range": [0.0, 1.0]} if dtype == "float32" else {})},
      "output": {"shape": [None if poly else int(exported.out_avals[0].shape[0]), n_out],
                 "dtype": str(exported.out_avals[0].dtype),
                 "meaning": "class probabilities (softmax; sigmoid pair for binary)"},
      "class_names": class_names(run, n_out),
      "dataset": run.config.get("dataset"),
      "model": run.config.model.get("name"),
      "loader": LOADER,
  }
  if notes:
    meta["export_notes"] = notes  # what was tried before the kind that worked
  if "vocab_size" in run.info:
    tok = os.path.join(run.workdir, "tokenizer.json")
    with open(tok, encoding="utf-8") as f:
      meta["tokenizer"] = json.load(f)
  return exported, meta


def export_workdir(workdir: str, out: str, which: str = "latest", *,
                   batch_size: int | None = None,
                   platforms: Sequence[str] = ("cpu", "cuda")) -> dict[str, Any]:
  """Writes `out` and `out.json` for `workdir`'s checkpoint; returns the meta."""
  if not out:
    raise ToolError("no output file given; pass --out=FILE (e.g. --out=model.jaxdl)")
  with restored(workdir, which) as (run, state, step):
    exported, meta = export_run(run, state, batch_size=batch_size, platforms=platforms)
    meta.update(workdir=run.workdir, step=int(step), which=which)
  try:
    data = exported.serialize()
  except ImportError as e:
    raise ToolError(f"{e} (pip install flatbuffers)") from None
  out = os.path.abspath(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  meta["size_bytes"] = len(data)
  for path, payload, mode in ((out, bytes(data), "wb"),
                              (out + ".json", json.dumps(meta, indent=2), "w")):
    tmp = path + ".tmp"
    with open(tmp, mode) as f:
      f.write(payload)
    os.replace(tmp, path)
  return meta


def load(path: str):
  """(Exported, meta) from an exported file; jaxdl is not needed for this (see
  the module docstring for the same in four lines)."""
  from jax import export  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    exported = export.deserialize(bytearray(f.read()))
  meta_path = path + ".json"
  meta = json.load(open(meta_path, encoding="utf-8")) if os.path.exists(meta_path) else {}
  return exported, meta


def _main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ToolError(f"unexpected arguments {argv[1:]}; pass --workdir=DIR --out=FILE")
  f = flags.FLAGS
  plats = [p.strip() for p in f.platforms.split(",") if p.strip()]
  meta = export_workdir(f.workdir, f.out, f.which, batch_size=f.batch_size or None,
                        platforms=plats)
  batch = "any batch size" if meta["batch_polymorphic"] else f"batch {meta['input']['shape'][0]}"
  print(f"exported step {meta['step']} of {meta['workdir']} to {os.path.abspath(f.out)} "
        f"({meta['size_bytes']:,} bytes; {batch}; platforms {','.join(meta['platforms'])})")
  print(f"input {meta['input']['dtype']}{meta['input']['shape']} -> output "
        f"{meta['output']['dtype']}{meta['output']['shape']}; signature in {f.out}.json")


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "the run's folder")
  flags.DEFINE_string("out", None, "the file to write (its signature goes to OUT.json)")
  flags.DEFINE_enum("which", "latest", ["latest", "best"], "which checkpoint to export")
  flags.DEFINE_integer("batch_size", 0, "0: polymorphic batch; N: a fixed batch of N")
  flags.DEFINE_string("platforms", "cpu,cuda", "comma-separated platforms to lower for")


if __name__ == "__main__":
  _define_flags()
  tool_main(_main)
