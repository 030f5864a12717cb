"""jaxdl: a JAX functional research framework with a compiled core."""

__version__ = "0.1.0"
