"""The experiments learn on small real subsets of ../shared/data: the CIFAR CNN
(cifar_cnn_smoke.flags) on a few thousand real CIFAR-10 JPEGs, imdb_lstm (the
experiment's config, as imdb_lstm_folder.flags reads it) on 2,000 real reviews,
and mnist_mlp_smoke.flags on the official MNIST files. Each skips, saying why,
when ../shared/data is absent (tests/realdata.py). The thresholds sit well
above chance (0.1, 0.5) and below what every seed measured reaches, so a model,
optimizer or data path that stops learning fails them; an untrained model
(learning rate 0) scores at chance on each."""

import pytest

import realdata
from runner import run_experiment, summary

FLAGS = "--flagfile=experiments/flagfiles/"
QUIET = ("--config.tensorboard=False", "--config.cache_dir=none")


def _train(module, workdir, *args):
  r = run_experiment(module, *args, *QUIET, f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  return summary(workdir)


def test_cifar_cnn_smoke_learns_real_cifar10(tmp_path):
  # 300 train images per class (3,000), 50 test images per class (500).
  data = realdata.cifar_subset(tmp_path, per_class_train=300, per_class_test=50)
  s = _train("cifar_cnn", tmp_path / "run", FLAGS + "cifar_cnn_smoke.flags",
             f"--config.data_dir={data}")
  assert s["num_params"] == 122570  # the Keras tutorial CNN (VALID padding)
  assert s["eval"]["accuracy"] > 0.35, s


def test_imdb_lstm_learns_2000_real_reviews(tmp_path):
  # 1,000 train reviews per label (2,000), 500 test reviews per label (1,000).
  data = realdata.imdb_subset(tmp_path, n_train=1000, n_test=500)
  s = _train("imdb_lstm", tmp_path / "run", FLAGS + "imdb_lstm_folder.flags",
             f"--config.data_dir={data}", "--config.num_epochs=4",
             "--config.batch_size=64",  # half the steps of the config's 32 (CI time)
             "--config.eval_every=1000")  # one evaluation, at the end
  assert s["eval"]["accuracy"] > 0.65, s


def test_mnist_mlp_smoke_on_real_mnist(tmp_path):
  realdata.require(realdata.SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz")
  s = _train("mnist_mlp", tmp_path / "run", FLAGS + "mnist_mlp_smoke.flags")
  assert s["final_step"] == 300
  assert s["eval"]["accuracy"] > 0.9, s
