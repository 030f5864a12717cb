"""Datasets: sources (random access, numpy) and grain input pipelines.

`load_dataset(config, workdir) -> (train, test, info)` dispatches on
`config.dataset`: 'digits', 'mnist', 'fashion_mnist', 'cifar10', 'imdb',
'tfds' (with `config.tfds_name`) or 'synthetic'.
"""

from __future__ import annotations

from jaxdl.data.errors import DataError

IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "tfds")
TEXT_DATASETS = ("imdb",)


def load_dataset(config, workdir: str):
  name = config.dataset
  data_dir = config.get("data_dir", "")
  if name in IMAGE_DATASETS:
    from jaxdl.data import sources  # pylint: disable=g-import-not-at-top
    return sources.load_image_dataset(name, data_dir, tfds_name=config.get("tfds_name") or None)
  if name in TEXT_DATASETS:
    from jaxdl.data import text  # pylint: disable=g-import-not-at-top
    return text.load_imdb(data_dir, workdir, num_words=config.get("num_words", 10000),
                          maxlen=config.get("maxlen", 100),
                          source=config.get("imdb_source", "archive"))
  raise DataError(f"unknown dataset {name!r}: choose one of "
                  f"{sorted(IMAGE_DATASETS + TEXT_DATASETS)} (--config.dataset=...)")


__all__ = ["DataError", "load_dataset"]
