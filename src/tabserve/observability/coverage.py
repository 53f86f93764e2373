"""Realised coverage of served intervals / prediction sets, from feedback: ``CoverageMonitor``.

The window is read from the prediction log (the store every worker and instance shares), never kept in a
process: per model, version, level and input pattern (the manifest's conformal pattern key of the row), the
newest ``window`` rows with feedback received within ``max_age_s``. For each cell: samples, covered, realised
coverage, its Wilson score interval at ``z``, and a status against the band ``level ± tolerance``:

- ``too_few``: fewer than ``min_samples`` samples;
- ``under`` / ``over``: the whole Wilson interval lies below / above the band;
- ``ok`` otherwise.

Reports are cached for ``refresh_s`` (every worker computes the same figures from the shared store); each
computation also sets the Prometheus gauges (``CoverageGauges``), which the alert rule in
``deploy/monitoring/alerts.yaml`` reads.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from tabserve.adaptive import AdaptiveLevels, effective_level
from tabserve.store.coverage import ServedKey, WindowRow, actual_of, served

WindowSource = Callable[[str, float, int], list[WindowRow]]
"""``(model, since, limit) -> rows``: ``PredictionStore.labelled_window``."""


def wilson(covered: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (``(0, 1)`` without samples)."""
    if n <= 0:
        return 0.0, 1.0
    p = covered / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class CoverageRule:
    """When a cell's coverage counts as out of its band (see the module docstring)."""

    tolerance: float = 0.03
    z: float = 2.576
    min_samples: int = 200

    def status(self, level: float, covered: int, n: int) -> tuple[str, float, float]:
        lower, upper = wilson(covered, n, self.z)
        if n < self.min_samples:
            return "too_few", lower, upper
        if upper < level - self.tolerance:
            return "under", lower, upper
        if lower > level + self.tolerance:
            return "over", lower, upper
        return "ok", lower, upper


def count_window(rows: list[WindowRow], window: int) -> dict[ServedKey, list[int]]:
    """``(version, level, pattern) -> [samples, covered, samples served adaptively]`` over the newest
    ``window`` rows of each cell (``rows`` newest first); rows without a served interval/set are skipped."""
    cells: dict[ServedKey, list[int]] = {}
    for version, output, value, label, _ in rows:
        answer = served(output)
        actual = actual_of(value, label)
        if answer is None or actual is None:
            continue
        cell = cells.setdefault((version, answer.level, answer.pattern), [0, 0, 0])
        if cell[0] >= window:
            continue
        cell[0] += 1
        cell[1] += 1 if answer.covers(actual) else 0
        cell[2] += 1 if answer.effective_level is not None else 0
    return cells


class CoverageGauges:
    """The coverage series, set at each computation (``livemostrecent``: every worker reports the same
    figures from the shared store; the newest wins)."""

    LABELS = ("model", "version", "level", "pattern")

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, self.LABELS, registry=registry, multiprocess_mode="livemostrecent")

        self.ratio = gauge("tabserve_coverage_ratio", "Realised coverage of served intervals/sets in the window.")
        self.samples = gauge("tabserve_coverage_samples", "Served rows with feedback in the coverage window.")
        self.covered = gauge("tabserve_coverage_covered", "Of those, rows whose true value was inside.")
        self.lower = gauge("tabserve_coverage_wilson_lower", "Lower Wilson bound of the window's coverage.")
        self.upper = gauge("tabserve_coverage_wilson_upper", "Upper Wilson bound of the window's coverage.")
        self.band_lower = gauge("tabserve_coverage_band_lower", "Lowest acceptable coverage (level - tolerance).")
        self.band_upper = gauge("tabserve_coverage_band_upper", "Highest acceptable coverage (level + tolerance).")
        self.effective = gauge("tabserve_coverage_effective_level", "Level served (adaptive conformal).")
        self._seen: set[tuple[str, ...]] = set()

    def set(self, model: str, cells: list[dict[str, Any]]) -> None:
        current: set[tuple[str, ...]] = set()
        for cell in cells:
            labels: tuple[str, ...] = (model, cell["version"], f"{cell['level']:g}", cell["pattern"])
            current.add(labels)
            self.samples.labels(*labels).set(cell["samples"])
            self.covered.labels(*labels).set(cell["covered"])
            self.ratio.labels(*labels).set(cell["coverage"] if cell["coverage"] is not None else math.nan)
            self.lower.labels(*labels).set(cell["wilson"][0])
            self.upper.labels(*labels).set(cell["wilson"][1])
            self.band_lower.labels(*labels).set(cell["band"][0])
            self.band_upper.labels(*labels).set(cell["band"][1])
            self.effective.labels(*labels).set(cell["effective_level"])
        for labels in {s for s in self._seen - current if s[0] == model}:  # aged out of the window: no samples
            self.samples.labels(*labels).set(0)
            self.covered.labels(*labels).set(0)
        self._seen |= current


