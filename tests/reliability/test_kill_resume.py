"""SIGKILL, then relaunch, for every experiment: each relaunch resumes from the
last committed checkpoint, half-written save directories are ignored and
cleaned up, and the run ends bit-identical (params, eval, metrics.jsonl, the
files its evaluations write) to an uninterrupted one.

Every experiment is killed in the middle of an async save (the torn save is
skipped: it resumes from the checkpoint before). mnist_mlp is also killed
before its first checkpoint and between two checkpoints; the DBN once in each
phase. Where a kill lands is the loop's business, the same for every
experiment; what each experiment adds is its own state to restore exactly.

To cover a new experiment, add a `KillRun` to `KILL_RUNS` (tiny settings: the
whole folder must stay within a few minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile

import numpy as np
import pytest

import relutil

COMMON = ("--config.num_epochs=0", "--config.tensorboard=False")


@dataclasses.dataclass(frozen=True)
class KillRun:
  experiment: str
  args: tuple[str, ...]     # "{mnist}" / "{imdb}" are replaced by data folders
  kills: tuple[str, ...]    # JAXDL_FAULT_KILL points, in launch order ('save:N': mid-save)
  # One CPU device by default: under CPU contention XLA:CPU's in-process
  # all-reduce can abort ("Termination timeout ... rendezvous", jaxlib 0.10.2);
  # resuming on other device counts is tests/test_checkpoint.py's.
  devices: int = 1


# 60 steps, a checkpoint every 10, one kill while step 40 is being saved: the
# relaunch resumes from step 30.
_S60 = ("--config.num_steps=60", "--config.checkpoint_every=10", "--config.eval_every=30",
        "--config.log_every=10")
_K60 = ("save:40",)
_IMDB = ("--config.data_dir={imdb}", "--config.num_words=200",
         "--config.model.kwargs.vocab_size=200", "--config.maxlen=32", "--config.batch_size=8")
KILL_RUNS = [
    KillRun("mnist_mlp",
            ("--flagfile=experiments/flagfiles/mnist_mlp.flags", "--config.data_dir={mnist}",
             "--config.num_steps=120", "--config.batch_size=64",
             "--config.checkpoint_every=20", "--config.eval_every=60",
             "--config.log_every=20"),
            # before the first checkpoint, during a save, between two saves
            ("step:5", "save:40", "step:75")),
    # The CIFAR CNN architecture on digits (quick start data), on 2 devices:
    # a sharded run resumes exactly too.
    KillRun("cifar_cnn",
            ("--flagfile=experiments/flagfiles/quickstart.flags", "--config.num_steps=60",
             "--config.batch_size=32", "--config.checkpoint_every=8",
             "--config.eval_every=30", "--config.log_every=10",
             "--config.model.kwargs.features=(8,16,16)"),
            ("save:48",), devices=2),
    KillRun("mnist_autoencoder",
            ("--flagfile=experiments/flagfiles/mnist_autoencoder.flags",
             "--config.data_dir={mnist}", "--config.batch_size=32", *_S60), _K60),
    # DCGAN at its own size on the 8x8 digits (its MNIST evaluation takes a
    # minute on CPU), without FID.
    KillRun("mnist_gan",
            ("--flagfile=experiments/flagfiles/mnist_gan.flags", "--config.dataset=digits",
             "--config.gan.fid=False", "--config.batch_size=16", *_S60), _K60),
    # Pretraining 2 x 10 steps then fine-tuning: it resumes in both phases
    # (from step 10, then from step 30).
    KillRun("mnist_dbn",
            ("--flagfile=experiments/flagfiles/mnist_dbn.flags", "--config.data_dir={mnist}",
             "--config.model.kwargs.hidden=(32,32)", "--config.dbn.pretrain_steps=10",
             "--config.optimizer.schedule=constant", "--config.batch_size=32", *_S60),
            ("save:20", "save:40")),
    KillRun("imdb_lstm",
            ("--flagfile=experiments/flagfiles/imdb_lstm.flags", *_IMDB,
             "--config.model.kwargs.embed_dim=16", "--config.model.kwargs.hidden_size=16",
             *_S60), _K60),
    KillRun("imdb_transformer",
            ("--flagfile=experiments/flagfiles/imdb_transformer.flags", *_IMDB,
             "--config.model.kwargs.d_model=32", "--config.model.kwargs.mlp_dim=64",
             "--config.model.kwargs.num_layers=1", "--config.optimizer.warmup_steps=5",
             *_S60), _K60),
    # The causal LM; its evaluations also write sampled continuations (the
    # resumed run's are the uninterrupted run's).
    KillRun("imdb_lm",
            ("--flagfile=experiments/flagfiles/imdb_lm.flags", *_IMDB,
             "--config.imdb_source=archive", "--config.model.kwargs.max_len=32",
             "--config.model.kwargs.d_model=32", "--config.model.kwargs.mlp_dim=64",
             "--config.model.kwargs.num_layers=1", "--config.optimizer.warmup_steps=5",
             "--config.lm.sample_tokens=4", *_S60), _K60),
]

EXPERIMENTS = sorted(p.stem for p in (relutil.REPO / "experiments").glob("*.py")
                     if p.stem != "__init__")


def test_every_experiment_is_in_the_kill_list():
  listed = {k.experiment for k in KILL_RUNS}
  assert not set(EXPERIMENTS) - listed, (
      f"add a KillRun for {sorted(set(EXPERIMENTS) - listed)} to KILL_RUNS")


def _imdb_dir(tmp_path) -> tuple[str, dict]:
  """A tiny aclImdb_v1.tar.gz in the official layout, and the sha256 patch for it."""
  from jaxdl.data import text  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(0)
  d = tmp_path / "imdb"
  d.mkdir()
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for split in ("train", "test"):
      for lab, words in (("pos", ["great", "loved"]), ("neg", ["awful", "dull"])):
        for i in range(80):
          body = " ".join(rs.choice(words + ["the", "movie", "was"], size=12)).encode()
          info = tarfile.TarInfo(f"aclImdb/{split}/{lab}/{i}_7.txt")
          info.size = len(body)
          tar.addfile(info, io.BytesIO(body))
  (d / text.IMDB_ARCHIVE).write_bytes(buf.getvalue())
  sha = hashlib.sha256(buf.getvalue()).hexdigest()
  return str(d), {"jaxdl.data.text:EXPECTED_SHA256": {text.IMDB_ARCHIVE: sha}}


@pytest.mark.parametrize("kr", KILL_RUNS, ids=[k.experiment for k in KILL_RUNS])
def test_sigkill_anywhere_then_resume_is_bit_identical(kr, tmp_path, request):
  if kr.experiment not in EXPERIMENTS:
    pytest.skip(f"experiments/{kr.experiment}.py does not exist yet")
  subs, patch = {}, None
  if any("{mnist}" in a for a in kr.args):
    subs["mnist"] = request.getfixturevalue("mnist_dir")
  if any("{imdb}" in a for a in kr.args):
    subs["imdb"], patch = _imdb_dir(tmp_path)
  args = [a.format(**subs) for a in kr.args] + list(COMMON) + [
      f"--num_cpu_devices={kr.devices}"]

  ref = tmp_path / "ref"
  r = relutil.run(kr.experiment, *args, f"--workdir={ref}", patch=patch)
  assert r.returncode == 0, r.stderr[-3000:]

  wd = tmp_path / "killed"
  saw_torn_save = False
  for kill in kr.kills:
    committed = relutil.committed_steps(wd)
    r = relutil.run(kr.experiment, *args, f"--workdir={wd}", patch=patch,
                    env={"JAXDL_FAULT_KILL": kill})
    assert r.returncode == -9, (kill, r.stderr[-2000:])
    _assert_resumed_from(r.stdout, committed)  # no committed step was lost
    saw_torn_save |= kill.startswith("save:") and bool(relutil.tmp_dirs(wd))
  assert saw_torn_save, "no kill landed during an async save"

  committed = relutil.committed_steps(wd)
  r = relutil.run(kr.experiment, *args, f"--workdir={wd}", patch=patch)
  assert r.returncode == 0, r.stderr[-3000:]
  _assert_resumed_from(r.stdout, committed)
  a, b = relutil.summary(ref), relutil.summary(wd)
  assert b["resumed_from"] == max(committed)
  assert a["params_sha256"] == b["params_sha256"]
  assert a["eval"] == b["eval"]
  # The log is the uninterrupted run's: records after the resumed step were cut.
  assert relutil.metrics_records(wd) == relutil.metrics_records(ref)
  written = sorted(p.name for p in ref.glob("samples_*.txt"))   # the LM's evaluations
  assert bool(written) == (kr.experiment == "imdb_lm"), written
  for name in written:
    assert (wd / name).read_text() == (ref / name).read_text(), name
  assert relutil.tmp_dirs(wd) == []                          # leftovers cleaned up
  assert not (wd / "checkpoints" / "corrupt").exists()       # nothing looked corrupt
  assert not (wd / ".lock").exists()                         # released at exit


def _assert_resumed_from(stdout: str, committed: list[int]) -> None:
  m = re.search(r"resumed from step (\d+)", stdout)
  if committed:
    assert m and int(m.group(1)) == max(committed), (committed, stdout[-500:])
  else:
    assert m is None, stdout[-500:]
