"""The tools a trained run is used with: evaluate, predict, export, model summary.

One small mnist_mlp run (300 steps on real MNIST) is trained for the module
and shared; the tools run as users run them (subprocesses) where it matters.
"""

import json
import os
import site
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from datagen import write_imdb_archive
from runner import run_experiment, summary

N_IMAGES = 40


def run_tool(module, *args, timeout=300):
  env = dict(os.environ)
  env.setdefault("JAXDL_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla"))
  return subprocess.run([sys.executable, "-m", f"jaxdl.{module}", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mnist_dir):
  wd = tmp_path_factory.mktemp("mnist_run")
  r = run_experiment("mnist_mlp", "--flagfile=experiments/flagfiles/mnist_mlp.flags",
                     f"--config.data_dir={mnist_dir}", f"--workdir={wd}",
                     "--config.num_epochs=0", "--config.num_steps=300",
                     "--config.eval_every=300", "--config.log_every=100")
  assert r.returncode == 0, r.stderr[-3000:]
  s = summary(wd)
  assert s["eval"]["accuracy"] >= 0.9, s
  return wd


@pytest.fixture(scope="module")
def restored(mnist_run):
  from jaxdl import runs
  run, state, step = runs.restore_state(str(mnist_run))
  run.checkpointer.close()
  return run, state, step


def test_evaluate_reproduces_the_runs_final_metrics(mnist_run):
  r = run_tool("evaluate", f"--workdir={mnist_run}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "accuracy" in r.stdout
  result = json.loads((mnist_run / "evaluate.json").read_text())
  want = summary(mnist_run)["eval"]
  assert result["step"] == 300 and set(result["metrics"]) == set(want)
  for k, v in want.items():
    assert result["metrics"][k] == pytest.approx(v, abs=1e-6), k
  cm = np.array(result["confusion_matrix"])
  assert cm.shape == (10, 10) and cm.sum() == 10000
  assert np.trace(cm) / cm.sum() == pytest.approx(want["accuracy"], abs=1e-9)
  with Image.open(mnist_run / "confusion_matrix.png") as img:
    assert img.format == "PNG" and img.size == (640, 600)


def test_tool_errors_are_one_line(tmp_path, restored):
  """Bad inputs: one line, no traceback (in-process for predict, CLI for evaluate)."""
  from jaxdl import predict
  p = predict.Predictor(*restored)
  with pytest.raises(predict.ToolError, match=r"missing.png: no such file$"):
    p.load_image(str(tmp_path / "missing.png"))
  with pytest.raises(predict.ToolError, match="--text is for text runs"):
    predict.collect_inputs(p, [], ["some text"])
  (tmp_path / "notes.png").write_text("not an image")
  with pytest.raises(predict.ToolError, match="notes.png: not a readable image"):
    p.load_image(str(tmp_path / "notes.png"))
  r = run_tool("evaluate", f"--workdir={tmp_path}")
  assert r.returncode == 1
  assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
  assert "config.json not found" in r.stderr


def test_predict_classifies_mnist_pngs_like_the_evaluation(tmp_path, mnist_run, mnist_dir,
                                                         restored):
  from jaxdl import evaluate
  from jaxdl.data import sources
  run, state, _ = restored
  # The evaluation's own per-example predictions reproduce its accuracy...
  probs, labels = evaluate.predict_split(run, state)
  assert float((probs.argmax(-1) == labels).mean()) == pytest.approx(
      summary(mnist_run)["eval"]["accuracy"], abs=1e-9)
  # ...and predict on real test images written as PNG files gives the same classes.
  _, test, _ = sources.load_image_dataset("mnist", mnist_dir)
  x, y = test.arrays
  paths = []
  for i in range(N_IMAGES):
    p = tmp_path / f"test_{i:03d}.png"
    Image.fromarray(x[i, ..., 0]).save(p)
    paths.append(str(p))
  r = run_tool("predict", f"--workdir={mnist_run}", "--json", "--top_k=3", *paths)
  assert r.returncode == 0, r.stderr[-3000:]
  out = [json.loads(l) for l in r.stdout.splitlines()]
  assert [o["input"] for o in out] == paths
  got = np.array([o["top"][0]["index"] for o in out])
  assert all(o["top"][0]["class"] == str(o["top"][0]["index"]) for o in out)
  assert all(len(o["top"]) == 3 and o["top"][0]["probability"] >= o["top"][1]["probability"]
             for o in out)
  want = probs[:N_IMAGES].argmax(-1)
  np.testing.assert_array_equal(got, want)
  acc = float((got == y[:N_IMAGES]).mean())
  assert acc == float((want == labels[:N_IMAGES]).mean()) and acc >= 0.9
  # The probabilities shown are the evaluation's, to float32 precision.
  np.testing.assert_allclose([o["top"][0]["probability"] for o in out],
                             probs[:N_IMAGES].max(-1), atol=1e-5)


def test_predict_rejects_wrong_size_unless_resize(tmp_path, mnist_run, mnist_dir):
  from jaxdl.data import sources
  _, test, _ = sources.load_image_dataset("mnist", mnist_dir)
  digit = tmp_path / "digit.png"
  Image.fromarray(test.arrays[0][0, ..., 0]).save(digit)
  p = tmp_path / "big.jpg"
  Image.fromarray(np.full((32, 40, 3), 200, np.uint8)).save(p)
  r = run_tool("predict", f"--workdir={mnist_run}", str(p))
  assert r.returncode == 1
  assert r.stderr.strip() == (f"error: {p} is 40x32 (width x height) but the model expects "
                              "28x28 images; pass --resize to resize it")
  # Plain output, one line per input: "path: class probability, ..." (top 3).
  r = run_tool("predict", f"--workdir={mnist_run}", "--resize", str(digit), str(p))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert len(lines) == 2 and lines[1].startswith(f"{p}: ") and lines[1].count(",") == 2
  assert lines[0].startswith(f"{digit}: {test.arrays[1][0]} 0.")


def test_exported_model_runs_without_jaxdl(tmp_path, mnist_run, restored):
  from jaxdl import export, predict
  run, state, step = restored
  out = tmp_path / "mnist.jaxdl"
  r = run_tool("export", f"--workdir={mnist_run}", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  meta = json.loads((tmp_path / "mnist.jaxdl.json").read_text())
  assert meta["batch_polymorphic"] and meta["input"] == {
      "shape": [None, 28, 28, 1], "dtype": "float32", "range": [0.0, 1.0],
      "preprocessing": meta["input"]["preprocessing"]}
  assert meta["output"]["shape"] == [None, 10] and meta["step"] == step
  assert meta["class_names"] == [str(i) for i in range(10)]
  x = np.random.default_rng(0).random((7, 28, 28, 1), np.float32)
  np.save(tmp_path / "x.npy", x)
  want = predict.Predictor(run, state, step).predict(x)
  # The same in this process through the loader.
  exported, _ = export.load(str(out))
  np.testing.assert_allclose(np.asarray(exported.call(x)), want, atol=1e-6)
  # A fresh interpreter: no site processing (so no editable jaxdl install),
  # no cwd/PYTHONPATH; only the venv's site-packages for jax and numpy.
  script = textwrap.dedent(f"""
      import sys
      sys.path.append({site.getsitepackages()[0]!r})
      try:
        import jaxdl
        raise SystemExit("jaxdl is importable")
      except ModuleNotFoundError:
        pass
      import json
      import numpy as np
      from jax import export
      with open({str(out)!r}, "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
      x = np.load({str(tmp_path / 'x.npy')!r})
      np.save({str(tmp_path / 'y7.npy')!r}, np.asarray(exported.call(x)))
      np.save({str(tmp_path / 'y2.npy')!r}, np.asarray(exported.call(x[:2])))
      assert not any(m == "jaxdl" or m.startswith("jaxdl.") for m in sys.modules)
      """)
  r = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "y7.npy"), want, atol=1e-6)
  np.testing.assert_allclose(np.load(tmp_path / "y2.npy"), want[:2], atol=1e-6)


def test_model_summary_lists_layers_and_counts_params(mnist_run, restored):
  from jaxdl import summary as model_summary
  run, _, _ = restored
  table, n = model_summary.model_summary(run.task, run.batches(0))
  assert n == summary(mnist_run)["num_params"] == 784 * 128 + 128 + 128 * 10 + 10
  for layer in ("Dense_0", "Dropout_0", "Dense_1", "float32[1,128]", "float32[1,10]"):
    assert layer in table, layer
  assert table.splitlines()[-1] == f"Total parameters: {n:,}"


def test_params_table_fallback_counts_every_array():
  import jax.numpy as jnp
  from jaxdl import summary as model_summary
  params = {"enc": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}, "scale": jnp.zeros(())}
  table = model_summary.params_table(params)
  assert "enc/kernel" in table and "3x4" in table and "scalar" in table
  assert model_summary.count_params(params) == 17


