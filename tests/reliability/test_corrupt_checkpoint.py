"""A damaged checkpoint is detected on restore, reported with its step and file,
moved to checkpoints/corrupt/<step> (never deleted), and the run falls back to
the newest good one -- ending bit-identical to the undamaged run."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from conftest import digits_mlp_config
from jaxdl import checkpoint, parallel
from jaxdl.train import loop

# One device: the checks here are about files and values, not sharding (and
# XLA:CPU's in-process collectives can abort under CPU contention).
ONE = parallel.make_mesh(jax.devices()[:1])

# tensorstore echoes "Event loop is closed" from a failed restore's sibling reads.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


_config = digits_mlp_config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A finished 40-step run with checkpoints 20, 30, 40 (and the best)."""
  wd = tmp_path_factory.mktemp("base")
  summary = loop.train_and_evaluate(_config(), str(wd), mesh=ONE)
  return wd, summary


def _copy(base, tmp_path) -> pathlib.Path:
  wd = tmp_path / "run"
  shutil.copytree(base[0], wd)
  return wd


def _steps(wd) -> list[int]:
  """The steps a fresh checkpoint manager sees in `wd`."""
  ckpt = loop.Run(_config(), str(wd), mesh=ONE).checkpointer
  steps = ckpt.all_steps()
  ckpt.close()
  return steps


