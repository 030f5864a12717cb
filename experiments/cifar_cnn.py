"""CIFAR-10 CNN: python -m experiments.cifar_cnn --flagfile=experiments/flagfiles/cifar_cnn.flags"""

from jaxdl import experiment

if __name__ == "__main__":
  experiment.run(__file__, "cifar_cnn")
