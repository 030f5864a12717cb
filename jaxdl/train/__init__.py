"""The compiled training engine."""
