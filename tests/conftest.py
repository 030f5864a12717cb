"""Test session: 4 simulated CPU devices so sharding is exercised on CPU."""

import fcntl
import os
import pathlib
import shutil

import jax

from jaxdl import runtime
from jaxdl.configs import set_field  # noqa: F401 (the tests import it from here)

runtime.patient_cpu_collectives()  # in-process tests and every subprocess they start
runtime.quiet_checkpoint_echoes()
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")
# XLA:CPU compiles dominate the suite (a small ResNet's init: 15 s on a slow
# machine); tests build the same programs again and again, in-process and in
# the experiments they launch, which share this cache.
REPO = pathlib.Path(__file__).resolve().parents[1]
runtime.enable_compilation_cache(os.environ.setdefault(
    "JAXDL_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla")))

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(os.environ.get("JAXDL_SHARED_DATA",
                                          REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_dir():
  d = SHARED_DATA / "mnist"
  if not (d / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"real MNIST files not found in {d} (../shared/data, or set JAXDL_SHARED_DATA)")
  return str(d)


@pytest.fixture(scope="session")
def fashion_mnist_dir():
  d = SHARED_DATA / "fashion_mnist"
  if not (d / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"real Fashion-MNIST files not found in {d} (../shared/data, or set "
                "JAXDL_SHARED_DATA)")
  return str(d)


def digits_mlp_config(**overrides):
  """A small in-process run: an MLP on the bundled digits, 40 steps, eval every
  20, checkpoints every 10, no TensorBoard; `overrides` set config fields."""
  from jaxdl.configs import base_config  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.dataset = "digits"
  c.model.name = "mlp"
  c.model.kwargs = {"hidden": (32,)}
  c.batch_size = 40
  c.num_epochs = 0
  c.num_steps = 40
  c.checkpoint_every = 10
  c.eval_every = 20
  c.log_every = 10
  c.tensorboard = False
  for k, v in overrides.items():
    c[k] = v
  return c


def task_steps(task, example, total_steps=0):
  """(initial state, step(state, inputs) -> (state, metrics)): `task` in the
  engine on one device (the engine owns the optimizer, so a task is trained
  through it). The step donates its state."""
  from jaxdl import parallel  # pylint: disable=g-import-not-at-top
  from jaxdl.train.engine import Engine  # pylint: disable=g-import-not-at-top
  engine = Engine(task, parallel.make_mesh(jax.devices()[:1]), example,
                  total_steps=total_steps)
  step = lambda state, xb: engine.train_step(state, xb if isinstance(xb, dict) else {"inputs": xb})
  return engine.init_state(0), step


def build_once(tmp_path_factory, name: str, build) -> pathlib.Path:
  """The folder `build(folder)` filled, built once per test session however
  many pytest-xdist workers ask (the first builds under a file lock, the others
  wait and reuse it): for expensive module fixtures that launch runs, which
  `-n 2` would otherwise build on both workers. Users treat the folder as
  read-only (copy it to change it)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # shared by the session's workers
  folder, done = base / f"once-{name}", base / f"once-{name}.done"
  with open(base / f"once-{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)  # a build that failed part-way
      folder.mkdir()
      build(folder)
      done.touch()
  return folder
