"""The on-disk dataset cache: arrays kept as one .npz per entry, written
atomically, read back only under the key they were written with.

`--config.cache_dir` ('' = `default_cache_dir()`, 'none' = off) holds the
decoded image folders (`jaxdl.data.folders`) and the bundled digits split
(`jaxdl.data.sources`). A damaged entry is made again, never trusted; an
unwritable folder costs the next launch the same work, never the run.
"""

from __future__ import annotations

import logging
import os
import socket

import numpy as np


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/jaxdl/datasets, or ~/.cache/jaxdl/datasets."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxdl", "datasets")


def entry_path(cache_dir: str | None, name: str) -> str | None:
  """The path of entry `name` in `cache_dir` ('' = the default), or None when
  the cache is off ('none' or None)."""
  if cache_dir is None or cache_dir == "none":
    return None
  return os.path.join(os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir())),
                      name)


def read(path: str, key: str) -> dict[str, np.ndarray] | None:
  """The arrays written under `key`, or None (no entry, another key, damaged)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      if str(z["key"]) != key:
        return None
      return {k: z[k] for k in z.files if k != "key"}
  except FileNotFoundError:
    return None
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("ignoring unreadable dataset cache %s (%s)", path, e)
    return None


def write(path: str, key: str, arrays: dict[str, np.ndarray]) -> None:
  """temp file + os.replace: readers see the old entry or the whole new one."""
  tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"  # hosts may share the folder
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "wb") as f:
      np.savez(f, key=np.array(key), **arrays)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("could not write the dataset cache %s (%s); pass "
                    "--config.cache_dir=DIR to put it elsewhere", path, e)
    try:
      os.remove(tmp)
    except OSError:
      pass
