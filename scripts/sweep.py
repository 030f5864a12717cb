"""Runs an experiment over a grid of config overrides and ranks the points.

    python scripts/sweep.py --experiment=cifar_cnn --root=runs/sweep \
        --grid='optimizer.learning_rate=1e-3,3e-3;batch_size=32,64' \
        --metric=accuracy --mode=max [--parallel=2] \
        --flagfile=experiments/flagfiles/quickstart.flags --config.num_epochs=5

Every point of the grid (the cartesian product) is one ordinary launch of
`python -m experiments.<experiment>` with `--config.<key>=<value>` for each
override, in its own workdir `<root>/<NNN>-<key>=<value>-...`, its output in
`<root>/<point>/sweep.log`. Arguments the sweep does not know (a `--flagfile`,
`--config.*` overrides) are passed to every point. A sweep launched again on
the same root relaunches every point, and each one resumes (a finished point
just reports its result), so a killed sweep is continued, not redone.

The grid is `key=v1,v2;key2=v3,v4` (commas inside parentheses or brackets stay
in the value: `model.kwargs.features=(8,16),(16,32)`), or a .json / .yaml file
`{"optimizer.learning_rate": [0.001, 0.003], "batch_size": [32, 64]}`.

At the end `<root>/results.csv` and `<root>/results.md` list the points ranked
by `--metric` from each point's summary.json 'eval' (`--mode=max|min`; failed
points last, with their error line), and the markdown table is printed. The
exit status is 1 when a point failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_values(text: str) -> list[str]:
  """'a,(1,2),[3,4]' -> ['a', '(1,2)', '[3,4]']: commas at bracket depth 0 only."""
  out, depth, cur = [], 0, ""
  for ch in text:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
    else:
      cur += ch
  out.append(cur.strip())
  return [v for v in out if v]


def _fmt_value(v) -> str:
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, (list, tuple)):
    return "(" + ",".join(_fmt_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return str(v)


def parse_grid(spec: str) -> dict[str, list[str]]:
  """{key: [value strings]} from 'k=v1,v2;k2=...' or a .json/.yaml file."""
  if os.path.isfile(spec):
    with open(spec, encoding="utf-8") as f:
      text = f.read()
    if spec.endswith((".yaml", ".yml")):
      import yaml  # pylint: disable=g-import-not-at-top
      data = yaml.safe_load(text)
    else:
      data = json.loads(text)
    if not isinstance(data, dict):
      raise ValueError(f"{spec}: expected a mapping of config key -> list of values")
    grid = {str(k): [_fmt_value(x) for x in (v if isinstance(v, list) else [v])]
            for k, v in data.items()}
  else:
    grid = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
      if "=" not in part:
        raise ValueError(f"grid part {part!r} is not key=v1,v2 (parts are separated by ';')")
      key, values = part.split("=", 1)
      key = key.strip()
      if key.startswith("--config."):
        key = key[len("--config."):]
      grid[key] = split_values(values)
  for key, values in grid.items():
    if not re.fullmatch(r"[A-Za-z_][\w.]*", key) or not values:
      raise ValueError(f"grid key {key!r} needs a config field name and at least one value")
  if not grid:
    raise ValueError("empty grid: pass --grid='key=v1,v2;key2=v3' or a .json/.yaml file")
  return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
  keys = list(grid)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(index: int, point: dict[str, str]) -> str:
  parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()]
  name = f"{index:03d}-" + "-".join(parts)
  return re.sub(r"[^\w.=,+-]", "_", name)[:120]


def run_point(experiment: str, workdir: str, point: dict[str, str], extra: list[str],
              timeout: float | None) -> dict:
  """Launches one point (blocking); returns its result row."""
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable, "-m", f"experiments.{experiment}", *extra,
         *(f"--config.{k}={v}" for k, v in point.items()), f"--workdir={workdir}"]
  t0 = time.perf_counter()
  with open(os.path.join(workdir, "sweep.log"), "w", encoding="utf-8") as log:
    log.write(" ".join(cmd) + "\n")
    log.flush()
    try:
      rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          timeout=timeout).returncode
    except subprocess.TimeoutExpired:
      rc = "timeout"
  row = {"workdir": workdir, "overrides": point, "returncode": rc,
         "seconds": time.perf_counter() - t0, "eval": {}, "error": ""}
  summary = os.path.join(workdir, "summary.json")
  if rc == 0 and os.path.exists(summary):
    with open(summary, encoding="utf-8") as f:
      s = json.load(f)
    row["eval"] = s.get("eval", {})
    row["final_step"] = s.get("final_step")
    row["num_params"] = s.get("num_params")
  else:
    with open(os.path.join(workdir, "sweep.log"), encoding="utf-8", errors="replace") as f:
      lines = [l.strip() for l in f if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    row["error"] = (errors or lines or [f"exit status {rc}"])[-1][:300]
  return row


def rank(rows: list[dict], metric: str, mode: str) -> list[dict]:
  """Points with the metric first (best first), then those without it."""
  ok = [r for r in rows if metric in r["eval"]]
  rest = [r for r in rows if metric not in r["eval"]]
  ok.sort(key=lambda r: r["eval"][metric], reverse=(mode == "max"))
  return ok + rest


def write_results(root: str, rows: list[dict], grid: dict, metric: str, mode: str) -> str:
  """results.csv and results.md in `root`; returns the markdown."""
  keys = list(grid)
  metrics = sorted({k for r in rows for k in r["eval"]}, key=lambda k: (k != metric, k))
  header = ["rank", *keys, *metrics, "final_step", "seconds", "status", "workdir"]
  table = []
  for i, r in enumerate(rows, 1):
    status = "ok" if metric in r["eval"] else (r["error"] or f"exit {r['returncode']}")
    table.append([i if metric in r["eval"] else "", *(r["overrides"][k] for k in keys),
                  *(r["eval"].get(m, "") for m in metrics), r.get("final_step", ""),
                  f"{r['seconds']:.1f}", status, os.path.relpath(r["workdir"], root)])
  with open(os.path.join(root, "results.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(table)

  def cell(v):
    if isinstance(v, float):
      return f"{v:.4f}"
    return str(v).replace("|", "\\|")

  md = [f"# Sweep: {len(rows)} points ranked by {metric} ({mode})", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  md += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table]
  text = "\n".join(md) + "\n"
  with open(os.path.join(root, "results.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog="Unknown arguments (--flagfile=..., --config.x=...) go to every point.")
  p.add_argument("--experiment", required=True, help="experiments.<name>, e.g. mnist_mlp")
  p.add_argument("--root", required=True, help="folder holding one workdir per point")
  p.add_argument("--grid", required=True, help="'k=v1,v2;k2=v3' or a .json/.yaml file")
  p.add_argument("--metric", default="accuracy", help="summary.json eval metric to rank by")
  p.add_argument("--mode", choices=("max", "min"), default="max")
  p.add_argument("--parallel", type=int, default=1, help="points run at once (processes)")
  p.add_argument("--timeout", type=float, default=None, help="seconds per point")
  args, extra = p.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--")]
  if bad:
    print(f"error: unexpected arguments {bad}; pass flags as --name=value", file=sys.stderr)
    return 2
  if args.parallel < 1:
    print(f"error: --parallel={args.parallel} must be >= 1", file=sys.stderr)
    return 2
  if not os.path.exists(os.path.join(REPO, "experiments", f"{args.experiment}.py")):
    names = sorted(n[:-3] for n in os.listdir(os.path.join(REPO, "experiments"))
                   if n.endswith(".py") and not n.startswith("_"))
    print(f"error: unknown experiment {args.experiment!r}: choose one of {names}",
          file=sys.stderr)
    return 2
  try:
    grid = parse_grid(args.grid)
  except (ValueError, OSError) as e:
    print(f"error: --grid: {e}", file=sys.stderr)
    return 2
  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  points = grid_points(grid)
  # Flagfiles are relative to the repository, where the points run.
  extra = [f"--flagfile={os.path.abspath(a.split('=', 1)[1])}"
           if a.startswith("--flagfile=") and os.path.exists(a.split("=", 1)[1]) else a
           for a in extra]
  print(f"sweep: {len(points)} points of experiments.{args.experiment} in {root} "
        f"({args.parallel} at a time)", flush=True)
  rows = []
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = {pool.submit(run_point, args.experiment,
                           os.path.join(root, point_name(i, pt)), pt, extra, args.timeout): i
               for i, pt in enumerate(points)}
    for fut in concurrent.futures.as_completed(futures):
      row = fut.result()
      rows.append(row)
      val = row["eval"].get(args.metric)
      shown = f"{args.metric} {val:.4f}" if val is not None else f"failed: {row['error']}"
      print(f"[{len(rows)}/{len(points)}] {os.path.basename(row['workdir'])}: {shown} "
            f"({row['seconds']:.1f} s)", flush=True)
  rows.sort(key=lambda r: r["workdir"])  # grid order among ties
  for r in rows:
    if r["returncode"] == 0 and args.metric not in r["eval"]:
      r["error"] = (f"no eval metric {args.metric!r} in summary.json (it has "
                    f"{sorted(r['eval'])}); pass --metric=NAME")
  rows = rank(rows, args.metric, args.mode)
  print(write_results(root, rows, grid, args.metric, args.mode), end="")
  print(f"wrote {os.path.join(root, 'results.csv')} and results.md")
  return 0 if all(args.metric in r["eval"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
