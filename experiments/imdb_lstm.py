"""IMDB sentiment: python -m experiments.imdb_lstm --flagfile=experiments/flagfiles/imdb_lstm.flags"""

from jaxdl import experiment

if __name__ == "__main__":
  experiment.run(__file__, "imdb_lstm")
