"""Supervised classification (and regression) of `batch['inputs']`."""

from __future__ import annotations

import inspect
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from jaxdl import models
from jaxdl.data.errors import DataError
from jaxdl.train import losses
from jaxdl.train.task import Task


class ClassificationTask(Task):
  """Model + loss from the config; the engine owns the optimizer, dtype and
  accumulation.

  Config fields: model.name, model.kwargs, loss ('softmax_cross_entropy',
  'sigmoid_binary_cross_entropy', 'mse', 'l1'), optimizer (see
  `jaxdl.train.optim`).
  """

  name = "classification"
  best_metric = "accuracy"
  best_mode = "max"

  def __init__(self, config: Any, info: dict, total_steps: int = 0):
    del total_steps
    self.config = config
    kwargs = dict(config.model.kwargs)
    self.loss_name = config.loss
    self.loss_fn = losses.get_loss(self.loss_name)
    self.binary = self.loss_name == "sigmoid_binary_cross_entropy"
    n_out = 1 if self.binary else info.get("num_classes", 10)
    ctor_args = inspect.signature(models.registry()[config.model.name]).parameters \
        if config.model.name in models.registry() else {}
    for arg in ("num_outputs", "num_classes"):
      if arg in ctor_args:
        kwargs.setdefault(arg, n_out)
        break
    self.model = models.get_model(config.model.name, **kwargs)
    shape = info.get("input_shape")
    self.input_shape = tuple(int(d) for d in shape) if shape is not None else None
    self.dataset_name = info.get("name", "")
    if not self.classifies:
      self.best_metric, self.best_mode = "loss", "min"
      self.shown_metrics = ("loss",)

  @property
  def classifies(self) -> bool:
    return self.loss_name in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy")

  def init(self, key, batch):
    x = batch["inputs"]
    self._check_input_shape(x)
    example = jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype)
    return models.split_variables(self.model.init(key, example))

  def _check_input_shape(self, x) -> None:
    """Fails before compiling if the batches don't match the dataset's declared shape."""
    want = self.input_shape
    if want is None:
      return
    try:
      chex.assert_shape(x, (None, *want))
    except AssertionError:
      raise DataError(
          f"{self.dataset_name or 'dataset'}: batch inputs have per-example shape "
          f"{tuple(x.shape[1:])} but the dataset declares input_shape {want} (the model "
          f"{self.model.name or 'model'} is built for {want}); check the data files and "
          "--config.dataset") from None

  def _outputs(self, params, model_state, inputs, *, train, key=None):
    out, model_state = self.model.apply({"params": params, **model_state}, inputs,
                                        train=train, rngs=models.make_rngs(self.model, key))
    return out.astype(jnp.float32), model_state

  def _metrics(self, out, batch):
    label = batch["label"]
    m = {"loss": self.loss_fn(out, label)}
    if self.binary:
      m["accuracy"] = ((out.reshape(label.shape) > 0) == (label > 0)).astype(jnp.float32)
    elif self.classifies:
      m["accuracy"] = (jnp.argmax(out, -1) == label).astype(jnp.float32)
    return m

  def loss(self, params, model_state, batch, key):
    out, model_state = self._outputs(params, model_state, batch["inputs"], train=True,
                                     key=key)
    m = {k: jnp.mean(v) for k, v in self._metrics(out, batch).items()}
    return m["loss"], (model_state, m)

  def train_update(self, ctx, state, batch, key):
    new_state, metrics = super().train_update(ctx, state, batch, key)
    return new_state, dict(metrics, param_norm=optax.tree.norm(state.params))

  def eval_metrics(self, state, batch):
    out, _ = self._outputs(state.params, state.model_state, batch["inputs"], train=False)
    m = self._metrics(out, batch)
    return {k: jnp.sum(v * batch["mask"]) for k, v in m.items()}

  def predict(self, params, model_state, inputs):
    """Class probabilities (or raw outputs for regression)."""
    out, _ = self._outputs(params, model_state, inputs, train=False)
    if self.binary:
      p = jax.nn.sigmoid(out.reshape(out.shape[0]))
      return jnp.stack([1 - p, p], -1)
    return jax.nn.softmax(out, -1) if self.classifies else out
