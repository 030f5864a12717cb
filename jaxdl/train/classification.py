"""Supervised classification (and regression) of `batch['inputs']`."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxdl import models
from jaxdl.train import losses, optim
from jaxdl.train.engine import apply_gradients
from jaxdl.train.task import Task


class ClassificationTask(Task):
  """Model + loss + optax optimizer from the config.

  Config fields: model.name, model.kwargs, loss ('softmax_cross_entropy',
  'sigmoid_binary_cross_entropy', 'mse', 'l1'), optimizer (see
  `jaxdl.train.optim`), dtype ('float32' or 'bfloat16': compute dtype; params
  and optimizer state stay float32).
  """

  name = "classification"
  best_metric = "accuracy"
  best_mode = "max"

  def __init__(self, config: Any, info: dict, total_steps: int = 0):
    kwargs = dict(config.model.get("kwargs", {}))
    self.loss_name = config.get("loss", "softmax_cross_entropy")
    self.loss_fn = losses.get_loss(self.loss_name)
    self.binary = self.loss_name == "sigmoid_binary_cross_entropy"
    n_out = 1 if self.binary else info.get("num_classes", 10)
    ctor_args = inspect.signature(models.registry()[config.model.name]).parameters \
        if config.model.name in models.registry() else {}
    for arg in ("num_outputs", "num_classes"):
      if arg in ctor_args:
        kwargs.setdefault(arg, n_out)
        break
    if config.get("dtype", "float32") != "float32":
      kwargs["dtype"] = config.dtype
    self.model = models.get_model(config.model.name, **kwargs)
    self.tx, self.schedule = optim.make_optimizer(config.optimizer, total_steps)
    if not self.classifies:
      self.best_metric, self.best_mode = "loss", "min"

  @property
  def classifies(self) -> bool:
    return self.loss_name in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy")

  def init(self, key, batch):
    x = batch["inputs"]
    example = jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype)
    variables = self.model.init(key, example)
    params, model_state = models.split_variables(variables)
    return params, self.tx.init(params), model_state

  def _outputs(self, params, model_state, batch, *, train, key=None):
    variables = {"params": params, **model_state}
    rngs = None
    if key is not None:
      k1, k2 = jax.random.split(key)
      rngs = {"dropout": k1, "latent": k2}
    return self.model.apply(variables, batch["inputs"], train=train, rngs=rngs)

  def _metrics(self, out, batch):
    label = batch["label"]
    per_example = self.loss_fn(out, label)
    m = {"loss": per_example}
    if self.binary:
      m["accuracy"] = ((out.reshape(label.shape) > 0) == (label > 0)).astype(jnp.float32)
    elif self.classifies:
      m["accuracy"] = (jnp.argmax(out, -1) == label).astype(jnp.float32)
    return m

  def train_update(self, state, batch, key):
    def loss_fn(params):
      out, model_state = self._outputs(params, state.model_state, batch, train=True, key=key)
      m = self._metrics(out, batch)
      return jnp.mean(m["loss"]), (model_state, m)

    (loss, (model_state, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, update_norm = apply_gradients(state, self.tx, grads, model_state=model_state)
    metrics = {k: jnp.mean(v) for k, v in m.items()}
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), update_norm=update_norm,
                   param_norm=optax.tree.norm(state.params),
                   learning_rate=self.schedule(state.step))
    return new_state, metrics

  def eval_metrics(self, state, batch):
    out, _ = self._outputs(state.params, state.model_state, batch, train=False)
    m = self._metrics(out, batch)
    return {k: jnp.sum(v * batch["mask"]) for k, v in m.items()}

  def predict(self, params, model_state, inputs):
    """Class probabilities (or raw outputs for regression)."""
    out, _ = self.model.apply({"params": params, **model_state}, inputs, train=False)
    if self.binary:
      p = jax.nn.sigmoid(out.reshape(out.shape[0]))
      return jnp.stack([1 - p, p], -1)
    return jax.nn.softmax(out, -1) if self.classifies else out
