"""IMDB language model: python -m experiments.imdb_lm --flagfile=experiments/flagfiles/imdb_lm.flags"""

from jaxdl import experiment

if __name__ == "__main__":
  experiment.run(__file__, "imdb_lm")