def _array_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The state's array data files (ocdbt 'd/' files), largest first."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _truncate(step_dir):
  f = _array_files(step_dir)[0]
  with open(f, "r+b") as fh:
    fh.truncate(f.stat().st_size // 2)
  return f


def _flip_bit(step_dir):
  f = _array_files(step_dir)[0]
  data = bytearray(f.read_bytes())
  data[len(data) // 2] ^= 0x04
  f.write_bytes(bytes(data))
  return f


def _garbage(rel):
  def corrupt(step_dir):
    f = step_dir / rel
    assert f.exists(), f
    f.write_bytes(b"\x00\xffnot json{{")
    return f
  return corrupt


def _remove(rel):
  def corrupt(step_dir):
    p = step_dir / rel
    assert p.exists(), p
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    return p
  return corrupt


def _edit_meta(edit):
  """A changed field of the checksum record (a flipped bit in its text)."""
  def corrupt(step_dir):
    record = step_dir / "meta" / "metadata"
    meta = json.loads(record.read_text())
    name, leaf = next((n, l) for n, l in meta["leaves"].items() if "params" in n)
    edit(meta["leaves"], name, leaf)
    record.write_text(json.dumps(meta))
    return record
  return corrupt


def _rename_leaf(leaves, name, leaf):
  leaves[name[:-1] + chr(ord(name[-1]) ^ 1)] = leaves.pop(name)


CORRUPTIONS = {
    # Each looks like another model's checkpoint at this step only: the older
    # steps match the state, so it is damage (fallback), not another config.
    "meta_leaf_shape": _edit_meta(lambda ls, n, l: l.update(shape=[l["shape"][0] ^ 1, *l["shape"][1:]])),
    "meta_leaf_dtype": _edit_meta(lambda ls, n, l: l.update(dtype="float33")),
    "meta_leaf_name": _edit_meta(_rename_leaf),
    "truncated_array_file": _truncate,
    "flipped_bit_in_array_data": _flip_bit,
    "garbage_tree_metadata": _garbage("state/_METADATA"),
    "garbage_checksum_record": _garbage("meta/metadata"),
    "missing_item_data": _remove("data"),
    "missing_item_state": _remove("state"),
    "missing_item_meta": _remove("meta"),
    "missing_ocdbt_manifest": _remove("state/manifest.ocdbt"),
    "garbage_data_position": _garbage("data/process_0-of-1.json"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_falls_back_and_matches(kind, base, tmp_path, capsys):
  wd = _copy(base, tmp_path)
  step40 = wd / "checkpoints" / "40"
  CORRUPTIONS[kind](step40)
  capsys.readouterr()
  summary = loop.train_and_evaluate(_config(), str(wd), mesh=ONE)
  err = capsys.readouterr().err
  warn = [l for l in err.splitlines() if "checkpoint step 40" in l]
  assert len(warn) == 1 and str(step40) in warn[0] and "corrupt/40" in warn[0], err
  assert summary["resumed_from"] == 30
  assert summary["params_sha256"] == base[1]["params_sha256"]
  assert summary["eval"] == base[1]["eval"]
  assert (wd / "checkpoints" / "corrupt" / "40").is_dir()   # kept, not deleted
  assert 40 in _steps(wd)                                     # re-saved, good


def test_two_newest_corrupt_falls_back_two(base, tmp_path, capsys):
  wd = _copy(base, tmp_path)
  _flip_bit(wd / "checkpoints" / "40")
  _truncate(wd / "checkpoints" / "30")
  summary = loop.train_and_evaluate(_config(), str(wd), mesh=ONE)
  err = capsys.readouterr().err
  assert "checkpoint step 40" in err and "checkpoint step 30" in err
  assert summary["resumed_from"] == 20
  assert summary["params_sha256"] == base[1]["params_sha256"]
  assert sorted(p.name for p in (wd / "checkpoints" / "corrupt").iterdir()) == ["30", "40"]


def test_every_checkpoint_corrupt_is_refused_and_nothing_is_lost(base, tmp_path):
  wd = _copy(base, tmp_path)
  steps = sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  for p in steps:
    _remove("meta")(wd / "checkpoints" / p)
  log = (wd / "metrics.jsonl").read_text()
  with pytest.raises(checkpoint.NoUsableCheckpointError, match="no usable checkpoint") as e:
    loop.train_and_evaluate(_config(), str(wd), mesh=ONE)
  assert "--config.start_over=True" in str(e.value) and "\n" not in str(e.value)
  assert (wd / "metrics.jsonl").read_text() == log         # not truncated
  assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == steps
  assert not (wd / "checkpoints" / "corrupt").exists()


def test_start_over_trains_again_and_keeps_the_damaged_files(base, tmp_path, capsys):
  wd = _copy(base, tmp_path)
  steps = [p for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
  for p in steps:
    _remove("meta")(p)
  log = (wd / "metrics.jsonl").read_text()
  summary = loop.train_and_evaluate(_config(start_over=True), str(wd), mesh=ONE)
  assert summary["resumed_from"] is None
  assert summary["params_sha256"] == base[1]["params_sha256"]  # deterministic restart
  corrupt = sorted(p.name for p in (wd / "checkpoints" / "corrupt").iterdir())
  assert corrupt == sorted(p.name for p in steps)
  (old,) = wd.glob("metrics.jsonl.before_start_over.*")
  assert old.read_text() == log
  err = capsys.readouterr().err
  assert "starting over from step 0" in err and f"the old metrics to {old}" in err


def test_setting_aside_no_log_names_no_file(tmp_path):
  from jaxdl import logging as jlog  # pylint: disable=g-import-not-at-top
  assert jlog.set_aside_metrics(str(tmp_path), "before_start_over") is None
  (tmp_path / "metrics.jsonl").write_text("{}\n")
  moved = jlog.set_aside_metrics(str(tmp_path), "before_start_over")
  assert moved and open(moved).read() == "{}\n" and not (tmp_path / "metrics.jsonl").exists()


def test_garbage_step_metadata_is_tolerated_because_the_state_verifies(base, tmp_path):
  # orbax's _CHECKPOINT_METADATA (metrics, timestamps) is not needed to restore:
  # orbax logs the parse error, the state passes its sha256 check and is used.
  wd = _copy(base, tmp_path)
  _garbage("_CHECKPOINT_METADATA")(wd / "checkpoints" / "40")
  summary = loop.train_and_evaluate(_config(), str(wd), mesh=ONE)
  assert summary["resumed_from"] == 40
  assert summary["params_sha256"] == base[1]["params_sha256"]
  assert not (wd / "checkpoints" / "corrupt").exists()


def test_garbage_eval_metrics_are_moved_aside_and_the_step_kept(base, tmp_path, capsys):
  # orbax fails to open a checkpoint folder with an unparsable metrics item.
  wd = _copy(base, tmp_path)
  _garbage("metrics/metrics")(wd / "checkpoints" / "40")
  capsys.readouterr()
  ckpt = loop.Run(_config(), str(wd), mesh=ONE).checkpointer
  assert ckpt.all_steps() == [20, 30, 40] and ckpt.best_step() == 20  # 40 unranked
  ckpt.close()
  err = capsys.readouterr().err
  assert "checkpoint step 40" in err and "corrupt/40.metrics" in err, err
  assert (wd / "checkpoints" / "corrupt" / "40.metrics" / "metrics").is_file()


def test_another_model_is_refused_not_quarantined(base, tmp_path):
  wd = _copy(base, tmp_path)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="another model") as e:
    loop.train_and_evaluate(_config(model={"name": "mlp", "kwargs": {"hidden": (16,)}}),
                            str(wd), mesh=ONE)
  assert "new --workdir" in str(e.value) and "\n" not in str(e.value)
  assert not (wd / "checkpoints" / "corrupt").exists()
  assert _steps(wd) == [20, 30, 40]


def test_failed_restore_leaves_the_manager_usable(base, tmp_path):
  wd = _copy(base, tmp_path)
  _flip_bit(wd / "checkpoints" / "40")
  run = loop.Run(_config(), str(wd), mesh=ONE)
  ckpt = run.checkpointer
  # (the flipped bit fails the checksum, or the decompression of its chunk)
  with pytest.raises(checkpoint.CorruptCheckpointError, match="checksum|restore failed"):
    ckpt.restore(40, run.abstract_state())
  state = ckpt.restore(30, run.abstract_state())   # same manager, next one works
  assert int(state.step) == 30
  it = run.data_iterator()
  state, step = ckpt.restore_latest(run.abstract_state(), it)
  assert step == 30
  ckpt.save(31, state, it)                          # and it still saves
  ckpt.wait()
  assert 31 in ckpt.all_steps() and 40 not in ckpt.all_steps()
  ckpt.close()


def test_nonfinite_state_is_never_saved(tmp_path):
  run = loop.Run(_config(), str(tmp_path), mesh=ONE)
  state = run.engine.init_state(0)
  host = parallel.to_host(state)
  bad_params = jax.tree.map(lambda x: x.copy(), host.params)
  bad_params["Dense_0"]["bias"][3] = np.nan
  bad = state.replace(params=jax.device_put(bad_params, run.engine.replicated))
  with pytest.raises(checkpoint.CheckpointError, match="non-finite values in params/Dense_0/bias"):
    run.checkpointer.save(5, bad)
  run.checkpointer.close()
  assert run.checkpointer.all_steps() == []
  assert not any((tmp_path / "checkpoints").iterdir())


def test_not_enough_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
  run = loop.Run(_config(), str(tmp_path), mesh=ONE)
  state = run.engine.init_state(0)
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
  with pytest.raises(checkpoint.CheckpointError, match="not enough disk space to save step 5"):
    run.checkpointer.save(5, state)
  run.checkpointer.close()
  assert run.checkpointer.all_steps() == []


def test_data_position_from_another_process_count_is_not_corruption(base, tmp_path):
  # A checkpoint written by 2 processes (meta says so; grain kept files
  # process_{0,1}-of-2.json): one process resumes from the position recorded
  # in meta (the same global batch index on every process), not corrupt.
  wd = _copy(base, tmp_path)
  data = wd / "checkpoints" / "40" / "data"
  only = data / "process_0-of-1.json"
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_bytes(only.read_bytes())
  only.unlink()
  record = wd / "checkpoints" / "40" / "meta" / "metadata"
  meta = json.loads(record.read_text())
  assert meta["process_count"] == 1
  record.write_text(json.dumps(dict(meta, process_count=2)))
  summary = loop.train_and_evaluate(_config(num_steps=50), str(wd), mesh=ONE)
  assert summary["resumed_from"] == 40
  assert not (wd / "checkpoints" / "corrupt").exists()
  same = loop.train_and_evaluate(_config(num_steps=50), str(_copy(base, tmp_path / "b")),
                                 mesh=ONE)
  assert summary["params_sha256"] == same["params_sha256"]  # the same next batches
