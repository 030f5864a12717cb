"""Transformer: attention against NumPy, causality, padding invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.models import get_model
from jaxdl.models import transformer as tf_lib


def _np_attention(q, k, v, allowed):
  """Loops over batch and head; allowed [B, Tq, Tk] bool."""
  b, tq, nh, d = q.shape
  out = np.zeros((b, tq, nh, v.shape[-1]))
  for bi in range(b):
    for h in range(nh):
      s = q[bi, :, h] @ k[bi, :, h].T / np.sqrt(d)
      s = np.where(allowed[bi], s, -np.inf)
      s = s - s.max(axis=-1, keepdims=True)
      w = np.exp(s)
      w /= w.sum(axis=-1, keepdims=True)
      out[bi, :, h] = w @ v[bi, :, h]
  return out


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_numpy(causal):
  rs = np.random.RandomState(0)
  b, t, nh, d = 3, 6, 2, 4
  q, k, v = (rs.randn(b, t, nh, d).astype(np.float32) for _ in range(3))
  tokens = np.ones((b, t), np.int32)
  tokens[1, 4:] = 0
  tokens[2, 1:] = 0
  allowed = np.broadcast_to((tokens != 0)[:, None, :], (b, t, t))
  mask = tf_lib.padding_mask(jnp.asarray(tokens))
  if causal:
    allowed = allowed & np.tril(np.ones((t, t), bool))[None]
    mask = jnp.logical_and(mask, tf_lib.causal_mask(t))
  got = tf_lib.dot_product_attention(q, k, v, mask)
  ref = _np_attention(q.astype(np.float64), k.astype(np.float64),
                      v.astype(np.float64), allowed)
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  # Masked keys really are ignored: changing them changes nothing.
  v2 = v.copy()
  v2[1, 4:] = 100.0
  got2 = tf_lib.dot_product_attention(q, k, v2, mask)
  np.testing.assert_allclose(got2[1], got[1], atol=1e-5)
  # ...while an unmasked key does matter.
  v3 = v.copy()
  v3[1, 0] += 1.0
  got3 = tf_lib.dot_product_attention(q, k, v3, mask)
  assert np.abs(np.asarray(got3[1] - got[1])).max() > 1e-3


def test_attention_no_mask_and_fully_masked_row_finite():
  rs = np.random.RandomState(1)
  q, k, v = (rs.randn(2, 3, 1, 2).astype(np.float32) for _ in range(3))
  np.testing.assert_allclose(
      tf_lib.dot_product_attention(q, k, v),
      _np_attention(q, k, v, np.ones((2, 3, 3), bool)), atol=1e-5)
  none = jnp.zeros((2, 1, 3, 3), jnp.bool_)
  assert bool(jnp.all(jnp.isfinite(tf_lib.dot_product_attention(q, k, v,
                                                                 none))))


@pytest.mark.parametrize("tie,positions", [(True, "learned"),
                                           (False, "sinusoidal")])
def test_lm_is_causal(tie, positions):
  vocab, t = 17, 10
  model = get_model("transformer_lm", vocab_size=vocab, d_model=16,
                    num_heads=2, num_layers=2, mlp_dim=32, max_len=16,
                    tie_embeddings=tie, positions=positions)
  tokens = np.random.RandomState(0).randint(1, vocab, (2, t)).astype(np.int32)
  variables = jax.jit(model.init)(jax.random.key(0), tokens)
  assert ("lm_head" in variables["params"]) != tie
  apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  logits = apply(variables, tokens)
  assert logits.shape == (2, t, vocab)
  cut = 4
  perturbed = tokens.copy()
  perturbed[:, cut:] = (perturbed[:, cut:] % (vocab - 1)) + 1
  logits2 = apply(variables, perturbed)
  np.testing.assert_allclose(logits2[:, :cut], logits[:, :cut], atol=1e-5)
  # Later positions do see the change (so the check above can fail).
  assert np.abs(np.asarray(logits2[:, cut:] - logits[:, cut:])).max() > 1e-4


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_classifier_ignores_extra_padding(positions):
  model = get_model("transformer_classifier", vocab_size=20, num_outputs=3,
                    d_model=16, num_heads=4, num_layers=1, mlp_dim=32,
                    max_len=32, positions=positions)
  tokens = np.random.RandomState(1).randint(1, 20, (3, 7)).astype(np.int32)
  tokens[1, 5:] = 0
  tokens[2, 2:] = 0
  variables = jax.jit(model.init)(jax.random.key(0), tokens)
  apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  out = apply(variables, tokens)
  assert out.shape == (3, 3)
  padded = np.concatenate([tokens, np.zeros((3, 6), np.int32)], axis=1)
  np.testing.assert_allclose(apply(variables, padded), out, atol=1e-5)
  changed = tokens.copy()
  changed[2, 1] = (changed[2, 1] % 19) + 1
  diff = np.abs(np.asarray(apply(variables, changed) - out))
  assert diff[2].max() > 1e-5 and diff[:2].max() < 1e-6


def test_train_mode_dropout_and_finite_grads():
  model = get_model("transformer_classifier", vocab_size=20, d_model=16,
                    num_heads=2, num_layers=1, mlp_dim=32, max_len=16,
                    dropout_rate=0.3, attention_dropout_rate=0.3)
  tokens = np.random.RandomState(2).randint(0, 20, (4, 8)).astype(np.int32)
  variables = jax.jit(model.init)(jax.random.key(0), tokens)

  @jax.jit
  def loss_grad(params, key):
    def loss(p):
      out, _ = model.apply({"params": p}, tokens, train=True,
                           rngs={"dropout": key})
      return jnp.mean(out ** 2)
    return jax.value_and_grad(loss)(params)

  a, g = loss_grad(variables["params"], jax.random.key(1))
  b, _ = loss_grad(variables["params"], jax.random.key(2))
  assert float(a) != float(b)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))


def test_too_long_sequence_raises():
  model = get_model("transformer_classifier", vocab_size=10, d_model=8,
                    num_heads=2, num_layers=1, mlp_dim=8, max_len=4)
  with pytest.raises(ValueError, match="max_len"):
    model.init(jax.random.key(0), np.ones((1, 5), np.int32))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_lm_never_sees_later_tokens_with_leading_and_inner_pads(positions):
  """No position's logits depend on a later token, whatever the padding.

  A pad query row used to have no allowed key (the padding mask removes every
  earlier key) and then attended uniformly to all keys, future ones included:
  position 1 of [0, 0, a, ...] saw `a`, the very token its loss predicts.
  """
  vocab, t = 13, 8
  model = get_model("transformer_lm", vocab_size=vocab, d_model=16,
                    num_heads=2, num_layers=2, mlp_dim=32, max_len=16,
                    positions=positions)
  rs = np.random.RandomState(3)
  tokens = rs.randint(1, vocab, (4, t)).astype(np.int32)
  tokens[0, :2] = 0         # leading pads: [0, 0, a, ...]
  tokens[1, 3:5] = 0        # inner pads
  tokens[2, :1] = 0         # a leading and an inner pad
  tokens[2, 4] = 0
  variables = jax.jit(model.init)(jax.random.key(0), tokens)
  apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  base = np.asarray(apply(variables, tokens))
  for cut in range(t - 1):
    # Everything after `cut` changes: real tokens to other real tokens, pads
    # to real tokens.
    changed = tokens.copy()
    changed[:, cut + 1:] = rs.randint(1, vocab, (4, t - cut - 1))
    got = np.asarray(apply(variables, changed))
    np.testing.assert_allclose(got[:, :cut + 1], base[:, :cut + 1], atol=1e-5,
                               err_msg=f"logits at positions <= {cut} moved")


@pytest.mark.parametrize("tie,positions", [(True, "learned"),
                                           (False, "sinusoidal")])
def test_kv_cache_decoding_matches_full_recomputation(tie, positions):
  """`generate` (one token at a time, keys/values cached) picks the tokens,
  and sees the logits, that re-running the whole model on the prefix gives."""
  vocab, length = 11, 12
  model = get_model("transformer_lm", vocab_size=vocab, d_model=16,
                    num_heads=2, num_layers=2, mlp_dim=32, max_len=16,
                    tie_embeddings=tie, positions=positions)
  rs = np.random.RandomState(4)
  prompts = np.zeros((4, length), np.int32)
  lengths = np.array([1, 3, 5, 3], np.int32)
  for b, n in enumerate(lengths):
    prompts[b, :n] = rs.randint(1, vocab, n)
  temps = np.array([0.0, 0.0, 0.0, 0.7], np.float32)  # greedy, and one sampled
  variables = jax.jit(model.init)(jax.random.key(0), prompts)
  params = variables["params"]
  key = jax.random.key(7)
  tokens, logits = jax.jit(lambda p, *a: tf_lib.generate(model.module, p, *a))(
      params, prompts, lengths, temps, key)

  @jax.jit
  def full(x, i):  # the whole model on the prefix; greedy and sampled picks
    step_logits = model.apply(variables, x)[0][:, i]
    allowed = step_logits.at[:, 0].set(-jnp.inf)
    drawn = jax.random.categorical(jax.random.fold_in(key, i), allowed / 0.7)
    return step_logits, jnp.where(temps > 0, drawn, allowed.argmax(-1))

  ref = prompts.copy()
  for i in range(length - 1):
    step_logits, chosen = full(ref, i)
    np.testing.assert_allclose(logits[:, i], step_logits, atol=1e-5, rtol=1e-5)
    ref[:, i + 1] = np.where(i + 1 < lengths, ref[:, i + 1], chosen)
  np.testing.assert_array_equal(np.asarray(tokens), ref)
  np.testing.assert_array_equal(np.asarray(tokens)[:, :1], prompts[:, :1])
  assert (np.asarray(tokens) != 0).all()  # padding is never drawn
