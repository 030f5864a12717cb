"""Frechet distance between feature distributions, and the classifier giving them.

The Frechet distance between Gaussians N(mu1, S1) and N(mu2, S2) is
    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)),
the FID of Heusel et al. (2017) when the features are Inception pool features.
For MNIST-sized data jaxdl uses the penultimate layer of a small MNIST CNN
(`FeatureClassifier`) trained on the real training images, so the figure is
comparable across runs that use the same classifier (cached on disk), not to
published Inception FIDs.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg


def feature_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features [N, D] in float64."""
  f = np.asarray(features, np.float64).reshape(len(features), -1)
  if len(f) < 2:
    raise ValueError("need at least 2 feature vectors for a covariance")
  return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy's sqrtm.

  As in the reference FID code, when S1 S2 is near singular (fewer samples than
  dimensions) an `eps` multiple of the identity is added to both covariances,
  and the tiny imaginary part that sqrtm returns from rounding is dropped.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(f"shape mismatch: {mu1.shape} {mu2.shape} {s1.shape} {s2.shape}")
  diff = mu1 - mu2
  with warnings.catch_warnings():
    # sqrtm warns on singular products; the eps retry below handles them.
    warnings.simplefilter("ignore")
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
      offset = np.eye(s1.shape[0]) * eps
      covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
  covmean = np.real(covmean)
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


class FeatureClassifier(nn.Module):
  """Conv 32/2, Conv 64/2, Dense `features` (the FID features), Dense classes."""

  features: int = 128
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=2)(x))
    x = x.reshape((x.shape[0], -1))
    feats = nn.relu(nn.Dense(self.features)(x))
    return nn.Dense(self.num_classes)(feats), feats


def train_classifier(images: np.ndarray, labels: np.ndarray, key: jax.Array, *,
                     steps: int = 500, batch_size: int = 128, learning_rate: float = 1e-3,
                     features: int = 128, num_classes: int = 10) -> Any:
  """Trains a FeatureClassifier on float [N, H, W, C] images in [0, 1]; returns params.

  A jitted step fed host batches (a `lax.scan` over device-resident data was
  several times slower on XLA:CPU). 500 steps of 128 reach ~0.98 MNIST test
  accuracy.
  """
  module = FeatureClassifier(features, num_classes)
  init_key, data_key = jax.random.split(key)
  params = module.init(init_key, jnp.zeros((1,) + images.shape[1:], jnp.float32))["params"]
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits, _ = module.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  rng = np.random.default_rng(int(jax.random.randint(data_key, (), 0, 2**31 - 1)))
  for _ in range(steps):
    idx = rng.integers(0, len(images), batch_size)
    params, opt_state = step(params, opt_state, images[idx], labels[idx])
  return params


class FIDScorer:
  """Reference statistics of real images and a classifier's features/predictions.

  `score(samples)` -> {'frechet_distance', 'class_share_<c>', 'max_class_share',
  'classes_covered'} for float [N, H, W, C] samples in [0, 1].
  """

  def __init__(self, params: Any, reference_images: np.ndarray, *,
               features: int = 128, num_classes: int = 10, batch_size: int = 500):
    self.module = FeatureClassifier(features, num_classes)
    self.params = params
    self.num_classes = num_classes
    self.batch_size = batch_size
    self._apply = jax.jit(lambda p, x: self.module.apply({"params": p}, x))
    _, feats = self.features(reference_images)
    self.mu_ref, self.sigma_ref = feature_stats(feats)

  def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, classes], features [N, D]) in fixed-size chunks (one compile)."""
    images = np.asarray(images, np.float32)
    n, b = len(images), self.batch_size
    logits, feats = [], []
    for s in range(0, n, b):
      chunk = images[s:s + b]
      pad = b - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      lo, fe = self._apply(self.params, chunk)
      logits.append(np.asarray(lo)[:b - pad])
      feats.append(np.asarray(fe)[:b - pad])
    return np.concatenate(logits), np.concatenate(feats)

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    logits, _ = self.features(images)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))

  def score(self, samples: np.ndarray) -> dict[str, float]:
    logits, feats = self.features(samples)
    mu, sigma = feature_stats(feats)
    out = {"frechet_distance": frechet_distance(mu, sigma, self.mu_ref, self.sigma_ref)}
    counts = np.bincount(np.argmax(logits, -1), minlength=self.num_classes)
    share = counts / max(len(samples), 1)
    for c in range(self.num_classes):
      out[f"class_share_{c}"] = float(share[c])
    out["max_class_share"] = float(share.max())
    # A class counts as covered when it gets at least a fifth of a uniform share.
    out["classes_covered"] = float(np.sum(share >= 0.2 / self.num_classes))
    return out


def load_or_train_classifier(path: str, train_images: np.ndarray,
                             train_labels: np.ndarray, key: jax.Array, *,
                             steps: int = 500, features: int = 128,
                             num_classes: int = 10, write: bool = True) -> Any:
  """Classifier params from `path` (flax msgpack) or trained and saved there.

  A resumed run (or a second task sharing the file) reuses the same weights, so
  its Frechet distances stay comparable with the earlier ones.
  """
  module = FeatureClassifier(features, num_classes)
  template = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0),
                          jnp.zeros((1,) + train_images.shape[1:], jnp.float32))["params"])
  if path and os.path.exists(path):
    with open(path, "rb") as f:
      target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
      return flax.serialization.from_bytes(target, f.read())
  params = train_classifier(train_images, train_labels, key, steps=steps,
                            features=features, num_classes=num_classes)
  if path and write:
    d = os.path.dirname(path)
    if d:
      os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(flax.serialization.to_bytes(jax.device_get(params)))
    os.replace(tmp, path)
  return params
