"""co2 evaluation: regression metrics, baselines, per-pattern split-conformal tables and coverage.

A "predictor" here is any function from the encoded float32 matrix to predictions, so the same code scores
the in-memory estimator (training, parity) and the committed ONNX artifact (``tabserve evaluate co2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.manifest import level_key
from tabserve.runtime import ColumnEncoder
from tabserve.training.co2_features import ALL_PATTERNS, encode, mask_pattern
from tabserve.training.conformal import (
    LEVELS,
    conformal_quantile,
    coverage,
    regression_interval,
    regression_scores,
)

Predictor = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
Values = Mapping[str, list[Any]]
SCORES = ("absolute", "relative")


def regression_metrics(y: npt.ArrayLike, pred: npt.ArrayLike) -> dict[str, float]:
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(pred, dtype=np.float64)
    err = y_arr - p_arr
    ss_tot = float(np.sum((y_arr - y_arr.mean()) ** 2))
    return {
        "mae": round(float(np.mean(np.abs(err))), 4),
        "rmse": round(float(np.sqrt(np.mean(err**2))), 4),
        "r2": round(1.0 - float(np.sum(err**2)) / ss_tot, 5) if ss_tot > 0 else math.nan,
        "rows": int(y_arr.size),
    }


def pattern_predictions(predict: Predictor, encoder: ColumnEncoder, values: Values) -> dict[str, npt.NDArray[Any]]:
    """Predictions for every pattern of the three consumption figures (masking the others)."""
    return {p: np.asarray(predict(encode(encoder, mask_pattern(values, p))), dtype=np.float64) for p in ALL_PATTERNS}


def physics_baseline(
    factors: Mapping[str, float],
    old_factors: Mapping[str, float],
    fuel: Sequence[str],
    year: npt.ArrayLike,
    comb: npt.ArrayLike,
    regime_year: float,
) -> npt.NDArray[Any]:
    """Combined L/100 km × per-fuel factor fitted on train, for the row's factor regime (model year < / ≥ 2016);
    the gasoline factor for a fuel not in the table."""
    old = np.asarray(year, dtype=np.float64) < regime_year
    new_f = np.array([factors.get(f, factors["X"]) for f in fuel])
    old_f = np.array([old_factors.get(f, old_factors["X"]) for f in fuel])
    return np.asarray(comb, dtype=np.float64) * np.where(old, old_f, new_f)


def choose_levels(calibration_rows: int) -> list[float]:
    """0.5/0.8/0.9/0.95 always; 0.99 only when every pattern has enough rows for a finite quantile."""
    return [lv for lv in LEVELS if math.ceil((calibration_rows + 1) * lv) <= calibration_rows]


def quantile_table(y: npt.ArrayLike, pred: npt.ArrayLike, score: str, levels: Sequence[float]) -> dict[str, float]:
    scores = regression_scores(y, pred, score)
    table = {level_key(lv): conformal_quantile(scores, lv) for lv in levels}
    for key, q in table.items():
        if not math.isfinite(q):
            raise ValueError(f"conformal quantile at level {key} is not finite ({scores.size} rows)")
    return {k: round(v, 6) for k, v in table.items()}


Calibration = Mapping[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]
"""pattern -> (actual, predicted)."""


def choose_score(earlier: Calibration, later: Calibration) -> tuple[str, dict[str, Any]]:
    """``absolute`` or ``relative``: the score whose 90 % intervals, calibrated on an earlier model year, keep
    their coverage best one model year later (mean |coverage − 0.9| over patterns; ties: the narrower).

    Both years precede the test split; this asks which score survives temporal drift, which is what the
    deployed intervals face."""
    report: dict[str, Any] = {}
    for score in SCORES:
        gaps, widths = [], []
        for pattern, (y_fit, p_fit) in earlier.items():
            y_chk, p_chk = later[pattern]
            q = conformal_quantile(regression_scores(y_fit, p_fit, score), 0.9)
            low, high = regression_interval(p_chk, q, score)
            gaps.append(abs(coverage((y_chk >= low) & (y_chk <= high)) - 0.9))
            widths.append(float(np.mean(high - low)))
        report[score] = {
            "mean_abs_coverage_gap_90": round(float(np.mean(gaps)), 4),
            "mean_width_90": round(float(np.mean(widths)), 4),
        }
    best = min(SCORES, key=lambda s: (report[s]["mean_abs_coverage_gap_90"], report[s]["mean_width_90"], s))
    return best, report


def coverage_table(
    y: npt.ArrayLike,
    by_pattern: Mapping[str, npt.NDArray[Any]],
    quantiles: Mapping[str, Mapping[str, float]],
    score: str,
) -> dict[str, dict[str, dict[str, float]]]:
    """pattern -> level -> {coverage, mean_width} on a held-out split."""
    y_arr = np.asarray(y, dtype=np.float64)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for pattern, pred in by_pattern.items():
        rows: dict[str, dict[str, float]] = {}
        for key, q in quantiles[pattern].items():
            low, high = regression_interval(pred, q, score)
            rows[key] = {
                "coverage": round(coverage((y_arr >= low) & (y_arr <= high)), 4),
                "mean_width": round(float(np.mean(high - low)), 3),
            }
        out[pattern] = rows
    return out
