"""Turning raw model outputs into honest answers: conformal intervals and prediction sets per input pattern.

The tables come from the manifest (calibrated at training time on held-out data, one per pattern of optional
inputs), so a specs-only request gets the wide interval it deserves and a request with fuel figures a tight one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.errors import FieldError, RequestValidationError
from tabserve.manifest import ClassificationOutput, Manifest, level_key

DEFAULT_LEVEL = 0.9


@dataclass(frozen=True, slots=True)
class Confidence:
    """Compiled conformal tables of one model version."""

    task: str
    score: str
    levels: tuple[float, ...]
    quantiles: dict[str, dict[float, float]]
    classes: tuple[str, ...]
    unit: str

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
        return cls("regression", conformal.score, levels, quantiles, (), output.unit)

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
            if abs(level - allowed) < 1e-9:
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

    def regression(self, prediction: float, pattern: str, level: float) -> dict[str, Any]:
        q = self.quantiles[pattern][level]
        half = q if self.score == "absolute" else abs(prediction) * q
        return {"level": level, "lower": round(prediction - half, 3), "upper": round(prediction + half, 3)}

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
    ) -> tuple[list[float], list[float], list[float]]:
        """Vectorised ``regression`` for a batch: rounded predictions, lower and upper bounds."""
        preds = np.round(predictions.astype(np.float64), 3)
        by_pattern = {p: table[level] for p, table in self.quantiles.items()}
        q: float | npt.NDArray[np.float64]
        if len(set(patterns)) == 1:  # the usual batch: one pattern, one quantile for every row
            q = by_pattern[patterns[0]]
        else:
            q = np.array(list(map(by_pattern.__getitem__, patterns)), dtype=np.float64)
        half = q if self.score == "absolute" else np.abs(preds) * q
        lower = np.round(preds - half, 3)
        upper = np.round(preds + half, 3)
        return preds.tolist(), lower.tolist(), upper.tolist()

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
