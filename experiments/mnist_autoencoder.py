"""python -m experiments.mnist_autoencoder --flagfile=experiments/flagfiles/mnist_autoencoder.flags
(--config.dataset=fashion_mnist --config.data_dir=... for Fashion-MNIST)"""

from jaxdl import experiment

if __name__ == "__main__":
  experiment.run(__file__, "mnist_autoencoder")
