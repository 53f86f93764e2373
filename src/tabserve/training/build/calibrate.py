"""Split-conformal calibration per missing-input pattern, the temperature of a classifier, and test metrics.

Every number here comes from the exported graph through the serving encoder (``Predict``): calibration rows
masked to each pattern give that pattern's score quantiles; a level is published only if every pattern has
enough calibration scores for a finite quantile. The test split, masked the same way, gives coverage and error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.errors import BuildError
from tabserve.manifest import level_key
from tabserve.training.build.table import Rows, masked, pattern_keys
from tabserve.training.card import expected_calibration_error
from tabserve.training.conformal import (
    LEVELS,
    conformal_quantile,
    coverage,
    lac_scores,
    lac_sets,
    regression_interval,
    regression_scores,
)

Predict = Callable[[Rows], npt.NDArray[np.float64]]
ECE_BINS = 15


def _scores(predict: Predict, rows: Rows, task: str, score: str) -> npt.NDArray[np.float64]:
    out = predict(rows)
    if task == "classification":
        return lac_scores(out, rows.labels)
    return regression_scores(rows.labels, out, score)


def conformal_tables(
    predict: Predict, calibration: Rows, pattern_inputs: Sequence[str], task: str, score: str
) -> tuple[list[float], dict[str, dict[str, float]], dict[str, int]]:
    """(published levels, pattern -> level -> quantile, pattern -> calibration rows)."""
    by_pattern: dict[str, npt.NDArray[np.float64]] = {}
    for key in pattern_keys(len(pattern_inputs)):
        by_pattern[key] = _scores(predict, masked(calibration, pattern_inputs, key), task, score)
    levels = [
        level
        for level in LEVELS
        if all(math.isfinite(conformal_quantile(scores, level)) for scores in by_pattern.values())
    ]
    quantiles = {
        key: {level_key(level): conformal_quantile(scores, level) for level in levels}
        for key, scores in by_pattern.items()
    }
    return levels, quantiles, {key: int(scores.size) for key, scores in by_pattern.items()}


def floored(predict: Predict, floor: float) -> Predict:
    """A regression's predictions never below ``floor`` (the served ``Confidence.point``)."""

    def run(rows: Rows) -> npt.NDArray[Any]:
        return np.maximum(predict(rows), floor)

    return run


def target_floor(spec_floor: float | bool | None, labels: npt.NDArray[Any]) -> float | None:
    """The spec's floor, or 0 when no target value in the data is negative (prices, counts, emissions)."""
    if spec_floor is False:
        return None
    if spec_floor is not None and spec_floor is not True:
        return float(spec_floor)
    values = np.asarray(labels, dtype=np.float64)
    return 0.0 if values.size and float(np.nanmin(values)) >= 0.0 else None


def log_loss(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    proba = np.asarray(probabilities, dtype=np.float64)
    idx = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(proba[np.arange(idx.size), idx], 1e-15, 1.0))))


MIN_TEMPERATURE_ROWS = 50
TEMPERATURES = (0.05, 20.0)
GOLDEN_STEPS = 80


