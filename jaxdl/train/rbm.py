"""RBM training (CD-k / persistent CD) and the DBN's greedy schedule + fine-tuning.

RBMTask config fields (defaults in brackets):
  model.kwargs         n_visible [H*W*C of the input], n_hidden [500], weight_std
  rbm.cd_k [1]         Gibbs sweeps per update
  rbm.persistent [False]  PCD: chains kept in `state.model_state['chains']`
                       (so they checkpoint and resume with the run)
  rbm.num_chains [100] number of persistent chains
  rbm.binarize ['none']  training data: 'none' (pixel intensities used as
                       Bernoulli probabilities), 'sample' (a fresh Bernoulli draw
                       each step) or 'threshold' (> 0.5). Evaluation uses the
                       intensities for 'none' and the 0.5 threshold otherwise.
  rbm.fe_decay [0.9]   decay of the running mean of the training free energy
                       (short, so the mean does not lag far behind while F moves)
  rbm.num_filters [100]  hidden units shown in `workdir/filters_{step:06d}.png`
  rbm.optimizer        see jaxdl.train.optim [momentum SGD, lr 0.05, momentum
                       0.9]; `config.optimizer` is not used

DBNTask config fields:
  model.kwargs         hidden [(500, 500)], num_classes [info['num_classes']]
  dbn.pretrain_steps [1000]  steps per RBM (an int, or one per layer)
  dbn.cd_k [1], dbn.binarize ['none']   as for the RBM (first layer input)
  dbn.pretrain_optimizer  [momentum SGD, lr 0.05, momentum 0.9]
  optimizer            fine-tuning optimizer [Adam 1e-3]
The run's total steps should exceed sum(pretrain_steps): the remainder fine-tunes.
`rbm_default_config()` / `dbn_default_config()` return the sections at their
defaults. Inputs must be in [0, 1] (no config.normalize mean/std).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import images, models, parallel
from jaxdl.configs import ConfigError, optimizer_config
from jaxdl.models import rbm as rbm_lib
from jaxdl.train.task import ParamGroup, Task, section



def _model_kwargs(config: Any) -> dict:
  model = config.get("model", None) if hasattr(config, "get") else None
  return dict((model.get("kwargs", None) or {}) if model is not None else {})


def binarize(v: jax.Array, mode: str, key: jax.Array | None) -> jax.Array:
  """[B, ...] intensities in [0, 1] -> [B, V] visible data ('none'|'sample'|'threshold')."""
  v = rbm_lib.flatten(v).astype(jnp.float32)
  if mode == "none":
    return v
  if mode == "sample" and key is not None:
    return rbm_lib.sample_bernoulli(key, v)
  if mode in ("sample", "threshold"):
    return (v > 0.5).astype(jnp.float32)
  raise ValueError(f"unknown binarize mode {mode!r}: 'none', 'sample' or 'threshold'")


def filters_grid(w: np.ndarray, input_shape: Sequence[int], n: int) -> np.ndarray:
  """Columns of W [V, H] (the first n hidden units) as one grid image, each
  min-max scaled."""
  w = np.asarray(w)
  n = min(n, w.shape[1])
  shape = tuple(input_shape) if int(np.prod(input_shape)) == w.shape[0] else (w.shape[0], 1, 1)
  f = w[:, :n].T.reshape((n,) + shape)
  if f.ndim == 3:
    f = f[..., None]
  if f.shape[-1] not in (1, 3):
    f = f[..., :1]
  return images.make_grid(images.normalize_each(f))


def rbm_default_config() -> ml_collections.ConfigDict:
  """The `rbm` section at its defaults (optimizer: momentum SGD, set explicitly)."""
  return ml_collections.ConfigDict(dict(
      cd_k=1, persistent=False, num_chains=100, binarize="none", fe_decay=0.9,
      num_filters=100, optimizer=optimizer_config(name="momentum", learning_rate=0.05)))


def dbn_default_config() -> ml_collections.ConfigDict:
  """The `dbn` section at its defaults (`optimizer` stays the fine-tuning one)."""
  return ml_collections.ConfigDict(dict(
      pretrain_steps=1000, cd_k=1, binarize="none", num_filters=100,
      pretrain_optimizer=optimizer_config(name="momentum", learning_rate=0.05)))


class RBMTask(Task):
  """A Bernoulli RBM trained by CD-k or PCD; see the module docstring."""

  name = "rbm"
  best_metric = "recon_error"
  best_mode = "min"
  guarded_metrics = ("recon_error", "free_energy")
  shown_metrics = ("recon_error", "free_energy")

  def __init__(self, config: Any, info: dict, total_steps: int = 0):
    self.info = info
    self.input_shape = tuple(info.get("input_shape", (28, 28, 1)))
    kwargs = _model_kwargs(config)
    kwargs.setdefault("n_visible", int(np.prod(self.input_shape)))
    self.model = models.get_model("rbm", **kwargs)
    r = section(config, "rbm", rbm_default_config())
    self.k = int(r.cd_k)
    self.persistent = bool(r.persistent)
    self.num_chains = int(r.num_chains)
    self.binarize = r.binarize
    self.fe_decay = float(r.fe_decay)
    self.num_filters = int(r.num_filters)
    self.optimizer = r.optimizer

  def param_groups(self):
    return {"all": ParamGroup(self.optimizer)}

  def init(self, key, batch):
    k_init, k_chain = jax.random.split(key)
    x = batch["inputs"]
    variables = self.model.init(k_init, jnp.zeros((1,) + tuple(x.shape[1:]), jnp.float32))
    params, _ = models.split_variables(variables)
    model_state = {"fe_train": jnp.zeros([], jnp.float32)}
    if self.persistent:
      v = params["b_v"].shape[0]
      model_state["chains"] = jax.random.bernoulli(
          k_chain, 0.5, (self.num_chains, v)).astype(jnp.float32)
    return params, model_state

  def train_update(self, ctx, state, batch, key):
    def grad_fn(params, ms, b, key):
      # CD-k's gradient is the data minus the model statistics, not autodiff.
      kb, kg = jax.random.split(key)
      v = binarize(b["inputs"], self.binarize, kb)
      ms = dict(ms)
      if self.persistent:
        grads, v_neg = rbm_lib.pcd_gradients(params, v, ms["chains"], kg, self.k)
        ms["chains"] = v_neg
      else:
        grads, v_neg = rbm_lib.cd_gradients(params, v, kg, self.k)
      return grads, ms, {
          "recon_error": jnp.mean(rbm_lib.reconstruction_error(params, v)),
          "free_energy": jnp.mean(rbm_lib.free_energy(params, v)),
          "free_energy_model": jnp.mean(rbm_lib.free_energy(params, v_neg))}

    grads, ms, metrics = ctx.accumulate(grad_fn, state.params, state.model_state, batch, key)
    params, opt_state, stats = ctx.apply("all", grads, state.params, state.opt_state)
    # Running mean of the training free energy for the held-out gap; the
    # first step starts it at the current value.
    fe = metrics["free_energy"]
    ms["fe_train"] = jnp.where(state.step == 0, fe,
                               self.fe_decay * ms["fe_train"] + (1 - self.fe_decay) * fe)
    metrics.update(grad_norm=stats["grad_norm"], learning_rate=stats["learning_rate"])
    return state.replace(params=params, opt_state=opt_state, model_state=ms), metrics

  def eval_metrics(self, state, batch):
    """recon_error, free_energy, free_energy_gap (held-out F minus the running
    training F: growing positive values mean overfitting, Hinton 2010 sec. 6),
    pseudo_likelihood (stochastic, fixed key)."""
    v = binarize(batch["inputs"], self.binarize, None)
    mask = batch["mask"]
    params = state.params
    fe = rbm_lib.free_energy(params, v)
    pl = rbm_lib.pseudo_likelihood(params, v, jax.random.PRNGKey(0))
    return {"recon_error": jnp.sum(mask * rbm_lib.reconstruction_error(params, v)),
            "free_energy": jnp.sum(mask * fe),
            "free_energy_gap": jnp.sum(mask * (fe - state.model_state["fe_train"])),
            "pseudo_likelihood": jnp.sum(mask * pl)}

  def on_evaluate(self, state, workdir, step):
    """'filters' (the first hidden units' weights) and, for PCD, 'chains'."""
    out = {"filters": filters_grid(parallel.to_host(state.params["W"]), self.input_shape,
                                   self.num_filters)}
    if self.persistent:
      chains = parallel.to_host(state.model_state["chains"])[:64]
      if int(np.prod(self.input_shape)) == chains.shape[1]:
        out["chains"] = images.make_grid(chains.reshape((-1,) + self.input_shape))
    return out


class DBNTask(Task):
  """Greedy layer-wise RBM pretraining, then supervised fine-tuning, in one step fn.

  `train_update` picks the phase from `state.step` (phase k < L: CD-k on RBM k
  fed the mean-field hidden probabilities of RBMs 0..k-1; phase L: softmax
  cross-entropy through the whole `dbn_classifier`) with `lax.switch`, so the
  whole schedule is one compiled step and resumes from any checkpoint. Each
  phase has its own optimizer state (opt_state['rbm_k'], opt_state['finetune']).
  """

  name = "dbn"
  best_metric = "accuracy"
  best_mode = "max"
  guarded_metrics = ("loss", "layer_recon_error")
  shown_metrics = ("loss", "accuracy", "layer_recon_error")

  def __init__(self, config: Any, info: dict, total_steps: int = 0):
    self.info = info
    self.input_shape = tuple(info.get("input_shape", (28, 28, 1)))
    kwargs = _model_kwargs(config)
    kwargs.setdefault("num_classes", int(info.get("num_classes", 10)))
    self.hidden = tuple(kwargs.get("hidden", (500, 500)))
    kwargs["hidden"] = self.hidden
    self.model = models.get_model("dbn_classifier", **kwargs)
    d = section(config, "dbn", dbn_default_config())
    steps = d.pretrain_steps
    steps = [int(steps)] * len(self.hidden) if np.ndim(steps) == 0 else [int(s) for s in steps]
    if len(steps) != len(self.hidden):
      raise ValueError(f"dbn.pretrain_steps has {len(steps)} entries for "
                       f"{len(self.hidden)} hidden layers")
    self.boundaries = np.cumsum(steps).astype(np.int32)  # phase k ends at boundaries[k]
    self.k = int(d.cd_k)
    self.binarize = d.binarize
    self.num_filters = int(d.num_filters)
    self.pretrain_optimizer = d.pretrain_optimizer
    self.finetune_optimizer = config.optimizer
    self.finetune_steps = max(total_steps - int(self.boundaries[-1]), 0)
    if total_steps and total_steps <= int(self.boundaries[-1]):
      raise ConfigError(
          f"task 'dbn': total steps {total_steps} leave no fine-tuning after "
          f"{int(self.boundaries[-1])} pretraining steps; pass a larger --config.num_steps "
          "or --config.num_epochs, or smaller --config.dbn.pretrain_steps")

  def param_groups(self):
    groups = {f"rbm_{i}": ParamGroup(self.pretrain_optimizer, key=f"rbm_{i}", total_steps=0)
              for i in range(self.num_layers)}
    groups["finetune"] = ParamGroup(self.finetune_optimizer, total_steps=self.finetune_steps)
    return groups

  @property
  def num_layers(self) -> int:
    return len(self.hidden)

  def phase(self, step: jax.Array) -> jax.Array:
    """0..L-1 while pretraining RBM k, L while fine-tuning."""
    return jnp.sum(step >= jnp.asarray(self.boundaries)).astype(jnp.int32)

  def init(self, key, batch):
    x = batch["inputs"]
    variables = self.model.init(key, jnp.zeros((1,) + tuple(x.shape[1:]), jnp.float32))
    return models.split_variables(variables)

  def _classify(self, params, model_state, x):
    logits, _ = self.model.apply({"params": params, **model_state}, x, train=False)
    return logits

  def _propagate(self, params, v, k):
    """Mean-field hidden probabilities below RBM k (the data RBM k is trained on)."""
    for j in range(k):
      v = rbm_lib.p_h_given_v(params[f"rbm_{j}"], v)
    return jax.lax.stop_gradient(v)

  def train_update(self, ctx, state, batch, key):
    model_state = state.model_state

    def batch_metrics(params, v0, label):
      logits = self._classify(params, model_state, v0).astype(jnp.float32)
      return {"loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, label)),
              "accuracy": jnp.mean((jnp.argmax(logits, -1) == label).astype(jnp.float32)),
              "recon_error": jnp.mean(rbm_lib.reconstruction_error(params["rbm_0"], v0))}

    params_compute = ctx.compute(state.params)  # the frozen layers below, cast once

    def pretrain(k):
      name = f"rbm_{k}"

      def grad_fn(p, ms, b, key):
        kb, kg = jax.random.split(key)
        params = {**params_compute, name: p}
        v = self._propagate(params, binarize(b["inputs"], self.binarize, kb), k)
        grads, _ = rbm_lib.cd_gradients(p, v, kg, self.k)
        return grads, ms, {"layer_recon_error": jnp.mean(rbm_lib.reconstruction_error(p, v))}

      def branch(operand):
        params, opt_state = operand
        grads, _, m = ctx.accumulate(grad_fn, params[name], model_state, batch, key)
        p, o, _ = ctx.apply(name, grads, params[name], opt_state[name])
        params = {**params, name: p}
        v0 = binarize(batch["inputs"], self.binarize, jax.random.split(key)[0])
        return params, {**opt_state, name: o}, {**batch_metrics(params, v0, batch["label"]),
                                                **m}
      return branch

    def finetune(operand):
      params, opt_state = operand

      def loss_fn(p, ms, b, key):
        v0 = binarize(b["inputs"], self.binarize, jax.random.split(key)[0])
        logits = self._classify(p, ms, v0).astype(jnp.float32)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            logits, b["label"])), (ms, {})

      grads, _, _ = ctx.grads(loss_fn, params, model_state, batch, key)
      params, o, _ = ctx.apply("finetune", grads, params, opt_state["finetune"])
      v0 = binarize(batch["inputs"], self.binarize, jax.random.split(key)[0])
      m = batch_metrics(params, v0, batch["label"])
      return params, {**opt_state, "finetune": o}, {**m, "layer_recon_error": m["recon_error"]}

    phase = self.phase(state.step)
    branches = [pretrain(k) for k in range(self.num_layers)] + [finetune]
    params, opt_state, metrics = ctx.switch(phase, branches, (state.params, state.opt_state))
    metrics["phase"] = phase.astype(jnp.float32)
    return state.replace(params=params, opt_state=opt_state), metrics

  def eval_metrics(self, state, batch):
    v = binarize(batch["inputs"], self.binarize, None)
    mask = batch["mask"]
    logits = self._classify(state.params, state.model_state, v)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    acc = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    rec = rbm_lib.reconstruction_error(state.params["rbm_0"], v)
    return {"loss": jnp.sum(mask * ce), "accuracy": jnp.sum(mask * acc),
            "recon_error": jnp.sum(mask * rec)}

  def on_evaluate(self, state, workdir, step):
    """'filters': the first RBM's hidden units' weights."""
    return {"filters": filters_grid(parallel.to_host(state.params["rbm_0"]["W"]),
                                    self.input_shape, self.num_filters)}


TASKS = {"rbm": RBMTask, "dbn": DBNTask}
