"""imdb_lm end to end on a small real subset of IMDB (the shared
aclImdb_folders.tar.gz), and its samples: written at each evaluation, with the
prompts, to the workdir and TensorBoard, and a function of (params, seed, step)
only, so a resumed run writes the same ones (after SIGKILL:
tests/reliability/test_kill_resume.py)."""

import json
import math

import pytest

import realdata
from conftest import REPO, set_field
from runner import run_experiment, summary

SMOKE = "experiments/flagfiles/imdb_lm_smoke.flags"


@pytest.fixture(scope="module")
def imdb_subset(tmp_path_factory):
  """An extracted aclImdb/ of 150 train and 50 test real reviews per label."""
  return realdata.imdb_subset(tmp_path_factory.mktemp("imdb"), n_train=150, n_test=50)


def _config(**overrides):
  """The experiment's config with the smoke flagfile's --config.* lines applied
  (scalars only, as they are), then `overrides` ({'a.b': value})."""
  from experiments.configs import imdb_lm  # pylint: disable=g-import-not-at-top
  c = imdb_lm.get_config()
  for line in (REPO / SMOKE).read_text().splitlines():
    if line.startswith("--config."):
      key, value = line[len("--config."):].split("=", 1)
      node = c
      for part in key.split(".")[:-1]:
        node = node[part]
      old = node[key.split(".")[-1]]
      set_field(c, key, value == "True" if isinstance(old, bool) else type(old)(value))
  for key, value in overrides.items():
    set_field(c, key, value)
  return c


def _args(data_dir):
  return [f"--flagfile={SMOKE}", f"--config.data_dir={data_dir}",
          "--config.checkpoint_every=5"]


@pytest.fixture(scope="module")
def smoke_run(imdb_subset, tmp_path_factory):
  wd = tmp_path_factory.mktemp("lm") / "ref"
  r = run_experiment("imdb_lm", *_args(imdb_subset), f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def test_smoke_run_lowers_held_out_perplexity_and_writes_samples(smoke_run):
  wd = smoke_run
  ev = summary(wd)["eval"]
  assert math.isfinite(ev["perplexity"])
  assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]))
  # An untrained LM is near uniform over the 200 words (perplexity ~200).
  assert ev["perplexity"] < 0.6 * 200, ev
  evals = [rec["metrics"]["perplexity"] for rec in map(json.loads,
           (wd / "metrics.jsonl").read_text().splitlines()) if rec["split"] == "eval"]
  assert len(evals) == 2 and evals[1] < evals[0], evals
  prompts = _config().lm.prompts
  for step in (15, 30):
    samples = (wd / f"samples_{step:06d}.txt").read_text()
    for p in prompts:
      assert f"prompt: {p}\n" in samples
    assert samples.count("  greedy: ") == samples.count("  T=0.8: ") == len(prompts)
  # ...and TensorBoard got them as text (event files store the string as is).
  events = b"".join(f.read_bytes() for f in (wd / "tensorboard").rglob("events.*"))
  assert b"samples/text_summary" in events and prompts[0].encode() in events


def test_samples_depend_only_on_params_seed_and_step(tmp_path, imdb_subset):
  """Untrained model, in process: its perplexity is ~ the vocabulary size; the
  samples are deterministic (a fresh task writes the same file) and change
  with the step (the key is fold_in(seed key, step))."""
  from jaxdl.train.registry import build_task  # pylint: disable=g-import-not-at-top
  from jaxdl.train.loop import Run  # pylint: disable=g-import-not-at-top
  config = _config(data_dir=str(imdb_subset), tensorboard=False)
  run = Run(config, str(tmp_path / "a"))
  state = run.engine.init_state(config.seed)
  ev, extras = run.evaluate(state, 15)
  assert 0.6 * 200 < ev["perplexity"] < 1.5 * 200, ev
  first = extras["samples"]
  task2 = build_task(config, run.info, run.num_steps)  # a fresh task, nothing cached
  assert task2.on_evaluate(state, run.workdir, 15)["samples"] == first
  later = task2.on_evaluate(state, run.workdir, 16)["samples"]
  sampled = lambda s: [l for l in s.splitlines() if l.startswith("  T=")]
  greedy = lambda s: [l for l in s.splitlines() if l.startswith("  greedy")]
  assert greedy(later) == greedy(first)          # the same params
  assert sampled(later) != sampled(first)        # another key
