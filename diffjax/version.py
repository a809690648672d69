"""The package version, in one place (``diffjax.__version__``, run records)."""

__version__ = "0.3.0"
