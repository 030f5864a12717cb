"""IMDB sentiment: python -m experiments.imdb_transformer --flagfile=experiments/flagfiles/imdb_transformer.flags"""

from jaxdl import experiment

if __name__ == "__main__":
  experiment.run(__file__, "imdb_transformer")
