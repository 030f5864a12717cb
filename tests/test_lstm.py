"""LSTM layer against an independent NumPy implementation of the equations;
scan implementations ('auto', 'fused', 'autodiff'), forward-mode autodiff,
accelerator export, Keras-style dropouts and the carry in/out."""

import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.configs import ConfigError
from jaxdl.models import get_model
from jaxdl.models import lstm as lstm_lib

B, T, F, H = 5, 7, 3, 4
LENGTHS = np.array([7, 3, 1, 5, 0], np.int32)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _np_lstm_row(x, wx, wh, b, c0=None, h0=None, mx=None, mh=None):
  """One sequence x [L, F] forward -> (h_seq [L, H], c_final, h_final).

  mx [F] / mh [H]: dropout masks (scaled) on x_t and on h_{t-1}, fixed over
  time; c0, h0 [H]: initial state (zeros when None).
  """
  hs = wh.shape[0]
  w = {g: (wx[:, k * hs:(k + 1) * hs], wh[:, k * hs:(k + 1) * hs],
           b[k * hs:(k + 1) * hs]) for k, g in enumerate("ifgo")}
  c = np.zeros(hs) if c0 is None else c0
  h = np.zeros(hs) if h0 is None else h0
  out = []
  for xt in x:
    xt = xt if mx is None else xt * mx
    hr = h if mh is None else h * mh
    pre = {g: xt @ wxg + hr @ whg + bg for g, (wxg, whg, bg) in w.items()}
    i, f, o = _sigmoid(pre["i"]), _sigmoid(pre["f"]), _sigmoid(pre["o"])
    g = np.tanh(pre["g"])
    c = f * c + i * g
    h = o * np.tanh(c)
    out.append(h)
  return np.array(out).reshape(len(x), hs), c, h


def _np_direction(x, lengths, p, reverse, c0=None, h0=None, mx=None, mh=None):
  """Batch [B, T, F] -> (seq [B, T, H] zero-padded, final c, final h [B, H]).

  c0, h0 [B, H], mx [B, F], mh [B, H] or None (per row, see _np_lstm_row)."""
  wx = np.asarray(p["input"]["kernel"], np.float64)
  b = np.asarray(p["input"]["bias"], np.float64)
  wh = np.asarray(p["recurrent_kernel"], np.float64)
  hs = wh.shape[0]
  seq = np.zeros(x.shape[:2] + (hs,))
  fin_c = np.zeros((x.shape[0], hs))
  fin_h = np.zeros((x.shape[0], hs))
  row = lambda a, r: None if a is None else np.asarray(a[r], np.float64)  # noqa: E731
  for r, n in enumerate(lengths):
    xr = x[r, :n][::-1] if reverse else x[r, :n]
    out, c, h = _np_lstm_row(xr, wx, wh, b, row(c0, r), row(h0, r),
                             row(mx, r), row(mh, r))
    seq[r, :n] = out[::-1] if reverse else out
    fin_c[r], fin_h[r] = c, h
  return seq, fin_c, fin_h


