"""Hoisted vs in-scan input projection: IMDB LSTM train step time.

The `lstm_classifier` projects the inputs of all time steps with one matrix
product before `lax.scan` (x W_x for [B*T, E] x [E, 4H]); the alternative does
x_t W_x inside the scan body, T small products in sequence. This script times
one jitted train step (forward + backward + Adam) of each, same parameters,
same data, same dropout, and prints a markdown table. Both are the plain
autodiff scan (`scan_impl='autodiff'`: the model's default 'auto' would be
the fused backward on CPU, a second difference).

  python scripts/bench_lstm_scan.py [--batch_sizes 32,128] [--windows 7]

Each figure is the median over timed windows (each window = `--steps` steps
after warm-up, ended by block_until_ready) with the min-max spread. On a
shared CPU the figures move by tens of percent between runs; compare the two
columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl.models import get_model
from jaxdl.models.lstm import lengths_from_tokens, lstm_cell

VOCAB, EMBED, HIDDEN, SEQ = 10000, 128, 100, 100
DROPOUT = 0.4


def make_batch(batch_size: int, seed: int = 0):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(1, VOCAB, (batch_size, SEQ)).astype(np.int32)
  lengths = rs.randint(SEQ // 2, SEQ + 1, batch_size)
  tokens[np.arange(SEQ)[None, :] >= lengths[:, None]] = 0  # post-padding
  labels = rs.randint(0, 2, batch_size).astype(np.int32)
  return jnp.asarray(tokens), jnp.asarray(labels)


def inside_scan_logits(params, tokens, *, train, key):
  """The same classifier, but x_t W_x + b computed inside the scan body."""
  emb = params["embed"]["embedding"][tokens]
  if train:
    # Spatial dropout like nn.Dropout(broadcast_dims=(1,)): one mask per row.
    keep = jax.random.bernoulli(key, 1 - DROPOUT,
                                (emb.shape[0], 1, emb.shape[2]))
    emb = jnp.where(keep, emb / (1 - DROPOUT), jnp.zeros_like(emb))
  p = params["lstm"]["layer0_fwd"]
  w_x, b = p["input"]["kernel"], p["input"]["bias"]
  w_h = p["recurrent_kernel"]
  lengths = lengths_from_tokens(tokens)
  valid = jnp.arange(SEQ)[:, None] < lengths[None, :]

  def body(carry, inp):
    x_t, m_t = inp
    new, _ = lstm_cell(w_h, carry, x_t @ w_x + b)  # projection per step
    m = m_t[:, None]
    return tuple(jnp.where(m, n, o) for n, o in zip(new, carry)), None

  z = jnp.zeros((tokens.shape[0], HIDDEN), emb.dtype)
  (_, h), _ = jax.lax.scan(body, (z, z), (jnp.swapaxes(emb, 0, 1), valid))
  head = params["head"]
  return h @ head["kernel"] + head["bias"]


def make_steps(model, opt):
  def hoisted_logits(params, tokens, *, train, key):
    out, _ = model.apply({"params": params}, tokens, train=train,
                         rngs=None if key is None else {"dropout": key})
    return out

  def make(logits_fn):
    def loss_fn(params, tokens, labels, key):
      logits = logits_fn(params, tokens, train=True, key=key)
      return optax.sigmoid_binary_cross_entropy(
          logits[:, 0], labels.astype(jnp.float32)).mean()

    @jax.jit
    def step(params, opt_state, tokens, labels, key):
      loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels, key)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    return step

  return ({"hoisted": make(hoisted_logits),
           "inside": make(inside_scan_logits)},
          {"hoisted": hoisted_logits, "inside": inside_scan_logits})


def time_steps(steps, params, opt_state, tokens, labels, *, warmup, windows,
               n_steps):
  """{name: [ms/step per window]}; windows of the variants interleave.

  Interleaving (alternating which goes first) makes both variants see the
  same background load on a shared machine.
  """
  key = jax.random.key(0)
  states = {}
  for name, step in steps.items():
    p, o = params, opt_state
    for i in range(warmup):
      p, o, loss = step(p, o, tokens, labels, jax.random.fold_in(key, i))
    jax.block_until_ready(loss)
    states[name] = (p, o)
  per_step = {name: [] for name in steps}
  names = list(steps)
  for w in range(windows):
    for name in (names if w % 2 == 0 else names[::-1]):
      step = steps[name]
      p, o = states[name]
      t0 = time.perf_counter()
      for i in range(n_steps):
        p, o, loss = step(p, o, tokens, labels,
                          jax.random.fold_in(key, 1000 * w + i))
      jax.block_until_ready((p, loss))
      per_step[name].append((time.perf_counter() - t0) / n_steps * 1e3)
      states[name] = (p, o)
  return per_step


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch_sizes", default="32,128")
  ap.add_argument("--windows", type=int, default=7)
  ap.add_argument("--steps", type=int, default=10, help="steps per window")
  ap.add_argument("--warmup", type=int, default=3)
  args = ap.parse_args()

  model = get_model("lstm_classifier", vocab_size=VOCAB, embed_dim=EMBED,
                    hidden_size=HIDDEN, spatial_dropout=DROPOUT,
                    scan_impl="autodiff")
  opt = optax.adam(1e-3)
  steps, logit_fns = make_steps(model, opt)
  rows = []
  for bs in (int(b) for b in args.batch_sizes.split(",")):
    tokens, labels = make_batch(bs)
    params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
    # Same function, two schedules: check they agree before timing them.
    outs = {k: f(params, tokens, train=False, key=None)
            for k, f in logit_fns.items()}
    np.testing.assert_allclose(outs["hoisted"], outs["inside"], atol=1e-4)
    res = time_steps(steps, params, opt.init(params), tokens, labels,
                     warmup=args.warmup, windows=args.windows,
                     n_steps=args.steps)
    rows.append((bs, res))

  dev = jax.devices()[0]
  print(f"\nLSTM train step (fwd+bwd+Adam), vocab {VOCAB}, embed {EMBED}, "
        f"hidden {HIDDEN}, seq {SEQ}; {dev.platform} {dev.device_kind}, "
        f"{args.windows} windows x {args.steps} steps, ms/step median "
        "[min-max]\n")
  print("| batch | hoisted x W_x (ms) | x_t W_x in scan (ms) "
        "| in-scan / hoisted |")
  print("|---:|---:|---:|---:|")
  for bs, res in rows:
    cells = []
    for name in ("hoisted", "inside"):
      v = res[name]
      cells.append(f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]")
    ratio = statistics.median(res["inside"]) / statistics.median(
        res["hoisted"])
    print(f"| {bs} | {cells[0]} | {cells[1]} | {ratio:.2f}x |")


if __name__ == "__main__":
  main()
