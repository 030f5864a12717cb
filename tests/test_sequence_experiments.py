"""imdb_lstm and imdb_transformer end to end on a generated aclImdb archive
(their exact resume after SIGKILL: tests/reliability/test_kill_resume.py), and
the causal LM task."""

import jax
import numpy as np
import pytest

from datagen import write_imdb_archive
from runner import run_experiment, summary
from jaxdl import parallel
from jaxdl.configs import base_config
from jaxdl.train.engine import Engine
from jaxdl.train.language_model import LanguageModelTask

IMDB_SHA = "jaxdl.data.text:EXPECTED_SHA256"


@pytest.fixture(scope="module")
def imdb_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("imdb")
  _, sha = write_imdb_archive(str(d / "aclImdb_v1.tar.gz"), n_per=40)
  return d, {IMDB_SHA: {"aclImdb_v1.tar.gz": sha}}


@pytest.mark.parametrize("experiment", ["imdb_lstm", "imdb_transformer"])
def test_smoke_flagfile_learns_the_generated_reviews(tmp_path, imdb_dir, experiment):
  data, sha = imdb_dir
  r = run_experiment(experiment, f"--flagfile=experiments/flagfiles/{experiment}_smoke.flags",
                     f"--config.data_dir={data}", f"--workdir={tmp_path}", patch=sha)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (tmp_path / "tokenizer.json").exists()
  s = summary(tmp_path)
  assert s["final_step"] == 30
  assert s["eval"]["accuracy"] >= 0.9, s  # sentiment words make the generated data easy


def test_causal_lm_task_learns_a_repeating_sequence():
  c = base_config()
  c.task = "language_model"
  c.model.name = "transformer_lm"
  c.model.kwargs = {"vocab_size": 12, "d_model": 32, "num_heads": 2, "num_layers": 1,
                    "mlp_dim": 64, "max_len": 16, "dropout_rate": 0.0}
  c.optimizer.learning_rate = 3e-3
  task = LanguageModelTask(c, {"vocab_size": 12})
  rng = np.random.default_rng(0)
  starts = rng.integers(0, 10, 16)
  tokens = ((starts[:, None] + np.arange(16)[None]) % 10 + 2).astype(np.int32)  # 2..11 cycling
  tokens[:4, 12:] = 0  # some padding
  batch = {"inputs": tokens}
  mesh = parallel.make_mesh()
  engine = Engine(task, mesh, batch)
  state = engine.init_state(0)
  gb = parallel.global_batch(batch, mesh)
  for i in range(60):
    state, m = engine.train_step(state, gb)
    jax.block_until_ready(m)
    first = float(m["loss"]) if i == 0 else first
  assert float(m["loss"]) < 0.2 * first
  ev = engine.evaluate(state, [dict(batch, mask=np.ones(16, np.float32))])
  assert ev["accuracy"] > 0.95
