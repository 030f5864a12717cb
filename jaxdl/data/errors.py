"""Errors for datasets that are missing, corrupt or malformed."""


class DataError(ValueError):
  """Missing, corrupt or malformed dataset.

  The message is one line naming the files expected, where, and the flag that
  points elsewhere (`--config.data_dir=...`).
  """
