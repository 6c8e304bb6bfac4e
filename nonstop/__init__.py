"""nonstop: the core shared by training and serving: the registry, manifests, loading, formats, signing, the ledger, configuration and errors."""

__version__ = "0.1.0"
