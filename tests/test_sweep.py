"""scripts/sweep.py: grid parsing, and a 2-point sweep run and ranked."""

import csv
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO
from runner import NO_PLOTS, launch_env

_spec = importlib.util.spec_from_file_location("sweep", REPO / "scripts" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_grid_string_and_file(tmp_path):
  g = sweep.parse_grid("optimizer.learning_rate=1e-3,3e-3; batch_size=32,64;"
                       "model.kwargs.features=(8,16),(16,32)")
  assert g == {"optimizer.learning_rate": ["1e-3", "3e-3"], "batch_size": ["32", "64"],
               "model.kwargs.features": ["(8,16)", "(16,32)"]}
  pts = sweep.grid_points(g)
  assert len(pts) == 8 and pts[0] == {"optimizer.learning_rate": "1e-3", "batch_size": "32",
                                      "model.kwargs.features": "(8,16)"}
  assert sweep.point_name(3, pts[0]) == "003-learning_rate=1e-3-batch_size=32-features=_8,16_"
  f = tmp_path / "grid.json"
  f.write_text(json.dumps({"optimizer.learning_rate": [0.001, 0.01], "model.kwargs.hidden":
                           [[32], [64, 32]], "augment.flip": True}))
  assert sweep.parse_grid(str(f)) == {"optimizer.learning_rate": ["0.001", "0.01"],
                                      "model.kwargs.hidden": ["(32,)", "(64,32)"],
                                      "augment.flip": ["True"]}
  y = tmp_path / "grid.yaml"
  y.write_text("batch_size: [16, 32]\n")
  assert sweep.parse_grid(str(y)) == {"batch_size": ["16", "32"]}
  for bad in ("", "learning_rate", "=1,2", "a b=1"):
    with pytest.raises(ValueError):
      sweep.parse_grid(bad)


def test_rank_puts_failures_last():
  rows = [{"eval": {"loss": 0.5}}, {"eval": {}}, {"eval": {"loss": 0.2}}]
  assert [r["eval"].get("loss") for r in sweep.rank(rows, "loss", "min")] == [0.2, 0.5, None]
  assert [r["eval"].get("loss") for r in sweep.rank(rows, "loss", "max")] == [0.5, 0.2, None]


def test_two_point_sweep_runs_and_ranks(tmp_path):
  root = tmp_path / "sweep"
  cmd = [sys.executable, str(REPO / "scripts" / "sweep.py"), "--experiment=mnist_mlp",
         f"--root={root}", "--grid=optimizer.learning_rate=1e-4,1e-2", "--metric=accuracy",
         "--mode=max", "--parallel=2",
         # passed to every point: tiny MLP on the bundled digits, 40 steps
         "--config.dataset=digits", "--config.model.kwargs.hidden=(32,)",
         "--config.num_epochs=0", "--config.num_steps=40", "--config.batch_size=32",
         "--config.log_every=20", NO_PLOTS]
  r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                     env=launch_env())
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  with open(root / "results.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [row["optimizer.learning_rate"] for row in rows] == ["1e-2", "1e-4"]
  assert [row["rank"] for row in rows] == ["1", "2"]
  accs = [float(row["accuracy"]) for row in rows]
  assert accs[0] > accs[1]
  for row in rows:
    s = json.loads((root / row["workdir"] / "summary.json").read_text())
    assert float(row["accuracy"]) == s["eval"]["accuracy"] and row["status"] == "ok"
    assert s["final_step"] == 40
    cfg = json.loads((root / row["workdir"] / "config.json").read_text())
    assert cfg["model"]["kwargs"]["hidden"] == [32]
    assert str(cfg["optimizer"]["learning_rate"]) == str(float(row["optimizer.learning_rate"]))
  md = (root / "results.md").read_text()
  assert md.splitlines()[0] == "# Sweep: 2 points ranked by accuracy (max)"
  assert md.count("| ok |") == 2 and md in r.stdout


def test_failed_point_is_reported_and_ranked_last(tmp_path):
  root = tmp_path / "sweep"
  r = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"),
                      "--experiment=mnist_mlp", f"--root={root}",
                      "--grid=optimizer.learning_rate=-1", "--config.dataset=digits"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1
  rows = list(csv.DictReader(open(root / "results.csv", encoding="utf-8")))
  assert rows[0]["rank"] == "" and "learning_rate=-1" in rows[0]["status"]
  assert rows[0]["status"].startswith("error:")