def _np_lstm(x, lengths, params, num_layers, bidirectional, c0=None, h0=None):
  """Stacked reference; c0, h0 [num_layers * dirs, B, H] or None. Returns
  (top sequence, final h of the top layer, final c and h of all)."""
  dirs = 2 if bidirectional else 1
  final, cs, hs = None, [], []
  init = lambda a, k: None if a is None else a[k]  # noqa: E731
  for layer in range(num_layers):
    k = layer * dirs
    seq, c, final = _np_direction(x, lengths, params[f"layer{layer}_fwd"], False,
                                  init(c0, k), init(h0, k))
    cs.append(c)
    hs.append(final)
    if bidirectional:
      seq_b, c_b, fin_b = _np_direction(x, lengths, params[f"layer{layer}_bwd"],
                                        True, init(c0, k + 1), init(h0, k + 1))
      cs.append(c_b)
      hs.append(fin_b)
      seq = np.concatenate([seq, seq_b], -1)
      final = np.concatenate([final, fin_b], -1)
    x = seq
  return x, final, (np.stack(cs), np.stack(hs))


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
  seq_ref, fin_ref, _ = _np_lstm(x.astype(np.float64), LENGTHS, params,
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


# --- initial carry in, final carry out -------------------------------------


def test_initial_and_final_carry_with_the_sequence_in_one_apply():
  x = np.random.RandomState(4).randn(B, T, F).astype(np.float32)
  rs = np.random.RandomState(5)
  layer = lstm_lib.LSTM(H, num_layers=2, bidirectional=True,
                        return_sequences=True, return_carry=True)
  c0, h0 = (rs.randn(4, B, H).astype(np.float32) for _ in range(2))
  variables = jax.jit(layer.init)(jax.random.key(1), x, LENGTHS)
  (c, h), seq = jax.jit(layer.apply)(variables, x, LENGTHS, (c0, h0))
  params = jax.tree.map(np.asarray, variables["params"])
  seq_ref, _, (c_ref, h_ref) = _np_lstm(x.astype(np.float64), LENGTHS, params,
                                        2, True, c0, h0)
  assert c.shape == h.shape == (4, B, H)
  np.testing.assert_allclose(seq, seq_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(c, c_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(h, h_ref, atol=1e-5, rtol=1e-5)
  # The zero-length row keeps its initial state in every layer and direction.
  np.testing.assert_array_equal(c[:, 4], c0[:, 4])
  # One unidirectional layer: (c, h) each [B, H], as `lstm_scan` takes them.
  one = lstm_lib.LSTM(H, return_sequences=True, return_carry=True)
  v1 = {"params": {"layer0_fwd": variables["params"]["layer0_fwd"]}}
  (c1, h1), seq1 = jax.jit(one.apply)(v1, x, LENGTHS, (c0[0], h0[0]))
  seq1_ref, _, h1_ref = _np_direction(x.astype(np.float64), LENGTHS,
                                      params["layer0_fwd"], False, c0[0], h0[0])
  np.testing.assert_allclose(c1, c_ref[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(h1, h1_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(seq1, seq1_ref, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match=r"initial_carry.*\(4, 5, 4\)"):
    layer.apply(variables, x, LENGTHS, (c0[0], h0[0]))


# --- scan_impl: 'auto' = 'fused' on CPU; forward mode; accelerator export ---


def _classifier(impl, **kw):
  kw = dict(dict(vocab_size=30, embed_dim=6, hidden_size=5, dropout=0.3,
                 recurrent_dropout=0.3), **kw)
  return get_model("lstm_classifier", scan_impl=impl, **kw)


def _tokens():
  tokens = np.random.RandomState(6).randint(1, 30, (3, 8)).astype(np.int32)
  tokens[1, 5:] = 0
  return jnp.asarray(tokens)


def test_auto_is_the_fused_scan_on_cpu_bit_for_bit():
  tokens = _tokens()
  grads, params = {}, {}
  for impl in ("auto", "fused"):
    model = _classifier(impl)
    params[impl] = jax.jit(model.init)(jax.random.key(0), tokens)["params"]

    def loss(p, key, model=model):
      logits, _ = model.apply({"params": p}, tokens, train=True,
                              rngs={"dropout": key})
      return jnp.mean(logits ** 2)

    grads[impl] = jax.jit(jax.value_and_grad(loss))(params[impl], jax.random.key(1))
  for tree in (params, grads):
    for a, b in zip(jax.tree.leaves(tree["auto"]), jax.tree.leaves(tree["fused"])):
      assert np.array_equal(np.asarray(a), np.asarray(b))


def test_forward_mode_on_the_classifier_matches_autodiff():
  tokens = _tokens()
  plain = _classifier("autodiff")
  params = jax.jit(plain.init)(jax.random.key(0), tokens)["params"]
  tangent = jax.tree.map(
      lambda p: jnp.asarray(np.random.RandomState(p.size).randn(*p.shape), p.dtype),
      params)
  rngs = {"dropout": jax.random.key(2)}  # train=True: the masks are in play

  def run(m):
    def train(p):
      return m.apply({"params": p}, tokens, train=True, rngs=rngs)[0]

    def evaluate(p):
      return m.apply({"params": p}, tokens)[0]

    # jit outside jax.jvp (see jaxdl.ops.platform).
    return jax.jit(lambda p, t: (jax.jvp(train, (p,), (t,)), jax.jacfwd(evaluate)(p)))

  with jax.default_matmul_precision("highest"):
    want = run(plain)(params, tangent)
    for impl in ("auto", "fused"):
      got = run(_classifier(impl))(params, tangent)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_forward_mode_on_the_layer_wrt_inputs_and_carry_matches_autodiff():
  """Each of x, (c0, h0) alone: every input of the fused custom_vjp must be
  seen by the forward-mode check, or jax.jvp raises."""
  rs = np.random.RandomState(7)
  x = jnp.asarray(rs.randn(B, T, F).astype(np.float32))
  c0, h0 = (jnp.asarray(rs.randn(B, H).astype(np.float32)) for _ in range(2))
  dx, dc, dh = (jnp.asarray(rs.randn(*a.shape).astype(np.float32)) for a in (x, c0, h0))
  kw = dict(return_sequences=True, return_carry=True, dropout=0.2,
            recurrent_dropout=0.3)
  plain = lstm_lib.LSTM(H, scan_impl="autodiff", **kw)
  variables = jax.jit(plain.init)(jax.random.key(0), x, LENGTHS)
  rngs = {"dropout": jax.random.key(3)}

  def run(m):
    f = lambda x, c, h: m.apply(variables, x, LENGTHS, (c, h), train=True,  # noqa: E731
                                rngs=rngs)
    return jax.jit(lambda: (
        jax.jvp(lambda x: f(x, c0, h0), (x,), (dx,)),
        jax.jvp(lambda c, h: f(x, c, h), (c0, h0), (dc, dh)),
        jax.jacfwd(lambda h: f(x, c0, h)[1])(h0)))

  with jax.default_matmul_precision("highest"):
    want = run(plain)()
    for impl in ("auto", "fused"):
      got = run(lstm_lib.LSTM(H, scan_impl=impl, **kw))()
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def _export_ops(impl, platforms):
  """Op histogram of the exported train-style gradient (StableHLO after MLIR's
  canonicalizer, which inlines the one-branch platform `case`, and
  remove-dead-values: jax leaves a dead call to a zeros function where the
  plain scan sits inside the selector)."""
  from jax._src.interpreters import mlir as jmlir  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir import ir, passmanager  # pylint: disable=g-import-not-at-top
  tokens = _tokens()
  model = _classifier(impl)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]

  def loss(p, x, key):
    logits, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
    return jnp.mean(logits ** 2)

  text = jax.export.export(jax.jit(jax.grad(loss)), platforms=platforms)(
      params, tokens, jax.random.key(1)).mlir_module()
  with jmlir.make_ir_context():
    module = ir.Module.parse(text)
    passmanager.PassManager.parse(
        "builtin.module(canonicalize,remove-dead-values)").run(module.operation)
    text = str(module)
  ops = collections.Counter(re.findall(r"\b(stablehlo\.[a-z_]+)\b", text))
  del ops["stablehlo.case"], ops["stablehlo.return"]
  return ops


def test_auto_exports_the_plain_scan_for_accelerators():
  for platforms in (("cuda",), ("tpu",)):
    assert _export_ops("auto", platforms) == _export_ops("autodiff", platforms)
  # The check can fail: for CPU, 'auto' is the fused scan.
  assert _export_ops("auto", ("cpu",)) != _export_ops("autodiff", ("cpu",))


def test_unknown_scan_impl_and_bad_rates_are_config_errors():
  tokens = _tokens()
  with pytest.raises(ConfigError, match="scan_impl 'fast'.*'auto'.*'fused'.*'autodiff'"):
    _classifier("fast").init(jax.random.key(0), tokens)
  with pytest.raises(ConfigError, match="recurrent_dropout=1.0.*recurrent_dropout="):
    _classifier("auto", recurrent_dropout=1.0).init(jax.random.key(0), tokens)


# --- Keras' dropout / recurrent_dropout ---------------------------------------


def _given_masks(masks):
  """Intercepts the layer's dropouts: x_dropout -> x * masks[path][0],
  h_dropout -> masks[path][1], path = the direction module's path."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, nn.Dropout) or module.name not in ("x_dropout", "h_dropout"):
      return next_fun(*args, **kwargs)
    mx, mh = masks[module.path[:-1]]
    return args[0] * mx[None] if module.name == "x_dropout" else jnp.asarray(mh)
  return nn.intercept_methods(interceptor)


@pytest.mark.parametrize("impl,reverse", [("autodiff", False), ("fused", False),
                                          ("autodiff", True), ("fused", True)])
def test_dropouts_match_numpy_values_and_gradients(impl, reverse):
  """Given masks: outputs and every gradient (params, x, c0, h0) against the
  float64 NumPy equations (gradients by central differences)."""
  b, t, f, h, rate_x, rate_h = 3, 5, 3, 4, 0.3, 0.4
  rs = np.random.RandomState(8)
  x = rs.randn(b, t, f)
  c0, h0 = rs.randn(b, h), rs.randn(b, h)
  lengths = np.array([5, 2, 0], np.int32)
  mx = (rs.rand(b, f) > rate_x) / (1 - rate_x)
  mh = (rs.rand(b, h) > rate_h) / (1 - rate_h)
  assert 0 < (mh == 0).sum() < mh.size and 0 < (mx == 0).sum() < mx.size
  r_seq, r_c, r_h = rs.randn(b, t, h), rs.randn(b, h), rs.randn(b, h)
  layer = lstm_lib.LSTMDirection(h, reverse=reverse, scan_impl=impl,
                                 dropout=rate_x, recurrent_dropout=rate_h)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  params = jax.tree.map(
      np.asarray, jax.jit(layer.init)(jax.random.key(0), f32(x), lengths)["params"])
  params["recurrent_kernel"] = params["recurrent_kernel"] * 2  # saturate less evenly

  def jax_loss(p, x, c0, h0):
    with _given_masks({(): (f32(mx), f32(mh))}):
      (c, hh), seq = layer.apply({"params": p}, x, lengths, (c0, h0), train=True,
                                 rngs={"dropout": jax.random.key(1)})
    return jnp.sum(seq * r_seq) + jnp.sum(c * r_c) + jnp.sum(hh * r_h), (seq, c, hh)

  args = (jax.tree.map(f32, params), f32(x), f32(c0), f32(h0))
  with jax.default_matmul_precision("highest"):
    (_, outs), grads = jax.jit(jax.value_and_grad(jax_loss, argnums=(0, 1, 2, 3),
                                                  has_aux=True))(*args)

  def np_outs(p, x, c0, h0):
    return _np_direction(x, lengths, p, reverse, c0, h0, mx, mh)

  def np_loss(p, x, c0, h0):
    seq, c, hh = np_outs(p, x, c0, h0)
    return np.sum(seq * r_seq) + np.sum(c * r_c) + np.sum(hh * r_h)

  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  for got, want in zip(outs, np_outs(p64, x, c0, h0)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # A mask that is ignored would change the outputs: they depend on it.
  assert not np.allclose(np_outs(p64, x, c0, h0)[0],
                         _np_direction(x, lengths, p64, reverse, c0, h0, mx, None)[0])

  leaves, tree = jax.tree_util.tree_flatten((p64, x, c0, h0))
  eps = 1e-6
  for k, (leaf, got) in enumerate(zip(leaves, jax.tree.leaves(grads))):
    num = np.zeros_like(leaf)
    for idx in np.ndindex(leaf.shape):
      vals = []
      for sign in (1, -1):
        moved = [a.copy() for a in leaves]
        moved[k][idx] += sign * eps
        vals.append(np_loss(*jax.tree_util.tree_unflatten(tree, moved)))
      num[idx] = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(got, num, atol=1e-5, rtol=1e-5)


def test_dropout_masks_are_per_sequence_scaled_and_train_only():
  b, t, f, h, rate_x, rate_h = 64, 6, 32, 32, 0.3, 0.4
  x = jnp.asarray(np.random.RandomState(9).randn(b, t, f).astype(np.float32) + 3)
  layer = lstm_lib.LSTM(h, bidirectional=True, dropout=rate_x,
                        recurrent_dropout=rate_h, return_sequences=True)
  variables = jax.jit(layer.init)(jax.random.key(0), x)
  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dropout):
      seen[context.module.path] = (args[0], out)
    return out

  def run(key):
    with nn.intercept_methods(record):
      out = layer.apply(variables, x, train=True, rngs={"dropout": key})
    return out, dict(seen)

  out1, masks1 = jax.jit(run)(jax.random.key(1))
  out2, _ = jax.jit(run)(jax.random.key(2))
  assert sorted(p[-1] for p in masks1) == ["h_dropout", "h_dropout",
                                           "x_dropout", "x_dropout"]
  kept = {}
  for path, (inp, out) in masks1.items():
    rate = rate_x if path[-1] == "x_dropout" else rate_h
    ratio = np.round(np.asarray(out / inp), 5)
    # Only 0 and 1/(1-rate); x_dropout's (time-major [T, B, F]) fixed over time.
    assert set(np.unique(ratio).tolist()) == {0.0, np.float32(round(1 / (1 - rate), 5))}
    if path[-1] == "x_dropout":
      assert ratio.shape == (t, b, f) and (ratio == ratio[:1]).all()
      ratio = ratio[0]
    assert ratio.shape == (b, f if path[-1] == "x_dropout" else h)
    assert abs((ratio == 0).mean() - rate) < 0.05
    kept[path] = ratio
  # Each direction draws its own masks; another key, other outputs.
  fwd, bwd = (kept[("layer0_fwd", "h_dropout")], kept[("layer0_bwd", "h_dropout")])
  assert (fwd != bwd).any()
  assert not np.allclose(out1, out2)
  # Evaluation: no masks, the same function as without dropout, bit for bit.
  seen.clear()
  no_dropout = lstm_lib.LSTM(h, bidirectional=True, return_sequences=True)
  with nn.intercept_methods(record):
    evaluated = jax.jit(layer.apply)(variables, x)
  assert not any(p[-1] == "h_dropout" for p in seen)
  np.testing.assert_array_equal(evaluated, jax.jit(no_dropout.apply)(variables, x))


def test_zero_rates_take_the_path_without_dropout():
  """dropout = recurrent_dropout = 0 (the default): train=True draws nothing
  and traces exactly the eval computation; today's layer, op for op."""
  x = jnp.asarray(np.random.RandomState(10).randn(B, T, F).astype(np.float32))
  for impl in ("autodiff", "fused"):
    layer = lstm_lib.LSTM(H, num_layers=2, scan_impl=impl, return_sequences=True)
    variables = jax.jit(layer.init)(jax.random.key(0), x, LENGTHS)
    key = jax.random.key(1)
    train = jax.make_jaxpr(lambda v: layer.apply(
        v, x, LENGTHS, train=True, rngs={"dropout": key}))(variables)
    evaluate = jax.make_jaxpr(lambda v: layer.apply(v, x, LENGTHS))(variables)
    assert "random" not in str(train)
    assert str(train) == str(evaluate)
