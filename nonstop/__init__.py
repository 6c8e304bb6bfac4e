"""nonstop: the registry, configuration and CLI shared by training and serving."""

__version__ = "0.1.0"
