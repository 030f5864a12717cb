"""Deep belief network classifier: stacked RBMs as sigmoid layers + a softmax head.

Hinton, Osindero & Teh (2006); Hinton & Salakhutdinov (2006): pretrain RBMs
greedily (RBM k on the hidden probabilities of RBM k-1), then use their
weights as the hidden layers of an MLP and fine-tune everything with backprop.

Parameter layout (so pretrained RBMs drop in without any renaming):
    params['rbm_0'] = {'W': [D, H0], 'b_v': [D],  'b_h': [H0]}   # an `rbm` model's params
    params['rbm_1'] = {'W': [H0, H1], 'b_v': [H0], 'b_h': [H1]}
    ...
    params['head']  = {'kernel': [H_last, classes], 'bias': [classes]}  # nn.Dense
Hidden layer k computes sigmoid(x @ rbm_k.W + rbm_k.b_h) = p(h | x) of RBM k;
the visible biases b_v are kept (the pretraining phases need them) and get a
zero gradient in fine-tuning. So `params['rbm_k'] = rbm_params` after training
a `jaxdl.models.rbm` model of the matching shape is the whole mapping.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from jaxdl.models.base import Model, from_flax
from jaxdl.models.rbm import RBM


class DBNClassifier(nn.Module):
  hidden: Sequence[int] = (500, 500)
  num_classes: int = 10
  weight_std: float = 0.01

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = RBM(x.shape[-1], width, self.weight_std, name=f"rbm_{i}")(x, train=train)
    return nn.Dense(self.num_classes, name="head")(x)


def make_dbn_classifier(hidden=(500, 500), num_classes=10, weight_std=0.01) -> Model:
  return from_flax(DBNClassifier(tuple(hidden), num_classes, weight_std),
                   name="dbn_classifier")


MODELS = {"dbn_classifier": make_dbn_classifier}

EXAMPLES = {"dbn_classifier": ("mnist_dbn", {"dbn.pretrain_steps": 1})}
