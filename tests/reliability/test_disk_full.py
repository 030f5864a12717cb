"""A write that fails mid-run (disk full, simulated with RLIMIT_FSIZE in the
child: every write past the limit fails with EFBIG) is one error line; the
committed checkpoints stay intact, the torn save is never promoted to latest,
and the next launch resumes exactly."""

from __future__ import annotations

import relutil

ARGS = ["--config.dataset=digits", "--config.model.kwargs.hidden=(256,)",
        "--config.num_epochs=0", "--config.batch_size=32", "--config.checkpoint_every=10",
        "--config.eval_every=10", "--config.log_every=10", "--config.tensorboard=False",
        "--num_cpu_devices=1"]
# The state's array file is ~200 KB; config.json, metrics.jsonl and the small
# checkpoint items stay far below this.
LIMIT = 40_000


def test_disk_full_during_a_save(tmp_path):
  ref = tmp_path / "ref"
  r = relutil.run("mnist_mlp", *ARGS, "--config.num_steps=40", f"--workdir={ref}")
  assert r.returncode == 0, r.stderr[-2000:]

  wd = tmp_path / "run"
  r = relutil.run("mnist_mlp", *ARGS, "--config.num_steps=20", f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert relutil.committed_steps(wd) == [10, 20]

  # The disk "fills up": the save of step 30 cannot be written.
  r = relutil.run("mnist_mlp", *ARGS, "--config.num_steps=40", f"--workdir={wd}",
                  fsize=LIMIT)
  assert r.returncode == 1, r.stderr[-3000:]
  err = relutil.error_lines(r)
  assert len(err) == 1, r.stderr[-3000:]
  assert err[0].startswith("error: saving step 30 to ")
  assert "File too large" in err[0] and "committed checkpoints are intact" in err[0]
  assert "latest: step 20" in err[0]
  assert relutil.committed_steps(wd) == [10, 20]     # nothing torn promoted
  assert not (wd / ".lock").exists()

  # Space is back: the relaunch resumes from 20 and matches the uninterrupted run.
  r = relutil.run("mnist_mlp", *ARGS, "--config.num_steps=40", f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "resumed from step 20" in r.stdout
  assert relutil.tmp_dirs(wd) == []                   # the torn write was removed
  assert relutil.summary(wd)["params_sha256"] == relutil.summary(ref)["params_sha256"]
  assert relutil.metrics_records(wd) == relutil.metrics_records(ref)


def test_unwritable_checkpoint_dir_at_start(tmp_path):
  # `checkpoints` is a file: the checkpoint directory cannot be created.
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / "checkpoints").write_text("not a directory")
  r = relutil.run("mnist_mlp", *ARGS, "--config.num_steps=20", f"--workdir={wd}")
  assert r.returncode == 1
  err = relutil.error_lines(r)
  assert len(err) == 1 and err[0].startswith("error: ") and "checkpoint" in err[0], err
