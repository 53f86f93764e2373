"""The penguins model's numbers: conformal tables on the calibration split and test metrics per pattern.

Everything is computed from a ``predict`` function over normalised rows, which in training and in
``evaluate`` is the exported ONNX graph behind the serving encoder: the manifest reports what serving does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.manifest import level_key
from tabserve.training.card import expected_calibration_error
from tabserve.training.conformal import LEVELS, conformal_quantile, coverage, lac_scores, lac_sets
from tabserve.training.penguins_data import CLASSES, PATTERN_NAMES, PenguinData, masked, pattern_keys
from tabserve.training.penguins_model import ECE_BINS, log_loss

REQUIRED_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
Predict = Callable[[PenguinData], npt.NDArray[np.float64]]


def conformal_tables(predict: Predict, calibration: PenguinData) -> tuple[list[float], dict[str, Any]]:
    """LAC quantiles per pattern. 0.99 is included only when every pattern has a finite quantile for it."""
    scores: dict[str, npt.NDArray[np.float64]] = {}
    rows: dict[str, int] = {}
    for key in pattern_keys():
        subset = masked(calibration, key)
        scores[key] = lac_scores(predict(subset), subset.labels)
        rows[key] = subset.rows
    optional = [level for level in LEVELS if level not in REQUIRED_LEVELS]
    levels = list(REQUIRED_LEVELS) + [
        level for level in optional if all(math.isfinite(conformal_quantile(s, level)) for s in scores.values())
    ]
    quantiles: dict[str, dict[str, float]] = {}
    for key, pattern_scores in scores.items():
        table = {level_key(level): conformal_quantile(pattern_scores, level) for level in levels}
        bad = [k for k, q in table.items() if not math.isfinite(q)]
        if bad:
            raise ValueError(f"pattern {key}: {rows[key]} calibration rows are too few for levels {bad}")
        quantiles[key] = table
    return levels, {"quantiles": quantiles, "calibration_rows": rows}


def pattern_metrics(
    predict: Predict, test: PenguinData, levels: list[float], quantiles: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Accuracy, log loss, ECE, and set coverage / mean size per level, for every pattern on ``test``.

    ``set_coverage`` / ``mean_set_size`` are for the sets as served (never empty: the top class when the
    LAC set is empty); ``lac_coverage`` / ``lac_empty_share`` are for the raw LAC sets the guarantee is about.
    """
    out: dict[str, Any] = {}
    for key in pattern_keys():
        subset = masked(test, key)
        proba = predict(subset)
        predicted = proba.argmax(axis=1)
        sets: dict[str, float] = {}
        sizes: dict[str, float] = {}
        raw: dict[str, float] = {}
        empty: dict[str, float] = {}
        rows = np.arange(subset.rows)
        for level in levels:
            mask = lac_sets(proba, quantiles[key][level_key(level)])
            raw[level_key(level)] = coverage(mask[rows, subset.labels])
            empty[level_key(level)] = float(np.mean(~mask.any(axis=1)))
            served = served_sets(mask, predicted)
            sets[level_key(level)] = coverage(served[rows, subset.labels])
            sizes[level_key(level)] = float(served.sum(axis=1).mean())
        out[key] = {
            "name": PATTERN_NAMES[key],
            "rows": subset.rows,
            "accuracy": float(np.mean(predicted == subset.labels)),
            "log_loss": log_loss(proba, subset.labels),
            "ece": expected_calibration_error(proba, subset.labels, ECE_BINS),
            "set_coverage": sets,
            "mean_set_size": sizes,
            "lac_coverage": raw,
            "lac_empty_share": empty,
            "confusion_matrix": confusion(subset.labels, predicted),
        }
    return out


def served_sets(mask: npt.NDArray[np.bool_], predicted: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """The sets serving returns (``confidence.py``): the LAC set, or the top class alone when it is empty."""
    out = mask.copy()
    empty = ~out.any(axis=1)
    out[np.flatnonzero(empty), predicted[empty]] = True
    return out


def confusion(labels: npt.ArrayLike, predicted: npt.ArrayLike) -> list[list[int]]:
    """Counts [actual][predicted] over ``CLASSES``."""
    k = len(CLASSES)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return [[int(v) for v in row] for row in matrix]


def majority_baseline(train: PenguinData, test: PenguinData) -> dict[str, Any]:
    """Always the training split's most common class, with its class shares as probabilities."""
    counts = np.bincount(train.labels, minlength=len(CLASSES))
    shares = counts / counts.sum()
    proba = np.tile(shares, (test.rows, 1))
    majority = int(counts.argmax())
    return {
        "class": CLASSES[majority],
        "accuracy": float(np.mean(test.labels == majority)),
        "log_loss": log_loss(proba, test.labels),
    }


def all_metrics(
    predict: Predict,
    train: PenguinData,
    test: PenguinData,
    levels: list[float],
    quantiles: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The manifest's ``metrics`` minus the training-only facts (split sizes, temperature)."""
    return {
        "ece_bins": ECE_BINS,
        "ece_kind": "top-label, equal-width bins",
        "test": pattern_metrics(predict, test, levels, quantiles),
        "baseline_majority": majority_baseline(train, test),
    }
