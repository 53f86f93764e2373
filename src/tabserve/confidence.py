"""Turning raw model outputs into honest answers: conformal intervals and prediction sets per input pattern.

The tables come from the manifest (calibrated at training time on held-out data, one per pattern of optional
inputs), so a specs-only request gets the wide interval it deserves and a request with fuel figures a tight one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.errors import FieldError, RequestValidationError
from tabserve.features.batch import WarningRun
from tabserve.manifest import ClassificationOutput, Manifest, level_key

DEFAULT_LEVEL = 0.9
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Confidence:
    """Compiled conformal tables of one model version."""

    task: str
    score: str
    levels: tuple[float, ...]
    quantiles: dict[str, dict[float, float]]
    classes: tuple[str, ...]
    unit: str
    floor: float | None = None
    """Regression: no prediction or bound below it (``RegressionOutput.floor``)."""

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Confidence:
        conformal = manifest.conformal
        levels = tuple(sorted(conformal.levels))
        quantiles = {
            pattern: {level: table[level_key(level)] for level in levels}
            for pattern, table in conformal.quantiles.items()
        }
        output = manifest.output
        if isinstance(output, ClassificationOutput):
            return cls("classification", conformal.score, levels, quantiles, tuple(output.classes), "")
        return cls("regression", conformal.score, levels, quantiles, (), output.unit, output.floor)

    @property
    def default_level(self) -> float:
        return DEFAULT_LEVEL if DEFAULT_LEVEL in self.levels else self.levels[len(self.levels) // 2]

    def resolve_level(self, raw: str | float | None) -> float:
        """The requested level, checked against the manifest's levels (422 naming the allowed ones)."""
        if raw is None or raw == "":
            return self.default_level
        try:
            level = float(raw)
        except (TypeError, ValueError):
            level = float("nan")
        for allowed in self.levels:
            if level == allowed:  # exact: "0.90" is 0.9, 0.9899999999999999 is not 0.99
                return allowed
        allowed_text = ", ".join(f"{lv:g}" for lv in self.levels)
        raise RequestValidationError(
            [
                FieldError(
                    ("query", "level"),
                    f"level {raw!r} is not available; allowed levels: {allowed_text}",
                    "unsupported_level",
                    {"allowed": list(self.levels)},
                )
            ]
        )

    def point(self, output: float) -> float:
        """A regression's prediction as answered: rounded to 3 decimals, never below the floor."""
        prediction = round(output, 3)
        return prediction if self.floor is None or prediction >= self.floor else self.floor

    def regression(self, prediction: float, pattern: str, level: float) -> dict[str, Any]:
        q = self.quantiles[pattern][level]
        half = q if self.score == "absolute" else abs(prediction) * q
        lower, upper = round(prediction - half, 3), round(prediction + half, 3)
        if self.floor is not None:
            lower, upper = max(lower, self.floor), max(upper, self.floor)
        return {"level": level, "lower": lower, "upper": upper}

    def classification(self, probabilities: npt.NDArray[np.float32], pattern: str, level: float) -> dict[str, Any]:
        """Probabilities by class and the LAC prediction set, most probable first (never empty)."""
        threshold = 1.0 - self.quantiles[pattern][level]
        probs = [float(p) for p in probabilities]
        order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)
        chosen = [self.classes[i] for i in order if probs[i] >= threshold] or [self.classes[order[0]]]
        return {
            "prediction": self.classes[order[0]],
            "probabilities": {c: round(p, 6) for c, p in zip(self.classes, probs, strict=True)},
            "prediction_set": chosen,
            "level": level,
        }

    def regression_batch(
        self, predictions: npt.NDArray[np.float32], patterns: list[str], level: float
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Vectorised ``regression`` for a batch: rounded predictions, lower and upper bounds (float64 arrays)."""
        preds = predictions.astype(np.float64).round(3)
        if self.floor is not None:
            preds = np.maximum(preds, self.floor)
        by_pattern = {p: table[level] for p, table in self.quantiles.items()}
        q: float | npt.NDArray[np.float64]
        if len(set(patterns)) == 1:  # the usual batch: one pattern, one quantile for every row
            q = by_pattern[patterns[0]]
        else:
            q = np.array(list(map(by_pattern.__getitem__, patterns)), dtype=np.float64)
        half = q if self.score == "absolute" else np.abs(preds) * q
        lower, upper = np.round(preds - half, 3), np.round(preds + half, 3)
        if self.floor is not None:
            lower, upper = np.maximum(lower, self.floor), np.maximum(upper, self.floor)
        return preds, lower, upper

    def batch(
        self,
        raw: npt.NDArray[np.float32],
        patterns: list[str],
        level: float,
        out_of_distribution: list[bool],
        runs: list[WarningRun],
    ) -> BatchAnswers:
        """A batch's answers from the raw outputs, its rows' conformal patterns, flags and warnings."""
        if self.task == "regression":
            interval = self.regression_batch(raw, patterns, level)
            return BatchAnswers(level, self.unit, out_of_distribution, runs, interval=interval, patterns=patterns)
        classified = self.classification_batch(raw, patterns, level)
        return BatchAnswers(level, self.unit, out_of_distribution, runs, classified=classified, patterns=patterns)

    def classification_batch(
        self, probabilities: npt.NDArray[np.float32], patterns: list[str], level: float
    ) -> list[dict[str, Any]]:
        """Vectorised ``classification`` for a batch (same answers, row for row)."""
        probs = probabilities.astype(np.float64)
        by_pattern = {p: 1.0 - table[level] for p, table in self.quantiles.items()}
        threshold = np.array([by_pattern[p] for p in patterns], dtype=np.float64)
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        keep = sorted_probs >= threshold[:, None]
        keep[:, 0] = True  # never an empty set: the most probable class is always in it
        rounded = np.round(probs, 6).tolist()
        classes = self.classes
        out: list[dict[str, Any]] = []
        for row_order, row_keep, row_probs in zip(order.tolist(), keep.tolist(), rounded, strict=True):
            out.append(
                {
                    "prediction": classes[row_order[0]],
                    "probabilities": dict(zip(classes, row_probs, strict=True)),
                    "prediction_set": [classes[j] for j, k in zip(row_order, row_keep, strict=True) if k],
                    "level": level,
                }
            )
        return out


@dataclass(slots=True)
class BatchAnswers:
    """A batch's answers as columns, in row order: what the JSON response, the Open Inference Protocol tensors and
    the hooks read, without one object per row. ``dicts()`` builds the documented answer objects (one dict per
    row, the single-instance answer's shape) on first use, for whoever needs them.

    A regression batch holds ``interval`` (rounded predictions, lower and upper bounds); a classification batch
    holds its answers as dicts from the start (``classified``, without warnings and out-of-distribution flag).
    Warnings are the validator's runs (``features.batch.WarningRun``): appending every run's warnings to its
    rows gives each row's warnings in the single-instance order.
    """

    level: float
    unit: str
    out_of_distribution: list[bool]
    runs: list[WarningRun]
    interval: tuple[FloatArray, FloatArray, FloatArray] | None = None
    classified: list[dict[str, Any]] | None = None
    effective: dict[str, float] | None = None
    """Adaptive levels only: the effective level served per conformal pattern (rounded to 6 places)."""
    patterns: list[str] | None = None
    """The conformal pattern (``ConformalSpec.pattern_inputs`` given or not) each row's confidence came from."""
    _dicts: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return len(self.out_of_distribution)

    def predictions(self) -> list[Any]:
        """Every row's prediction: a float (regression) or a class name."""
        if self.interval is not None:
            values: list[Any] = self.interval[0].tolist()
            return values
        return [answer["prediction"] for answer in self.classified or ()]

    def warning_counts(self) -> Counter[tuple[str, str]]:
        """(field, code) -> how many rows have that warning."""
        counts: Counter[tuple[str, str]] = Counter()
        for _, warnings in self.runs:
            by_id = dict(zip(map(id, warnings), warnings, strict=True))  # the same few warning objects recur
            for key, n in Counter(map(id, warnings)).items():
                warning = by_id[key]
                counts[warning.field, warning.code] += n
        return counts

    @property
    def built(self) -> bool:
        """Whether ``dicts()`` has been called (a hook read the answers row by row)."""
        return self._dicts is not None

    def dicts(self) -> list[dict[str, Any]]:
        """One answer dict per row, as ``/predict`` documents it (built once; the same list on every call).
        Rows with the same warnings share one warnings list and its dicts: treat them as read-only."""
        if self._dicts is None:
            self._dicts = self._build_dicts()
        return self._dicts

    def _build_dicts(self) -> list[dict[str, Any]]:
        none: list[dict[str, str]] = []  # shared by the rows without warnings
        ood = self.out_of_distribution
        answers: list[dict[str, Any]]
        if self.interval is not None:
            level, unit = self.level, self.unit
            prediction, lower, upper = self.interval
            answers = [
                {
                    "prediction": p,
                    "unit": unit,
                    "interval": {"level": level, "lower": lo, "upper": up},
                    "warnings": none,
                    "out_of_distribution": o,
                }
                for p, lo, up, o in zip(prediction.tolist(), lower.tolist(), upper.tolist(), ood, strict=True)
            ]
        else:
            answers = [
                {**answer, "warnings": none, "out_of_distribution": o}
                for answer, o in zip(self.classified or (), ood, strict=True)
            ]
        for i, warnings in row_warning_dicts(self.runs).items():
            answers[i]["warnings"] = warnings
        return answers


def row_warning_dicts(runs: list[WarningRun]) -> dict[int, list[dict[str, str]]]:
    """Row -> its warnings as dicts, for the rows that have some (one dict per warning object)."""
    as_dicts: dict[int, dict[str, str]] = {}  # by id: the same warning objects recur across rows
    out: dict[int, list[dict[str, str]]] = {}
    for rows, warnings in runs:
        for i, warning in zip(rows, warnings, strict=True):
            as_dict = as_dicts.get(id(warning))
            if as_dict is None:
                as_dict = as_dicts[id(warning)] = warning.as_dict()
            found = out.get(i)
            if found is None:
                out[i] = [as_dict]
            else:
                found.append(as_dict)
    return out
