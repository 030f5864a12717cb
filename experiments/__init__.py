"""Experiments: thin absl mains; all logic lives in `jaxdl/`."""
