"""Downstream tasks built on a :class:`~deepspectral.spectral.Decomposition`."""
