"""Each optimizer's defaults are its own (torch.optim's), whatever the base
config's other fields hold; a hyperparameter an optimizer lacks is an error."""

import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
from ml_collections import config_flags

from jaxdl.configs import ConfigError, base_config
from jaxdl.train import optim

W = np.array([1.0, -2.0, 0.5], np.float32)
GRADS = [np.array([0.3, -0.1, 2.0], np.float32), np.array([-0.2, 0.4, 1.0], np.float32)]
LR = 0.1


def _steps(name, **fields):
  """The params after one and two updates with GRADS, from the base config."""
  c = base_config().optimizer
  c.name, c.learning_rate = name, LR
  for k, v in fields.items():
    c[k] = v
  tx, _ = optim.make_optimizer(c, 100)
  w, state, out = jnp.asarray(W), tx.init(jnp.asarray(W)), []
  for g in GRADS:
    u, state = tx.update(jnp.asarray(g), state, w)
    w = optax.apply_updates(w, u)
    out.append(np.asarray(w))
  return out


def _torch_reference(name):
  """torch.optim's update rules at torch's defaults, in float64 NumPy."""
  w, out = W.astype(np.float64), []
  m = v = buf = np.zeros(3)
  for t, g in enumerate(GRADS, 1):
    g = g.astype(np.float64)
    if name == "sgd":
      w = w - LR * g
    elif name in ("momentum", "nesterov"):
      buf = g if t == 1 else 0.9 * buf + g
      w = w - LR * (g + 0.9 * buf if name == "nesterov" else buf)
    elif name in ("adam", "adamw"):
      if name == "adamw":
        w = w * (1 - LR * 1e-2)
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
      w = w - LR * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    elif name == "adagrad":
      v = v + g * g
      w = w - LR * g / (np.sqrt(v) + 1e-10)
    elif name == "rmsprop":  # alpha 0.99, no momentum
      v = 0.99 * v + 0.01 * g * g
      w = w - LR * g / (np.sqrt(v) + 1e-8)
    out.append(w)
  return out


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_defaults_follow_torch_optim(name):
  for got, want in zip(_steps(name), _torch_reference(name)):
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=name)


def test_rmsprop_has_no_momentum_and_adamw_decays_by_default():
  # The base config once set momentum=0.9 for every optimizer (RMSprop ran
  # with it) and weight_decay=0.0 (AdamW never decayed).
  assert base_config().optimizer.momentum is None
  assert base_config().optimizer.weight_decay is None
  with_momentum = _steps("rmsprop", momentum=0.9)[1]
  assert not np.allclose(with_momentum, _steps("rmsprop")[1])
  no_decay = _steps("adamw", weight_decay=0.0)[0]
  np.testing.assert_allclose(_steps("adamw")[0] - no_decay, -LR * 1e-2 * W, rtol=1e-4)


def test_a_hyperparameter_the_optimizer_lacks_is_an_error():
  c = base_config().optimizer
  c.momentum = 0.5  # Adam has no momentum
  with pytest.raises(ConfigError, match=r"optimizer.momentum=0.5 does not apply to adam"):
    optim.make_optimizer(c)
  with pytest.raises(ConfigError, match=r"optimizer.betas: no such field"):
    optim.make_optimizer({"name": "adam", "betas": (0.9, 0.99)})
  c = base_config().optimizer
  c.name = "lion"
  with pytest.raises(ConfigError, match=r"unknown optimizer 'lion'"):
    optim.make_optimizer(c)


def test_optimizer_fields_are_set_from_flags(monkeypatch):
  argv = ["prog", "--config.optimizer.name=rmsprop", "--config.optimizer.momentum=0.5",
          "--config.optimizer.decay=0.9"]
  monkeypatch.setattr(sys, "argv", argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", "experiments/configs/mnist_mlp.py",
                                  flag_values=fv, lock_config=True)
  fv(argv)
  full = optim.complete(fv.config.optimizer)
  assert (full.name, full.momentum, full.decay, full.eps) == ("rmsprop", 0.5, 0.9, 1e-8)


def test_a_run_saved_before_per_optimizer_defaults_still_loads(tmp_path):
  # config.json of an older jaxdl: momentum=0.9 for Adam, no b1/eps/... fields,
  # no text fields. Its tools (evaluate, predict) must still build the run.
  import json
  from jaxdl import runs
  old = base_config().to_dict()
  for k in ("b1", "b2", "eps", "decay", "initial_accumulator_value"):
    del old["optimizer"][k]
  old["optimizer"].update(momentum=0.9, weight_decay=0.0)
  for k in ("num_words", "maxlen", "truncating", "imdb_source"):
    del old[k]
  (tmp_path / "config.json").write_text(json.dumps(old))
  c = runs.load_config(str(tmp_path))
  assert c.optimizer.momentum is None and c.optimizer.b1 is None and c.maxlen == 100
  assert c.batches_per_transfer == "auto"
  optim.make_optimizer(c.optimizer)  # Adam, its own defaults
