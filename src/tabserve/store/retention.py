"""Retention: delete prediction-log rows (and their feedback) older than a number of days."""

from __future__ import annotations

import time

from tabserve.store.base import PredictionStore


def prune(store: PredictionStore, days: float, *, now: float | None = None) -> int:
    """Delete rows logged more than ``days`` days before ``now`` (default: the current time); returns how
    many. ``days`` must be positive (0 would delete everything: not a retention policy)."""
    if not days > 0:
        raise ValueError(f"retention days must be > 0, got {days}")
    reference = time.time() if now is None else now
    return store.prune(reference - days * 86_400.0)
