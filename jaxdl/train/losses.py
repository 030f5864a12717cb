"""Per-example losses; callers average (or sum with a mask)."""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jaxdl.configs import ConfigError


def softmax_cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sigmoid_binary_cross_entropy(logits, labels):
  logits = logits.reshape(labels.shape[0], -1)
  labels = labels.reshape(labels.shape[0], -1).astype(logits.dtype)
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1)


def mse(predictions, targets):
  d = (predictions - targets.astype(predictions.dtype)).reshape(predictions.shape[0], -1)
  return jnp.mean(d * d, axis=-1)


def l1(predictions, targets):
  d = (predictions - targets.astype(predictions.dtype)).reshape(predictions.shape[0], -1)
  return jnp.mean(jnp.abs(d), axis=-1)


LOSSES = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
    "mse": mse,
    "l1": l1,
}


def get_loss(name: str):
  if name not in LOSSES:
    raise ConfigError(f"unknown loss {name!r}: choose one of {sorted(LOSSES)} "
                     "(--config.loss=...)")
  return LOSSES[name]