STALE_AFTER_REFRESHES = 40
"""Without new feedback a report is computed again only this many refresh intervals later (10 min at 15 s):
the window then changes only by answers ageing out of ``max_age_s``."""


class CoverageMonitor:
    """Coverage reports per model from the shared prediction log (see the module docstring)."""

    def __init__(
        self,
        source: WindowSource,
        *,
        window: int = 2000,
        max_age_s: float = 7 * 86400.0,
        max_rows: int = 50_000,
        refresh_s: float = 15.0,
        rule: CoverageRule | None = None,
        gauges: CoverageGauges | None = None,
        adaptive: AdaptiveLevels | None = None,
        clock: Callable[[], float] = time.time,
        latest_feedback: Callable[[], float | None] | None = None,
    ) -> None:
        self.source = source
        self.window = window
        self.max_age_s = max_age_s
        self.max_rows = max_rows
        self.refresh_s = refresh_s
        self.rule = rule or CoverageRule()
        self.gauges = gauges
        self.adaptive = adaptive
        self.clock = clock
        self.latest_feedback = latest_feedback
        """``PredictionStore.latest_feedback_time``: when it has not moved, a cached report younger than
        ``STALE_AFTER_REFRESHES`` refreshes is still right (nothing new to count) and is kept."""
        self._cache: dict[str, tuple[float, dict[str, Any], float | None]] = {}
        self._lock = threading.Lock()

    def report(self, model: str, pattern_names: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The coverage report of ``model`` (blocking: reads the store; call it from a worker thread).
        Raises ``StoreError`` when the store cannot be read."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(model)
        if cached is not None and now - cached[0] < self.refresh_s:
            return cached[1]
        mark = self.latest_feedback() if self.latest_feedback is not None else None
        if (
            cached is not None
            and mark is not None
            and mark == cached[2]
            and now - cached[0] < max(self.refresh_s, 1.0) * STALE_AFTER_REFRESHES
        ):
            if self.adaptive is not None:  # a small table: kept exact even if instances' clocks disagree
                self.adaptive.refresh(model)
            return cached[1]
        report = self.compute(model, pattern_names or {})
        with self._lock:
            self._cache[model] = (now, report, mark)
        return report

    def compute(self, model: str, pattern_names: Mapping[str, str]) -> dict[str, Any]:
        at = self.clock()
        since = at - self.max_age_s
        rows = self.source(model, since, self.max_rows)
        counts = count_window(rows, self.window)
        adaptive_counts: dict[ServedKey, tuple[int, int]] = {}
        if self.adaptive is not None:
            self.adaptive.refresh(model)
            adaptive_counts = self.adaptive.counts(model)
        cells = []
        rule = self.rule
        for (version, level, pattern), (n, covered, adaptive_n) in sorted(counts.items()):
            status, lower, upper = rule.status(level, covered, n)
            total_n, misses = adaptive_counts.get((version, level, pattern), (0, 0))
            effective = (
                effective_level(level, self.adaptive.gamma, total_n, misses) if self.adaptive is not None else level
            )
            cells.append(
                {
                    "version": version,
                    "level": level,
                    "pattern": pattern,
                    "pattern_name": pattern_names.get(pattern, ""),
                    "samples": n,
                    "covered": covered,
                    "coverage": round(covered / n, 6) if n else None,
                    "wilson": [round(lower, 6), round(upper, 6)],
                    "band": [round(level - rule.tolerance, 6), round(level + rule.tolerance, 6)],
                    "status": status,
                    "adaptive_samples": adaptive_n,
                    "effective_level": round(effective, 6),
                }
            )
        report = {
            "model": model,
            "computed_at": at,
            "window": {
                "rows_per_cell": self.window,
                "max_age_s": self.max_age_s,
                "since": since,
                "rows_read": len(rows),
                "truncated": len(rows) >= self.max_rows,
            },
            "rule": {
                "tolerance": rule.tolerance,
                "z": rule.z,
                "min_samples": rule.min_samples,
                "adaptive": self.adaptive is not None,
                "gamma": self.adaptive.gamma if self.adaptive is not None else None,
            },
            "alerting": any(c["status"] in ("under", "over") for c in cells),
            "cells": cells,
        }
        if self.gauges is not None:
            self.gauges.set(model, cells)
        return report
