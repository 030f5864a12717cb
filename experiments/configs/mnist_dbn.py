"""DBN on MNIST: greedy CD-1 pretraining of RBMs 784-500-500, then the stack as
the sigmoid hidden layers of an MLP classifier fine-tuned with backprop."""

import ml_collections

from jaxdl.configs import base_config
from jaxdl.train.rbm import dbn_default_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "dbn"
  c.dataset = "mnist"
  c.data_dir = "../shared/data/mnist"
  c.model.name = "dbn_classifier"
  c.model.kwargs = ml_collections.ConfigDict(dict(hidden=(500, 500)))
  c.optimizer.name = "adam"        # fine-tuning
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.batch_size = 64
  c.num_epochs = 20                # 18740 steps: 2 x 2000 pretraining, the rest fine-tuning
  c.log_every = 200
  c.dbn = dbn_default_config()
  c.dbn.pretrain_steps = 2000      # per RBM; momentum SGD 0.05 (dbn.pretrain_optimizer)
  return c
