"""State checksums: per-leaf fingerprints computed on the device (checkpoint
verification) and one sha256 over the params (the run summary's identity)."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import parallel


def leaf_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


@jax.jit
def _fingerprints(leaves: list[jax.Array]) -> jax.Array:
  """[n_leaves, 3] uint32: sum and odd-position-weighted sum of each leaf's
  32-bit words (narrower types widened, 64-bit split), and 1 if it is finite."""
  rows = []
  for x in leaves:
    raw = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    w = jax.lax.bitcast_convert_type(raw, {1: jnp.uint8, 2: jnp.uint16}.get(
        raw.dtype.itemsize, jnp.uint32)).astype(jnp.uint32).reshape(-1)
    odd = jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    rows.append(jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * odd, dtype=jnp.uint32),
                           jnp.asarray(finite, jnp.uint32)]))
  return jnp.stack(rows) if rows else jnp.zeros((0, 3), jnp.uint32)


def describe_state(state: Any) -> dict[str, dict[str, Any]]:
  """{leaf path: {shape, dtype, checksum: [sum, weighted], finite}}, tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  prints = np.asarray(jax.device_get(_fingerprints([x for _, x in flat])))
  return {leaf_name(p): {"shape": list(np.shape(x)), "dtype": str(x.dtype),
                         "checksum": [int(r[0]), int(r[1])], "finite": bool(r[2])}
          for (p, x), r in zip(flat, prints)}


def structure_difference(leaves: dict[str, dict], abstract_state: Any) -> str | None:
  """How the state described by `leaves` (`describe_state`) differs in leaf
  names, shapes or dtypes from `abstract_state`; None if it does not."""
  want = {leaf_name(p): (list(x.shape), str(x.dtype))
          for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  have = {n: (list(v.get("shape", [])), v.get("dtype")) for n, v in leaves.items()}
  if want == have:
    return None
  missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  if missing or extra:
    return (f"leaves {missing[:2] or extra[:2]} "
            f"{'missing from' if missing else 'only in'} the checkpoint")
  n = next(n for n in want if want[n] != have[n])
  return f"leaf {n} is {have[n][1]}{have[n][0]} there but {want[n][1]}{want[n][0]} here"


def failed_checksum(leaves: dict[str, dict], state: Any) -> str | None:
  """The first leaf of `state` whose checksum is not the one in `leaves`."""
  got = describe_state(state)
  return next((n for n, want in leaves.items()
               if got[n]["checksum"] != want.get("checksum")), None)


def params_sha256(params) -> str:
  """sha256 over every parameter's bytes, in tree order (for exact-resume checks)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(parallel.to_host(params)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()
