"""Live progress on a terminal: a bar updated in place, with examples/s."""

import os
import pty
import subprocess

from conftest import REPO
from runner import launch_cmd, launch_env


def test_progress_bar_on_a_pseudo_terminal_updates_in_place(tmp_path):
  master, slave = pty.openpty()
  proc = subprocess.Popen(
      launch_cmd("mnist_mlp", "--config.dataset=digits", "--config.num_epochs=0",
                 "--config.num_steps=400", "--config.batch_size=32",
                 "--config.eval_every=400", "--config.log_every=100", f"--workdir={tmp_path}"),
      cwd=REPO, env=launch_env({"COLUMNS": "120"}), stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
  os.close(slave)
  out = b""
  while True:
    try:
      chunk = os.read(master, 65536)
    except OSError:  # EIO: the child closed the terminal
      break
    if not chunk:
      break
    out += chunk
  os.close(master)
  assert proc.wait(timeout=300) == 0
  text = out.decode("utf-8", "replace")
  bar = [seg for seg in text.split("\r") if "step" in seg and "/400" in seg]
  assert len(bar) >= 2, text[-2000:]               # redrawn in place, not new lines
  assert "400/400" in bar[-1] and "ex/s=" in bar[-1], bar[-1]
  assert "loss=" in text and "accuracy=" in text
  assert "eval step 400" in text                   # log lines still print above the bar
  assert "examples/s | ETA" not in text            # plain lines are for non-terminals
