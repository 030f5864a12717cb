"""Datasets: sources (random access, numpy) and grain input pipelines.

`load_dataset(config, workdir) -> (train, test, info)` dispatches on
`config.dataset`: 'digits', 'mnist', 'fashion_mnist', 'cifar10', 'imdb',
'tfds' (with `config.tfds_name`), 'image_folder' and 'text_folder' (your own
`data_dir/{train,test}/<class>/*` folders) or 'synthetic'.
"""

from __future__ import annotations

from jaxdl.data.errors import DataError

IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "tfds", "image_folder")
TEXT_DATASETS = ("imdb", "text_folder")


def image_options(config) -> dict:
  """`load_image_dataset`'s keyword arguments from the config's data fields."""
  return {"tfds_name": config.tfds_name or None,
          "image_size": tuple(config.image_size or ()) or None,
          "color_mode": config.color_mode,
          "cache_dir": config.cache_dir}


def load_dataset(config, workdir: str):
  name = config.dataset
  data_dir = config.data_dir
  if name in IMAGE_DATASETS:
    from jaxdl.data import sources  # pylint: disable=g-import-not-at-top
    return sources.load_image_dataset(name, data_dir, **image_options(config))
  if name in TEXT_DATASETS:
    from jaxdl.data import text  # pylint: disable=g-import-not-at-top
    kwargs = dict(num_words=config.num_words, maxlen=config.maxlen,
                  truncating=config.truncating)
    if name == "text_folder":
      return text.load_text_folder(data_dir, workdir, **kwargs)
    return text.load_imdb(data_dir, workdir, source=config.imdb_source,
                          **kwargs)
  raise DataError(f"unknown dataset {name!r}: choose one of "
                  f"{sorted(IMAGE_DATASETS + TEXT_DATASETS)} (--config.dataset=...)")


def unit_images(source):
  """(float32 [N, H, W, C] in [0, 1], int32 labels) of an in-memory image
  source, or None for other sources (text, tfds): the real images a task's
  figures and FID use (`Task.set_reference_data`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  arrays = getattr(source, "arrays", None)
  if arrays is None or np.asarray(arrays[0]).ndim != 4:
    return None
  x, y = arrays
  x = np.asarray(x)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  return x, np.asarray(y, np.int32)


__all__ = ["DataError", "image_options", "load_dataset", "unit_images"]
