"""Hot-path observations held in plain Python and handed to prometheus_client in bulk.

A ``Histogram.observe`` in prometheus_client takes a lock, walks the bucket bounds in Python and bumps two
values; a labelled counter's ``inc`` takes a lock too. Per request the service made seven such updates (request
counter and latency, four stage durations, rows, the prediction) for about 11 µs, some 8 % of a one-row
prediction. Here each of them is a list append or an integer add on a bound object, and ``ObservationBuffer.flush``
applies them with one update per bucket (``observe_many``).

When a flush happens: before every exposition (``ServiceMetrics.render``), at shutdown, one second after the
first observation of a quiet period (a timer on the running event loop, so a worker in multiprocess mode
publishes its numbers at most that late to the worker that answers a scrape), and whenever
``max_pending`` observations wait (bounded memory even without an event loop, e.g. in a script).

Thread-affinity: the recording side is meant for one thread (the event loop's); ``flush`` may run on another
thread only while that one is not recording (tests, shutdown). Series updated from other threads (the
prediction log's writer) keep calling prometheus_client directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Below this many values a bulk update walks the values in Python (numpy's call overhead is larger).
_NUMPY_FROM = 32


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, with one increment per bucket instead of one per value.

    prometheus_client has no bulk observe; this updates the child's bucket and sum values (``_buckets``,
    ``_sum``, ``_upper_bounds``: the same objects ``observe`` updates, in single and multiprocess mode alike).
    A client without those attributes takes the per-value path. A test checks both agree.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    if bounds is None or buckets is None:
        for value in values:
            histogram.observe(value)
        return
    if not values:
        return
    if len(values) >= _NUMPY_FROM:
        array = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(np.asarray(bounds), array, side="left"), minlength=len(bounds)).tolist()
        total = float(array.sum())
    else:
        counts = [0] * len(bounds)
        total = 0.0
        for value in values:
            total += value
            for index, bound in enumerate(bounds):
                if value <= bound:
                    counts[index] += 1
                    break
    histogram._sum.inc(total)
    for bucket, n in zip(buckets, counts, strict=False):
        if n:
            bucket.inc(n)


class PendingHistogram:
    """Observations of one histogram child not yet applied: ``pending.values.append(v)`` on the hot path."""

    __slots__ = ("child", "values")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.values: list[float] = []

    def apply(self) -> None:
        values, self.values = self.values, []
        if values:
            observe_many(self.child, values)


class PendingCounter:
    """Increments of one counter child not yet applied: ``pending.n += k`` on the hot path."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0

    def apply(self) -> None:
        n, self.n = self.n, 0
        if n:
            self.child.inc(n)


class ObservationBuffer:
    """Every pending series of one ``ServiceMetrics``; ``recorded()`` after each hot-path update schedules
    the flush that applies them (see the module docstring for when)."""

    def __init__(self, *, interval_s: float = 1.0, max_pending: int = 8192) -> None:
        self.interval_s = interval_s
        self.max_pending = max_pending
        self._series: list[PendingHistogram | PendingCounter] = []
        self._pending = 0
        self._timer: asyncio.TimerHandle | None = None
        self._overdue_at = 0.0

    def histogram(self, child: Any) -> PendingHistogram:
        series = PendingHistogram(child)
        self._series.append(series)
        return series

    def counter(self, child: Any) -> PendingCounter:
        series = PendingCounter(child)
        self._series.append(series)
        return series

    def recorded(self, n: int = 1) -> None:
        """``n`` observations were just added: flush when too many wait, else make sure a flush is due."""
        self._pending += n
        if self._pending >= self.max_pending:
            self.flush()
        elif self._timer is None or time.monotonic() > self._overdue_at:  # overdue: its loop is gone or stuck
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop in this thread: the size bound and render() flush
                return
            if self._timer is not None:
                self._timer.cancel()
                self.flush()
            self._timer = loop.call_later(self.interval_s, self._timed_flush)
            self._overdue_at = time.monotonic() + 2 * self.interval_s + 1.0

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Apply every pending observation to its prometheus_client child."""
        self._pending = 0
        for series in self._series:
            series.apply()

    def close(self) -> None:
        """Flush and drop the timer (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