def fit_temperature(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The temperature T in [0.05, 20] minimising log loss of softmax(log p / T) on these rows (golden-section search
    on log T, to 4 digits); 1.0 when it does not help, or when there are fewer than ``MIN_TEMPERATURE_ROWS`` rows or
    no error among them (nothing to learn from: a separable handful would only sharpen the probabilities)."""
    proba = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels, dtype=np.int64)
    if truth.size < MIN_TEMPERATURE_ROWS or bool(np.all(proba.argmax(axis=1) == truth)):
        return 1.0
    logp = np.log(np.clip(proba, 1e-300, 1.0))

    def loss(t: float) -> float:
        z = logp / t
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return log_loss(p, truth)

    best = round(math.exp(_golden_minimum(lambda u: loss(math.exp(u)), *map(math.log, TEMPERATURES))), 4)
    return best if loss(best) < loss(1.0) - 1e-9 else 1.0


def _golden_minimum(func: Callable[[float], float], low: float, high: float) -> float:
    """Golden-section search for the minimum of a unimodal ``func`` on [low, high] (deterministic)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = func(c), func(d)
    for _ in range(GOLDEN_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = func(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = func(d)
    return (a + b) / 2.0


def _regression_metrics(pred: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> dict[str, float]:
    err = y - pred
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": float(1.0 - np.sum(err**2) / total) if total > 0 else math.nan,
    }


def test_metrics(
    predict: Predict,
    test: Rows,
    pattern_inputs: Sequence[str],
    task: str,
    score: str,
    levels: Sequence[float],
    quantiles: dict[str, dict[str, float]],
    pattern_names: dict[str, str],
    floor: float | None,
) -> dict[str, Any]:
    """Per pattern: error (or accuracy, log loss, ECE) and coverage with width (or set size) per level; for a
    classifier both the sets as served (never empty) and the raw LAC sets with their share of empty ones."""
    out: dict[str, Any] = {}
    for key in pattern_keys(len(pattern_inputs)):
        rows = masked(test, pattern_inputs, key)
        entry: dict[str, Any] = {"name": pattern_names.get(key, key), "rows": rows.rows}
        if rows.rows == 0:
            out[key or "all"] = entry
            continue
        raw = predict(rows)
        cover: dict[str, float] = {}
        size: dict[str, float] = {}
        lac: dict[str, float] = {}
        empty: dict[str, float] = {}
        for level in levels:
            q = quantiles[key][level_key(level)]
            if task == "classification":
                sets = lac_sets(raw, q)
                lac[level_key(level)] = coverage(sets[np.arange(rows.rows), rows.labels])
                empty[level_key(level)] = float(np.mean(~sets.any(axis=1)))
                top = raw.argmax(axis=1)
                sets[np.arange(rows.rows), top] = True  # the server never answers an empty set
                cover[level_key(level)] = coverage(sets[np.arange(rows.rows), rows.labels])
                size[level_key(level)] = float(sets.sum(axis=1).mean())
            else:
                low, high = regression_interval(raw, q, score)
                if floor is not None:  # as served (``Confidence.regression_batch``)
                    low, high = np.maximum(low, floor), np.maximum(high, floor)
                cover[level_key(level)] = coverage((rows.labels >= low) & (rows.labels <= high))
                size[level_key(level)] = float(np.mean(high - low))
        if task == "classification":
            entry["accuracy"] = float(np.mean(raw.argmax(axis=1) == rows.labels))
            entry["log_loss"] = log_loss(raw, rows.labels)
            entry["ece"] = expected_calibration_error(raw, rows.labels, ECE_BINS)
            entry["set_coverage"] = cover
            entry["mean_set_size"] = size
            entry["lac_coverage"] = lac  # the raw LAC sets the guarantee is about (empty when no class is sure)
            entry["lac_empty_share"] = empty
        else:
            entry.update(_regression_metrics(raw, rows.labels))
            entry["coverage"] = cover
            entry["mean_width"] = size
        out[key or "all"] = entry
    return out


SHIFT_WARN_DISTANCE = 0.1
"""Total variation distance between the calibration and test class shares above which a temporal build warns."""


def class_shift(calibration: Rows, test: Rows, classes: Sequence[str]) -> str | None:
    """A warning when the classes' shares differ between the calibration rows and the (newer) test rows: the
    conformal guarantee assumes both come from the same distribution, so test coverage will be off its level."""
    if calibration.rows == 0 or test.rows == 0:
        return None
    k = len(classes)
    before = np.bincount(calibration.labels, minlength=k) / calibration.rows
    after = np.bincount(test.labels, minlength=k) / test.rows
    distance = float(0.5 * np.abs(before - after).sum())
    if distance <= SHIFT_WARN_DISTANCE:
        return None
    moved = np.argsort(-np.abs(before - after))[:3]
    shown = ", ".join(f"{classes[i]} {before[i]:.0%} → {after[i]:.0%}" for i in moved)
    return (
        f"the class shares shift between the calibration rows and the newer test rows ({shown}; total variation "
        f"{distance:.2f}): conformal coverage assumes they match, so expect the test coverage off its level"
    )


def pattern_names(pattern_inputs: Sequence[str], given_names: Mapping[str, str] | None = None) -> dict[str, str]:
    """Readable names of the pattern keys: the spec's (``given_names``, which must name every pattern key or
    none), else ``"10"`` -> ``"garage given, pool absent"``."""
    keys = pattern_keys(len(pattern_inputs))
    if given_names:
        if sorted(given_names) != sorted(keys):
            raise BuildError(
                f"spec pattern_names has keys {sorted(given_names)}; the patterns of {', '.join(pattern_inputs)} "
                f"are {keys} (1: given, 0: absent, in that order)"
            )
        return {key: given_names[key] for key in keys}
    names: dict[str, str] = {}
    for key in pattern_keys(len(pattern_inputs)):
        given = [n for n, f in zip(pattern_inputs, key, strict=True) if f == "1"]
        absent = [n for n, f in zip(pattern_inputs, key, strict=True) if f == "0"]
        if not absent:
            names[key] = "every input given"
        elif not given:
            names[key] = f"without {', '.join(absent)}"
        else:
            names[key] = f"{', '.join(given)} given, {', '.join(absent)} absent"
    return names
