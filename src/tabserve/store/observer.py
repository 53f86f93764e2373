"""The prediction log's metrics hooks: ``LogObserver`` (what the service maps onto Prometheus) and
``CountingObserver`` (totals for tests, benchmarks and ``PredictionLog.stats``)."""

from __future__ import annotations

from typing import Protocol


class LogObserver(Protocol):
    """Metrics hooks (the service maps them onto Prometheus). Called from the writer thread, except
    ``spilled``/``spill_failed`` which a full queue makes ``submit`` call directly. Must not raise."""

    def queue_depth(self, n: int) -> None: ...
    def written(self, n: int) -> None: ...
    def spilled(self, n: int) -> None: ...
    def replayed(self, n: int) -> None: ...
    def spill_failed(self, n: int) -> None: ...


class CountingObserver:
    """A ``LogObserver`` that keeps totals (tests, benchmarks, ``PredictionLog.stats``)."""

    def __init__(self) -> None:
        self.depth = 0
        self.total_written = 0
        self.total_spilled = 0
        self.total_replayed = 0
        self.total_spill_failed = 0

    def queue_depth(self, n: int) -> None:
        self.depth = n

    def written(self, n: int) -> None:
        self.total_written += n

    def spilled(self, n: int) -> None:
        self.total_spilled += n

    def replayed(self, n: int) -> None:
        self.total_replayed += n

    def spill_failed(self, n: int) -> None:
        self.total_spill_failed += n
