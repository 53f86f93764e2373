"""Adaptive conformal inference (Gibbs & Candès 2021) per model, version, level and input pattern.

The effective miscoverage moves with the observed misses: ``alpha_{t+1} = alpha_t + gamma * (alpha - err_t)``,
so after ``n`` answers with feedback, ``m`` of them misses, ``alpha_eff = alpha + gamma * (n * alpha - m)``:
the state is two counts, which the prediction log keeps in the feedback's own transaction
(``store.coverage``), exact across workers and instances whatever order feedback arrives in. Only rows that
were served with an adaptive level count (``effective_level`` in their logged output).

The effective level is clipped to ``[2 * level - 1, MAX_LEVEL]`` (at most twice the nominal miscoverage, at
least 0.001) and its conformal quantile is interpolated between the manifest's levels, linearly in
``-log(1 - level)`` (exact for exponential tails), extrapolated from the two nearest levels beyond them.
The answer still reports the requested level, plus the ``effective_level`` actually used.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from tabserve.confidence import Confidence
from tabserve.store.coverage import ServedKey

if TYPE_CHECKING:
    from tabserve.registry import ServingModel

MAX_LEVEL = 0.999
CountsSource = Callable[[str], dict[ServedKey, tuple[int, int]]]
Effective = dict[tuple[float, str], float]
"""``(level, pattern) -> effective level`` of one model version."""


def effective_level(level: float, gamma: float, n: int, misses: int) -> float:
    """``1 - alpha_eff`` after ``n`` answers with ``misses`` misses, clipped (see the module docstring)."""
    if n == 0 and misses == 0:
        return level
    alpha = 1.0 - level
    alpha_eff = alpha + gamma * (n * alpha - misses)
    return 1.0 - min(max(alpha_eff, 1.0 - MAX_LEVEL), 2.0 * alpha)


def quantile_at(table: dict[float, float], level: float, *, upper: float | None = None) -> float:
    """The conformal quantile of ``table`` (level -> quantile) at any level (see the module docstring)."""
    if level in table:
        return table[level]
    levels = sorted(table)
    if len(levels) == 1:
        return table[levels[0]]
    x = -math.log(1.0 - level)
    xs = [-math.log(1.0 - lv) for lv in levels]
    i = 1
    while i < len(levels) - 1 and xs[i] < x:
        i += 1
    x0, x1, q0, q1 = xs[i - 1], xs[i], table[levels[i - 1]], table[levels[i]]
    q = q0 + (q1 - q0) * (x - x0) / (x1 - x0)
    q = max(q, 0.0)
    return min(q, upper) if upper is not None else q


class AdaptiveLevels:
    """The effective levels of every served model version, from the store's counts (refreshed by ``refresh``:
    after each feedback this process handles, and periodically for what other workers received)."""

    def __init__(self, gamma: float, counts: CountsSource) -> None:
        if not 0.0 < gamma < 1.0:
            raise ValueError("gamma must be in (0, 1)")
        self.gamma = gamma
        self._counts_source = counts
        self._counts: dict[str, dict[ServedKey, tuple[int, int]]] = {}
        self._cache: dict[tuple[str, str], tuple[Confidence, Confidence, Effective]] = {}
        """(model, version) -> (the manifest's confidence it was built from, the adjusted one, effective levels)."""
        self._lock = threading.Lock()

    def refresh(self, model: str) -> None:
        """Read ``model``'s counts from the store (blocking: a worker thread). Raises ``StoreError``."""
        counts = self._counts_source(model)
        with self._lock:
            if counts != self._counts.get(model):
                self._counts[model] = counts
                for key in [k for k in self._cache if k[0] == model]:
                    del self._cache[key]

    def counts(self, model: str) -> dict[ServedKey, tuple[int, int]]:
        return dict(self._counts.get(model, {}))

    def confidence(self, model: ServingModel) -> tuple[Confidence, Effective]:
        """The confidence tables to serve ``model`` with (the manifest's quantiles at the effective levels)
        and the effective level per (level, pattern): one dict lookup once built."""
        key = (model.name, model.version)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is model.confidence:
            return cached[1], cached[2]
        base = model.confidence
        counts = self._counts.get(model.name, {})
        effective: Effective = {}
        quantiles: dict[str, dict[float, float]] = {}
        upper = 1.0 if base.task == "classification" else None
        for pattern, table in base.quantiles.items():
            adjusted: dict[float, float] = {}
            for level in base.levels:
                n, misses = counts.get((model.version, level, pattern), (0, 0))
                eff = effective_level(level, self.gamma, n, misses)
                effective[level, pattern] = eff
                adjusted[level] = quantile_at(table, eff, upper=upper)
            quantiles[pattern] = adjusted
        served = replace(base, quantiles=quantiles)
        with self._lock:
            self._cache[key] = (base, served, effective)
        return served, effective
