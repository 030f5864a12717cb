"""Figures of a run (curves, confusion matrix, image grids) and hparams logging.

One quick digits CNN run is trained for the module; the rest uses metrics
written through the real MetricWriter.
"""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from runner import run_experiment, summary
from jaxdl import logging as jlog
from jaxdl import plots

QUICK_ARGS = ["--flagfile=experiments/flagfiles/quickstart.flags",
              "--config.num_epochs=0", "--config.num_steps=40",
              "--config.batch_size=32", "--config.eval_every=20", "--config.log_every=10",
              "--config.model.kwargs.features=(8,16,16)"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("digits_run")
  r = run_experiment("cifar_cnn", *QUICK_ARGS, f"--workdir={wd}", plots=True)
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def _png_size(path):
  with Image.open(path) as img:
    assert img.format == "PNG"
    img.load()  # the whole file decodes
    return img.size


def _events(logdir):
  """TensorBoard's own reader (what the `tensorboard` program loads)."""
  from tensorboard.backend.event_processing import event_accumulator as ea
  acc = ea.EventAccumulator(str(logdir), size_guidance={ea.IMAGES: 0, ea.SCALARS: 0})
  acc.Reload()
  return acc


def test_a_run_writes_its_figures_summary_and_tensorboard(digits_run):
  """Without being asked: curves, confusion matrix, model summary, TB scalars."""
  assert _png_size(digits_run / "curves.png")[0] >= 800
  assert _png_size(digits_run / "confusion_matrix.png") == (640, 600)
  table = (digits_run / "model_summary.txt").read_text()
  assert "Conv_0" in table and "Dense_1" in table
  assert table.rstrip().endswith(f"Total parameters: {summary(digits_run)['num_params']:,}")
  acc = _events(digits_run / "tensorboard")
  tags = acc.Tags()["scalars"]
  for tag in ("train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm",
              "eval/accuracy", "eval/loss"):
    assert tag in tags, (tag, tags)
  assert [e.step for e in acc.Scalars("train/loss")] == [10, 20, 30, 40]
  ev = acc.Scalars("eval/accuracy")
  assert [e.step for e in ev] == [20, 40]
  assert ev[-1].value == pytest.approx(summary(digits_run)["eval"]["accuracy"], abs=1e-6)
  hp = _events(digits_run / "tensorboard" / "hparams")  # the HParams session
  assert "hparam/accuracy" in hp.Tags()["scalars"]


def test_generative_grids_reach_tensorboard_as_images(tmp_path, mnist_dir):
  wd = tmp_path / "ae"
  r = run_experiment("mnist_autoencoder", "--flagfile=experiments/flagfiles/mnist_autoencoder_smoke.flags",
                     f"--config.data_dir={mnist_dir}", "--config.num_steps=20",
                     "--config.eval_every=10", "--config.log_every=10", f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-3000:]
  acc = _events(wd / "tensorboard")
  assert "recon" in acc.Tags()["images"], acc.Tags()
  imgs = acc.Images("recon")
  assert [i.step for i in imgs] == [10, 20]
  with Image.open(wd / "recon_000020.png") as png:
    assert (imgs[-1].width, imgs[-1].height) == png.size


def test_write_run_plots_after_training(digits_run):
  from jaxdl import evaluate, runs
  run, state, _ = runs.restore_state(str(digits_run))
  run.checkpointer.close()
  written = plots.write_run_plots(str(digits_run), evaluate.run_confusion(run, state))
  assert written == [str(digits_run / "curves.png"), str(digits_run / "confusion_matrix.png")]
  metrics = plots.read_metrics(str(digits_run))
  assert list(metrics["eval"]["accuracy"][0]) == [20, 40]
  assert list(metrics["train"]["loss"][0]) == [10, 20, 30, 40]
  panels = plots._panels(metrics)  # pylint: disable=protected-access
  assert panels[:2] == ["loss", "accuracy"] and "learning_rate" in panels
  assert _png_size(digits_run / "curves.png") == plots.curves_size(len(panels)) == (1200, 600)
  assert _png_size(digits_run / "confusion_matrix.png") == (640, 600)
  # The matrix plotted is the evaluation's: its trace is the run's accuracy.
  probs, labels = evaluate.predict_split(run, state)
  cm = evaluate.confusion_matrix(labels, probs.argmax(-1), 10)
  assert cm.sum() == 360
  assert np.trace(cm) / 360 == pytest.approx(summary(digits_run)["eval"]["accuracy"], abs=1e-9)


def test_curves_from_the_metric_writer(tmp_path):
  w = jlog.MetricWriter(str(tmp_path), tensorboard=False)
  for step in range(1, 11):
    w.write_scalars(step, "train", {"d_loss": 1.0 / step, "g_loss": 2.0 + step})
  w.write_scalars(5, "train", {"d_loss": 7.0, "g_loss": 0.0})  # a redone step: last wins
  w.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 11, "split": "tra')  # torn last line (killed mid-write)
  m = plots.read_metrics(str(tmp_path))
  steps, values = m["train"]["d_loss"]
  assert list(steps) == list(range(1, 11)) and values[4] == 7.0
  size = plots.plot_curves(str(tmp_path), str(tmp_path / "gan.png"))
  assert size == (800, 300) == _png_size(tmp_path / "gan.png")  # d_loss and g_loss panels
  size = plots.plot_curves(m, str(tmp_path / "one.png"), names=["g_loss"])
  assert size == (400, 300) == _png_size(tmp_path / "one.png")


def test_confusion_matrix_png_and_counts(tmp_path):
  from jaxdl import evaluate
  labels = np.array([0, 0, 1, 2, 2, 2])
  preds = np.array([0, 1, 1, 2, 2, 0])
  cm = evaluate.confusion_matrix(labels, preds, 3)
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  size = plots.plot_confusion_matrix(cm, ["cat", "dog", "bird"], str(tmp_path / "cm.png"),
                                     size=(500, 420))
  assert size == (500, 420) == _png_size(tmp_path / "cm.png")
  with pytest.raises(ValueError, match="square"):
    plots.plot_confusion_matrix(np.zeros((2, 3)), None, str(tmp_path / "bad.png"))


def test_sample_and_reconstruction_grids(tmp_path):
  x = np.random.default_rng(0).random((8, 8, 8, 1)).astype(np.float32)
  assert plots.save_samples_grid(str(tmp_path / "s.png"), x) == (32, 32)  # 3x3 cells
  assert _png_size(tmp_path / "s.png") == (32, 32)
  hw = plots.save_reconstruction_grid(str(tmp_path / "r.png"), x, 1 - x, n=4)
  # 2 groups of 4 -> 4 rows (originals, reconstructions, originals, reconstructions).
  assert hw == (4 * 8 + 5 * 2, 4 * 8 + 5 * 2)
  with Image.open(tmp_path / "r.png") as img:
    g = np.asarray(img)
  np.testing.assert_array_equal(g[2:10, 2:10], np.round(x[0, ..., 0] * 255))
  np.testing.assert_array_equal(g[12:20, 2:10], np.round((1 - x[0, ..., 0]) * 255))
  with pytest.raises(ValueError, match="differ in shape"):
    plots.save_reconstruction_grid(str(tmp_path / "bad.png"), x, x[:4])


def test_hparams_are_flat_scalars_for_tensorboard(tmp_path):
  c = ml_collections.ConfigDict({"optimizer": {"learning_rate": 3e-3, "name": "adam"},
                                 "model": {"kwargs": {"hidden": (128, 64)}},
                                 "batch_size": 64, "flip": False, "note": None})
  flat = jlog.flatten_hparams(c)
  assert flat == {"optimizer.learning_rate": 3e-3, "optimizer.name": "adam",
                  "model.kwargs.hidden": "(128, 64)", "batch_size": 64, "flip": False,
                  "note": "None"}
  w = jlog.MetricWriter(str(tmp_path))
  w.write_hparams(flat, {"accuracy": 0.5})
  w.close()
  assert list((tmp_path / "tensorboard" / "hparams").iterdir())  # the HParams session
  assert json.dumps(flat)  # JSON-able as well