IMDB_SHA = "jaxdl.data.text:EXPECTED_SHA256"


def test_predict_text_run_uses_the_saved_tokenizer(tmp_path, monkeypatch):
  from jaxdl import predict
  from jaxdl.data import text
  data = tmp_path / "data"
  data.mkdir()
  _, sha = write_imdb_archive(str(data / "aclImdb_v1.tar.gz"), n_per=40)
  wd = tmp_path / "imdb"
  r = run_experiment("imdb_lstm", "--flagfile=experiments/flagfiles/imdb_lstm_smoke.flags",
                     f"--config.data_dir={data}", f"--workdir={wd}",
                     patch={IMDB_SHA: {"aclImdb_v1.tar.gz": sha}})
  assert r.returncode == 0, r.stderr[-3000:]
  monkeypatch.setitem(text.EXPECTED_SHA256, "aclImdb_v1.tar.gz", sha)
  p = predict.load_predictor(str(wd))
  assert p.is_text
  reviews = tmp_path / "reviews.txt"
  reviews.write_text("great wonderful loved superb movie\n\nawful boring hated dull film\n")
  items = predict.collect_inputs(p, [str(reviews)], ["A superb, wonderful film!"])
  assert [label for label, _ in items] == ["A superb, wonderful film!", f"{reviews}:1",
                                          f"{reviews}:3"]
  probs = p.predict_texts([t for _, t in items])
  names = p.class_names(probs.shape[-1])
  assert names == ["negative", "positive"]
  assert [names[i] for i in probs.argmax(-1)] == ["positive", "positive", "negative"]
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  # Encoded with the run's saved tokenizer, post-padded to the run's maxlen.
  tok = text.Tokenizer.load(str(wd / "tokenizer.json"))
  ids = p.encode_texts(["great movie zzzunseen"])
  assert ids.shape == (1, 32)
  assert list(ids[0, :3]) == tok.encode("great movie") + [text.OOV_ID]
  assert not ids[0, 3:].any()
  # The exported text model takes the same token ids and carries the tokenizer.
  from jaxdl import evaluate, export
  with evaluate.restored(str(wd)) as (run, state, _):
    exported, meta = export.export_run(run, state)
  assert meta["batch_polymorphic"] and meta["input"]["shape"] == [None, 32]
  assert meta["input"]["dtype"] == "int32" and meta["tokenizer"]["words"] == tok.words
  np.testing.assert_allclose(np.asarray(exported.call(p.encode_texts([t for _, t in items]))),
                             probs, atol=1e-6)
