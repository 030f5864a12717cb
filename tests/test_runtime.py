"""Process setup: distributed detection, and CPU tuning on CPU backends only."""

from __future__ import annotations

import os

import pytest

from jaxdl import runtime


@pytest.mark.parametrize("args,env,tpu,want", [
    ((), {}, False, None),
    (("h:1234", 2, 1), {}, False, ("flags", "h:1234", 2, 1)),
    ((), {"JAXDL_COORDINATOR": "h:9", "JAXDL_NUM_PROCESSES": "4", "JAXDL_PROCESS_ID": "3"},
     False, ("flags", "h:9", 4, 3)),
    ((), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, False, ("slurm", None, None, None)),
    ((), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False, None),
    ((), {"OMPI_COMM_WORLD_SIZE": "2"}, False, ("openmpi", None, None, None)),
    ((), {"OMPI_COMM_WORLD_SIZE": "1"}, False, None),
    # Cloud TPU VMs, one host or a pod slice: jax.distributed finds the hosts.
    ((), {}, True, ("cloud_tpu", None, None, None)),
])
def test_distributed_request(args, env, tpu, want):
  got = runtime.distributed_request(*args, environ=env, on_cloud_tpu_vm=tpu)
  if want is None:
    assert got is None
  else:
    assert (got.reason, got.coordinator_address, got.num_processes,
            got.process_id) == want


def test_runs_on_cpu(monkeypatch):
  monkeypatch.setattr(runtime, "_accelerator_plugins", lambda: [])
  assert runtime.runs_on_cpu({}, "") is True
  assert runtime.runs_on_cpu({"JAX_PLATFORMS": "cuda,cpu"}, "") is False
  assert runtime.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, "") is True
  assert runtime.runs_on_cpu({}, "tpu") is False
  monkeypatch.setattr(runtime, "_accelerator_plugins", lambda: ["xla_cuda13"])
  assert runtime.runs_on_cpu({}, "") is None  # only starting the backends tells
  assert runtime.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, "") is True
  assert runtime.runs_on_cpu() is True  # this test session: jax_platforms=cpu


@pytest.mark.parametrize("on_cpu", [True, False, None])
def test_cpu_tuning_only_on_a_cpu_backend(on_cpu, monkeypatch):
  calls = []
  monkeypatch.setattr(runtime, "runs_on_cpu", lambda: on_cpu)
  monkeypatch.setattr(runtime, "configure_cpu", lambda: calls.append("cpu") or True)
  monkeypatch.setattr(runtime, "initialize_distributed", lambda *a: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  done = runtime.setup(compilation_cache="none")
  flags = os.environ["XLA_FLAGS"].split()
  if on_cpu:
    assert calls == ["cpu"] and done.cpu_tuned
    assert set(runtime.PATIENT_CPU_COLLECTIVES) <= set(flags)
  else:  # a GPU/TPU host (or one we cannot tell before starting jax): untouched
    assert calls == [] and not done.cpu_tuned
    assert flags == ["--xla_foo=1"]
  assert done.compilation_cache is None


def test_tune_cpu_false_leaves_jax_defaults(monkeypatch):
  calls = []
  monkeypatch.setattr(runtime, "runs_on_cpu", lambda: True)
  monkeypatch.setattr(runtime, "configure_cpu", lambda: calls.append("cpu") or True)
  monkeypatch.setattr(runtime, "initialize_distributed", lambda *a: False)
  assert not runtime.setup(compilation_cache="none", tune_cpu=False).cpu_tuned
  assert calls == []


@pytest.mark.parametrize("url", ["gs://bucket/run", "s3://b/r", "file:///tmp/x"])
def test_a_url_workdir_is_one_clear_error(url):
  from jaxdl.train import loop  # pylint: disable=g-import-not-at-top
  with pytest.raises(loop.WorkdirError, match="POSIX path"):
    loop.prepare_workdir(url)
