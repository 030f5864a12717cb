"""LSTM layer against an independent NumPy implementation of the equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.models import get_model
from jaxdl.models import lstm as lstm_lib

B, T, F, H = 5, 7, 3, 4
LENGTHS = np.array([7, 3, 1, 5, 0], np.int32)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _np_lstm_row(x, wx, wh, b):
  """One sequence x [L, F] forward -> (h_seq [L, H], c_final, h_final)."""
  hs = wh.shape[0]
  w = {g: (wx[:, k * hs:(k + 1) * hs], wh[:, k * hs:(k + 1) * hs],
           b[k * hs:(k + 1) * hs]) for k, g in enumerate("ifgo")}
  c = np.zeros(hs)
  h = np.zeros(hs)
  out = []
  for xt in x:
    pre = {g: xt @ wxg + h @ whg + bg for g, (wxg, whg, bg) in w.items()}
    i, f, o = _sigmoid(pre["i"]), _sigmoid(pre["f"]), _sigmoid(pre["o"])
    g = np.tanh(pre["g"])
    c = f * c + i * g
    h = o * np.tanh(c)
    out.append(h)
  return np.array(out).reshape(len(x), hs), c, h


def _np_direction(x, lengths, p, reverse):
  """Batch [B, T, F] -> (seq [B, T, H] zero-padded, final h [B, H])."""
  wx = np.asarray(p["input"]["kernel"], np.float64)
  b = np.asarray(p["input"]["bias"], np.float64)
  wh = np.asarray(p["recurrent_kernel"], np.float64)
  hs = wh.shape[0]
  seq = np.zeros(x.shape[:2] + (hs,))
  fin = np.zeros((x.shape[0], hs))
  for r, n in enumerate(lengths):
    xr = x[r, :n][::-1] if reverse else x[r, :n]
    out, _, h = _np_lstm_row(xr, wx, wh, b)
    seq[r, :n] = out[::-1] if reverse else out
    fin[r] = h
  return seq, fin


def _np_lstm(x, lengths, params, num_layers, bidirectional):
  final = None
  for layer in range(num_layers):
    seq, final = _np_direction(x, lengths, params[f"layer{layer}_fwd"], False)
    if bidirectional:
      seq_b, fin_b = _np_direction(x, lengths, params[f"layer{layer}_bwd"],
                                   True)
      seq = np.concatenate([seq, seq_b], -1)
      final = np.concatenate([final, fin_b], -1)
    x = seq
  return x, final


@pytest.mark.parametrize("num_layers,bidirectional", [
    (1, False), (1, True), (2, False), (2, True)])
def test_lstm_matches_numpy(num_layers, bidirectional):
  x = np.random.RandomState(0).randn(B, T, F).astype(np.float32)
  layers = {r: lstm_lib.LSTM(H, num_layers=num_layers,
                            bidirectional=bidirectional, return_sequences=r)
            for r in (True, False)}
  variables = jax.jit(layers[True].init)(jax.random.key(1), x, LENGTHS)
  outs = {r: np.asarray(jax.jit(l.apply)(variables, x, LENGTHS))
          for r, l in layers.items()}
  params = jax.tree.map(np.asarray, variables["params"])
  seq_ref, fin_ref = _np_lstm(x.astype(np.float64), LENGTHS, params,
                              num_layers, bidirectional)
  dirs = 2 if bidirectional else 1
  assert outs[True].shape == (B, T, H * dirs)
  assert outs[False].shape == (B, H * dirs)
  np.testing.assert_allclose(outs[True], seq_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(outs[False], fin_ref, atol=1e-5, rtol=1e-5)
  # Zero-length row: zero state, and the non-trivial rows are not all zero.
  assert np.all(outs[False][4] == 0)
  assert np.abs(outs[False][:4]).min() > 0


def test_lstm_scan_unroll_and_cell_agree():
  """`unroll` is a compile-time choice only; `lstm_cell` is one scan step."""
  rs = np.random.RandomState(1)
  w_h = jnp.asarray(rs.randn(H, 4 * H).astype(np.float32) * 0.5)
  xs = jnp.asarray(rs.randn(B, T, 4 * H).astype(np.float32))
  z = jnp.zeros((B, H))
  (c1, h1), s1 = lstm_lib.lstm_scan(w_h, xs, None, (z, z), unroll=1)
  (c3, h3), s3 = lstm_lib.lstm_scan(w_h, xs, None, (z, z), unroll=3)
  np.testing.assert_allclose(s1, s3, atol=1e-6)
  np.testing.assert_allclose(h1, h3, atol=1e-6)
  (c, h), out = lstm_lib.lstm_cell(w_h, (z, z), xs[:, 0])
  np.testing.assert_allclose(h, s1[:, 0], atol=1e-6)
  np.testing.assert_allclose(out, h, atol=0)


def test_extra_padding_does_not_change_classifier():
  model = get_model("lstm_classifier", vocab_size=20, embed_dim=6,
                    hidden_size=5, bidirectional=True, num_layers=2)
  rs = np.random.RandomState(2)
  tokens = rs.randint(1, 20, size=(3, 6)).astype(np.int32)
  tokens[1, 4:] = 0
  tokens[2, 2:] = 0
  variables = jax.jit(model.init)(jax.random.key(0), tokens)
  apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  out = apply(variables, tokens)
  padded = np.concatenate([tokens, np.zeros((3, 5), np.int32)], axis=1)
  out_padded = apply(variables, padded)
  assert out.shape == (3, 1)
  np.testing.assert_allclose(out, out_padded, atol=1e-6)
  # Changing a real token does change the output (the check can fail).
  changed = tokens.copy()
  changed[2, 0] = (changed[2, 0] % 19) + 1
  out_changed = apply(variables, changed)
  assert np.abs(np.asarray(out_changed[2] - out[2])).max() > 1e-6
  np.testing.assert_allclose(out_changed[:2], out[:2], atol=1e-6)


def test_lengths_from_tokens_uses_last_nonzero():
  tokens = jnp.array([[3, 0, 4, 0, 0], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(lstm_lib.lengths_from_tokens(tokens),
                                [3, 0, 5])


def test_gradients_finite_and_dropout_active():
  model = get_model("lstm_classifier", vocab_size=30, embed_dim=8,
                    hidden_size=6, num_layers=2, dropout_rate=0.5,
                    bidirectional=True)
  tokens = np.random.RandomState(3).randint(0, 30, (4, 9)).astype(np.int32)
  tokens[:, -2:] = 0
  tokens[3] = 0  # an all-padding row must not produce NaN gradients
  variables = jax.jit(model.init)(jax.random.key(0), tokens)

  def loss(params, key):
    logits, _ = model.apply({"params": params}, tokens, train=True,
                            rngs={"dropout": key})
    return jnp.mean(logits ** 2)

  loss_and_grad = jax.jit(jax.value_and_grad(loss))
  a, g = loss_and_grad(variables["params"], jax.random.key(1))
  leaves = jax.tree.leaves(g)
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in leaves)
  assert sum(float(jnp.abs(l).sum()) for l in leaves) > 0
  b, _ = loss_and_grad(variables["params"], jax.random.key(2))
  assert float(a) != float(b)  # dropout draws differ with the key
  apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  e1 = apply(variables, tokens)
  e2 = apply(variables, tokens)
  np.testing.assert_array_equal(e1, e2)  # deterministic at eval
