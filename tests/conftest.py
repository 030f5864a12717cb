"""Test session: 4 simulated CPU devices so sharding is exercised on CPU."""

import os
import pathlib

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXDL_SHARED_DATA",
                                          REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_dir():
  d = SHARED_DATA / "mnist"
  if not (d / "train-images-idx3-ubyte.gz").exists():
    pytest.fail(f"real MNIST files expected in {d} (set JAXDL_SHARED_DATA)")
  return str(d)


@pytest.fixture(scope="session")
def fashion_mnist_dir():
  d = SHARED_DATA / "fashion_mnist"
  if not (d / "train-images-idx3-ubyte.gz").exists():
    pytest.fail(f"real Fashion-MNIST files expected in {d} (set JAXDL_SHARED_DATA)")
  return str(d)
