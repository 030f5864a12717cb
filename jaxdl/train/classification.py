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
from jaxdl.configs import ConfigError
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
      if "dtype" not in ctor_args:
        raise ConfigError(f"dtype={config.dtype!r}: model {config.model.name!r} has no "
                          "compute-dtype option; pass --config.dtype=float32")
      kwargs["dtype"] = config.dtype
    self.accum_steps = int(config.get("grad_accum_steps", 1))
    self.model = models.get_model(config.model.name, **kwargs)
    shape = info.get("input_shape")
    self.input_shape = tuple(int(d) for d in shape) if shape is not None else None
    self.dataset_name = info.get("name", "")
    self.tx, self.schedule = optim.make_optimizer(config.optimizer, total_steps)
    if not self.classifies:
      self.best_metric, self.best_mode = "loss", "min"

  @property
  def classifies(self) -> bool:
    return self.loss_name in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy")

  def init(self, key, batch):
    x = batch["inputs"]
    self._check_input_shape(x)
    example = jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype)
    variables = self.model.init(key, example)
    params, model_state = models.split_variables(variables)
    return params, self.tx.init(params), model_state

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

  def _grads(self, params, model_state, batch, key):
    def loss_fn(params):
      out, new_model_state = self._outputs(params, model_state, batch, train=True, key=key)
      m = {k: jnp.mean(v) for k, v in self._metrics(out, batch).items()}
      return m["loss"], (new_model_state, m)
    (_, (model_state, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, model_state, m

  def train_update(self, state, batch, key):
    k = self.accum_steps
    if k == 1:
      grads, model_state, m = self._grads(state.params, state.model_state, batch, key)
    else:
      # Gradient accumulation: k micro-batches in a lax.scan (one micro-batch's
      # activations live at a time); the mean of their mean gradients is the
      # full batch's. Micro-batch i takes rows i, i+k, ... so each device keeps
      # its own rows. Batch-norm statistics update once per micro-batch.
      micro = jax.tree.map(
          lambda x: x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, xs):
        acc, model_state = carry
        mb, i = xs
        g, model_state, m = self._grads(state.params, model_state, mb,
                                        jax.random.fold_in(key, i))
        return (jax.tree.map(jnp.add, acc, g), model_state), m

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, model_state), ms = jax.lax.scan(body, (zeros, state.model_state),
                                              (micro, jnp.arange(k)))
      grads = jax.tree.map(lambda g: g / k, grads)
      m = jax.tree.map(jnp.mean, ms)
    new_state, update_norm = apply_gradients(state, self.tx, grads, model_state=model_state)
    metrics = dict(m, grad_norm=optax.tree.norm(grads), update_norm=update_norm,
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
