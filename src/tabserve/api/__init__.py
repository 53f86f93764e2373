"""The HTTP layer: ``create_app(settings)`` and thin routes that translate HTTP to ``PredictionService``."""

from tabserve.api.app import create_app

__all__ = ["create_app"]
