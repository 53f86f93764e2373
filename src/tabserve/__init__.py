"""tabserve: a fast, safe inference service for tabular ML models."""

__all__ = ["__version__"]
__version__ = "0.1.0"
