"""MNIST MLP: python -m experiments.mnist_mlp --flagfile=experiments/flagfiles/mnist_mlp.flags"""

from jaxdl import experiment

if __name__ == "__main__":
  experiment.run(__file__, "mnist_mlp")
