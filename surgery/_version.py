"""The package version (one place: ``surgery.__version__`` and ``surgery --version``)."""

__version__ = "0.1.0"
