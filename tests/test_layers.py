"""The import graph is a tree of layers: no circle, no import upward.

Every `import jaxdl...` of every module counts, inside functions too (a lazy
import is still a dependency). The layers are the README's picture.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

# Lowest first; a module may import from its own layer or a lower one.
LAYERS = [
    ("foundation", ("jaxdl", "jaxdl.configs", "jaxdl.parallel", "jaxdl.checksum",
                    "jaxdl.models", "jaxdl.ops", "jaxdl.images", "jaxdl.fid", "jaxdl.summary",
                    "jaxdl.runtime", "jaxdl.preemption", "jaxdl.faults", "jaxdl.data.errors")),
    ("data", ("jaxdl.data",)),
    ("step", ("jaxdl.train",)),
    ("checkpoint and writers", ("jaxdl.checkpoint", "jaxdl.lock", "jaxdl.logging")),
    ("loop", ("jaxdl.train.loop",)),
    ("entry points", ("jaxdl.experiment", "jaxdl.evaluate", "jaxdl.predict", "jaxdl.export",
                      "jaxdl.runs", "jaxdl.plots")),
]


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for p in (REPO / "jaxdl").rglob("*.py"):
    parts = p.relative_to(REPO).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
  return out


def _layer(name: str) -> int:
  """The layer of the longest matching prefix (the most specific entry)."""
  best, level = -1, None
  for i, (_, prefixes) in enumerate(LAYERS):
    for pre in prefixes:
      if (name == pre or name.startswith(pre + ".")) and len(pre) > best:
        best, level = len(pre), i
  assert level is not None, f"{name} is in no layer: add it to LAYERS and the README"
  return level


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  graph = {}
  for name, path in mods.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names if a.name.startswith("jaxdl")}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxdl"):
        for a in node.names:
          full = f"{node.module}.{a.name}"
          deps.add(full if full in mods else node.module)
    graph[name] = {d for d in deps if d in mods and d != name}
  return graph


def test_no_import_points_up_a_layer():
  up = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
        for a, deps in _graph().items() for b in deps
        # a package's __init__ may re-export its own submodules
        if _layer(b) > _layer(a) and not b.startswith(a + ".")]
  assert not up, "\n".join(sorted(up))


def test_no_import_circle():
  graph, state, cycles = _graph(), {}, []

  def visit(v, path):
    state[v] = "open"
    for w in sorted(graph[v]):
      if state.get(w) == "open":
        cycles.append(path[path.index(w):] + [w])
      elif w not in state:
        visit(w, path + [w])
    state[v] = "done"

  for v in sorted(graph):
    if v not in state:
      visit(v, [v])
  assert not cycles, cycles
