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
