"""Causal language modelling: next-token cross-entropy on `batch['inputs']`.

Inputs are int32 token ids [B, T] with 0 as padding; position t predicts token
t+1, and padded targets are masked out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxdl import models
from jaxdl.train import optim
from jaxdl.train.engine import apply_gradients
from jaxdl.train.task import Task


class LanguageModelTask(Task):
  """Config: model.name (e.g. 'transformer_lm'), model.kwargs, optimizer."""

  name = "language_model"
  best_metric = "loss"
  best_mode = "min"

  def __init__(self, config, info, total_steps: int = 0):
    kwargs = dict(config.model.get("kwargs", {}))
    if "vocab_size" in info:
      kwargs.setdefault("vocab_size", info["vocab_size"])
    self.model = models.get_model(config.model.name, **kwargs)
    self.tx, self.schedule = optim.make_optimizer(config.optimizer, total_steps)

  def init(self, key, batch):
    x = batch["inputs"]
    variables = self.model.init(key, jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype))
    params, model_state = models.split_variables(variables)
    return params, self.tx.init(params), model_state

  def _token_losses(self, params, model_state, tokens, *, train, key=None):
    rngs = {"dropout": key} if key is not None else None
    logits, model_state = self.model.apply({"params": params, **model_state}, tokens,
                                           train=train, rngs=rngs)
    targets = tokens[:, 1:]
    logits = logits[:, :-1]
    mask = (targets != 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return ce * mask, correct * mask, mask, model_state

  def train_update(self, state, batch, key):
    def loss_fn(params):
      ce, correct, mask, model_state = self._token_losses(
          params, state.model_state, batch["inputs"], train=True, key=key)
      n = jnp.maximum(mask.sum(), 1.0)
      return ce.sum() / n, (model_state, correct.sum() / n)

    (loss, (model_state, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, update_norm = apply_gradients(state, self.tx, grads, model_state=model_state)
    return new_state, {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads),
                       "update_norm": update_norm, "learning_rate": self.schedule(state.step)}

  def eval_metrics(self, state, batch):
    ce, correct, mask, _ = self._token_losses(state.params, state.model_state,
                                              batch["inputs"], train=False)
    # Per-example means, weighted by the example mask (the engine divides by it).
    per_example = jnp.maximum(mask.sum(-1), 1.0)
    w = batch["mask"]
    return {"loss": jnp.sum(w * ce.sum(-1) / per_example),
            "accuracy": jnp.sum(w * correct.sum(-1) / per_example)}


TASKS = {"language_model": LanguageModelTask}
