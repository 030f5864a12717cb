"""The README's research-API example runs as printed."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_research_api_example_runs(capsys):
  text = README.read_text(encoding="utf-8")
  section = text[text.index("## Research API"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, "README.md: Research API", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["logits"].shape == (4, 10)
  assert namespace["outputs"].shape == (4, 10, 32) and namespace["hs"].shape == (4, 10, 32)
  assert namespace["y"].shape == (2, 10, 4, 16)
  assert "lstm_classifier" in capsys.readouterr().out
