"""Split-conformal calibration: score quantiles with the finite-sample correction, and coverage checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)


def conformal_quantile(scores: npt.ArrayLike, level: float) -> float:
    """The ceil((n+1)·level)/n empirical quantile of calibration scores (Vovk et al.; Angelopoulos & Bates).

    With n calibration scores this gives marginal coverage ≥ level on exchangeable data. When n is too
    small for the level, the quantile is +inf (an honest, unbounded interval) rather than a guess.
    """
    arr = np.sort(np.asarray(scores, dtype=np.float64))
    n = arr.size
    if n == 0:
        return math.inf
    rank = math.ceil((n + 1) * level)
    if rank > n:
        return math.inf
    return float(arr[rank - 1])


def regression_scores(y: npt.ArrayLike, pred: npt.ArrayLike, score: str) -> npt.NDArray[np.float64]:
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(pred, dtype=np.float64)
    if score == "absolute":
        return np.abs(y_arr - p_arr)
    if score == "relative":
        return np.abs(y_arr - p_arr) / np.maximum(np.abs(p_arr), 1e-9)
    raise ValueError(f"unknown regression score {score!r}")


def regression_interval(
    pred: npt.ArrayLike, q: float, score: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    p_arr = np.asarray(pred, dtype=np.float64)
    half = q if score == "absolute" else np.abs(p_arr) * q
    return p_arr - half, p_arr + half


def lac_scores(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """LAC non-conformity: 1 − probability of the true class."""
    proba = np.asarray(probabilities, dtype=np.float64)
    idx = np.asarray(labels, dtype=np.int64)
    return 1.0 - proba[np.arange(proba.shape[0]), idx]


def lac_sets(probabilities: npt.ArrayLike, q: float) -> npt.NDArray[np.bool_]:
    """Prediction sets as a boolean [n, k] mask: classes with probability ≥ 1 − q."""
    return np.asarray(probabilities, dtype=np.float64) >= 1.0 - q


def coverage(inside: Sequence[bool] | npt.NDArray[np.bool_]) -> float:
    arr = np.asarray(inside, dtype=bool)
    return float(arr.mean()) if arr.size else math.nan
