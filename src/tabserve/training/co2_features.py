"""co2 inputs and columns: the API's input schema, the column encoding chosen from training data, and the
training matrices built THROUGH ``tabserve.runtime.ColumnEncoder`` (so train/serve skew is impossible).

Encoding decisions:
- make / vehicle class / transmission: ordinal codes ranked by mean training CO₂ (so tree splits on the code
  are meaningful); categories with fewer than ``MIN_CATEGORY_ROWS`` training rows are left out, i.e. get the
  ``unknown`` code −1, which training also produces on purpose by random masking (``UNKNOWN_RATE``);
- transmission also gives its gear count and its type (A/AM/AS/AV/M) as two more ordinal columns;
- fuel type: fixed codes X=0 Z=1 D=2 E=3 N=4, unknown 5 (the ONNX physics term looks its factor up by code);
- model (text): token columns; fixed groups of synonyms (AWD/4WD/4X4/4MATIC…, HYBRID, PLUG-IN, FFV, TURBO,
  DIESEL/TDI/BLUETEC) plus the words most associated with CO₂ in training model names;
- numbers: as given (NaN when absent). model_year is optional and masked at random in training.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tabserve.features.units import unit_names
from tabserve.runtime import ColumnEncoder, text_tokens
from tabserve.training.co2_data import (
    CITY,
    CLASS_ALIASES,
    COMB,
    CONSUMPTION,
    FUEL_ALIASES,
    FUEL_CODES,
    FUEL_NAMES,
    HWY,
    TARGET,
)
from tabserve.training.describe import training_range

MIN_CATEGORY_ROWS = 5
UNKNOWN = -1.0
FUEL_UNKNOWN = float(len(FUEL_CODES))
UNKNOWN_VALUE = "\x00unknown"
"""A value no category table holds: the encoder maps it to the column's ``unknown`` code."""
UNKNOWN_RATE = 0.04
YEAR_MASK_RATE = 0.2
TOKEN_MIN_ROWS = 40
DATA_TOKENS = 30

TOKEN_GROUPS: dict[str, tuple[str, ...]] = {
    "awd": ("AWD", "4WD", "4X4", "4MATIC", "XDRIVE", "QUATTRO", "4MOTION", "ALL4", "AWC", "SH"),
    "hybrid": ("HYBRID",),
    "plug_in": ("PLUG",),
    "ffv": ("FFV",),
    "turbo": ("TURBO",),
    "diesel": ("DIESEL", "TDI", "BLUETEC", "TDI2", "ECODIESEL"),
}

REQUIRED = ("make", "model", "vehicle_class", "engine_size_l", "cylinders", "transmission", "fuel_type")
INPUT_ORDER = (*REQUIRED, "model_year", CITY, HWY, COMB)
CATEGORY_INPUTS = ("make", "vehicle_class", "transmission", "fuel_type")
NUMERIC_INPUTS = ("engine_size_l", "cylinders", "model_year", CITY, HWY, COMB)

PLAUSIBLE: dict[str, tuple[float, float, str, bool]] = {
    # name: (min, max, canonical unit, integer)
    "engine_size_l": (0.5, 10.0, "L", False),
    "cylinders": (2.0, 16.0, "count", True),
    "model_year": (1980.0, 2035.0, "year", True),
    CITY: (1.0, 40.0, "L/100km", False),
    HWY: (1.0, 40.0, "L/100km", False),
    COMB: (1.0, 40.0, "L/100km", False),
}
DESCRIPTIONS = {
    "make": "Manufacturer, e.g. Toyota (matched case- and punctuation-insensitively).",
    "model": "Model name as listed by NRCan, e.g. 'RAV4 AWD'; read for words such as AWD, 4X4, HYBRID, FFV, TURBO.",
    "vehicle_class": "NRCan vehicle class, official 2015+ names (e.g. 'Sport utility vehicle: Small'); "
    "older names such as 'SUV - SMALL' are accepted as aliases.",
    "engine_size_l": "Engine displacement.",
    "cylinders": "Number of cylinders.",
    "transmission": "NRCan transmission code: A/AM/AS/AV/M + gear count, e.g. AS6, M5, AV.",
    "fuel_type": "Fuel: X regular gasoline, Z premium gasoline, D diesel, E ethanol E85, N natural gas.",
    "model_year": "Model year (optional; improves accuracy).",
    CITY: "5-cycle city fuel consumption (optional).",
    HWY: "5-cycle highway fuel consumption (optional).",
    COMB: "5-cycle combined fuel consumption, 55 % city / 45 % highway (optional).",
}


def _ranked_codes(frame: pd.DataFrame, column: str) -> dict[str, float]:
    """Known categories (≥ MIN_CATEGORY_ROWS training rows) -> rank of their mean CO₂ (0 = lowest)."""
    stats = frame.groupby(column, dropna=True)[TARGET].agg(["mean", "count"])
    stats = stats[stats["count"] >= MIN_CATEGORY_ROWS].sort_values(["mean"], kind="mergesort")
    return {str(name): float(rank) for rank, name in enumerate(stats.index)}


def _gears(code: str) -> float:
    digits = "".join(ch for ch in code if ch.isdigit())
    return float(digits) if digits else 0.0


_TRANSMISSION_TYPES = {"A": 0.0, "AM": 1.0, "AS": 2.0, "AV": 3.0, "M": 4.0}


def _transmission_type(code: str) -> float:
    letters = "".join(ch for ch in code if ch.isalpha())
    return _TRANSMISSION_TYPES.get(letters, UNKNOWN)


def choose_tokens(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Token columns: the fixed synonym groups present in training, plus the model-name words (≥
    TOKEN_MIN_ROWS rows) whose mean CO₂ departs most from the overall mean (|Δ|·√n)."""
    words = [text_tokens(m) for m in frame["model"]]
    counts: Counter[str] = Counter(w for ws in words for w in ws)
    grouped = {w for group in TOKEN_GROUPS.values() for w in group}
    chosen: dict[str, list[str]] = {}
    for name, group in TOKEN_GROUPS.items():
        present = [w for w in group if counts[w] > 0]
        if sum(counts[w] for w in present) >= 10:
            chosen[name] = present
    y = frame[TARGET].to_numpy(dtype=np.float64)
    mean = float(y.mean())
    scores: list[tuple[float, str]] = []
    for word, n in counts.items():
        if n < TOKEN_MIN_ROWS or word in grouped:
            continue
        mask = np.fromiter((word in ws for ws in words), dtype=bool, count=len(words))
        scores.append((abs(float(y[mask].mean()) - mean) * math.sqrt(n), word))
    for _, word in sorted(scores, key=lambda s: (-s[0], s[1]))[:DATA_TOKENS]:
        chosen[f"word_{word.lower()}"] = [word]
    return chosen


def build_columns(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The manifest's ``columns`` (ONNX input order), chosen from the training frame."""
    transmissions = _ranked_codes(frame, "transmission")
    columns: list[dict[str, Any]] = [
        {
            "kind": "ordinal",
            "input": "make",
            "codes": _ranked_codes(frame, "make"),
            "unknown": UNKNOWN,
            "missing": UNKNOWN,
        },
        {
            "kind": "ordinal",
            "input": "vehicle_class",
            "codes": _ranked_codes(frame, "vehicle_class"),
            "unknown": UNKNOWN,
            "missing": UNKNOWN,
        },
        {"kind": "ordinal", "input": "transmission", "codes": transmissions, "unknown": UNKNOWN, "missing": UNKNOWN},
        {
            "kind": "ordinal",
            "input": "transmission",
            "codes": {t: _gears(t) for t in transmissions},
            "unknown": UNKNOWN,
            "missing": UNKNOWN,
        },
        {
            "kind": "ordinal",
            "input": "transmission",
            "codes": {t: _transmission_type(t) for t in transmissions},
            "unknown": UNKNOWN,
            "missing": UNKNOWN,
        },
        {
            "kind": "ordinal",
            "input": "fuel_type",
            "codes": {c: float(i) for i, c in enumerate(FUEL_CODES)},
            "unknown": FUEL_UNKNOWN,
            "missing": FUEL_UNKNOWN,
        },
    ]
    columns += [{"kind": "numeric", "input": name} for name in NUMERIC_INPUTS]
    columns += [{"kind": "token", "input": "model", "tokens": tokens} for tokens in choose_tokens(frame).values()]
    return columns


def column_index(columns: Sequence[Mapping[str, Any]], kind: str, name: str) -> int:
    for i, column in enumerate(columns):
        if column["kind"] == kind and column["input"] == name:
            return i
    raise KeyError(f"no {kind} column for {name}")


def _category_aliases(name: str, known: set[str]) -> dict[str, str]:
    if name == "fuel_type":
        return dict(sorted(FUEL_ALIASES.items()))
    if name == "vehicle_class":
        return {k: v for k, v in sorted(CLASS_ALIASES.items()) if v in known and k != v}
    return {}


IN_DISTRIBUTION_QUANTILE = 0.001
"""Numbers outside the 0.1 %–99.9 % training quantiles are flagged (16 cylinders: 12 training rows of ≈ 29,000)."""
YEARS_AHEAD = 2
"""Model years up to two past the newest trained on are the normal use, not flagged by the year alone."""


def in_distribution(name: str, values: npt.NDArray[np.float64]) -> dict[str, float]:
    """The range outside which a value is flagged out_of_distribution (manifest ``in_distribution``)."""
    arr = values[np.isfinite(values)]
    if name == "model_year":
        return {"min": float(arr.min()), "max": float(arr.max()) + YEARS_AHEAD}
    q = IN_DISTRIBUTION_QUANTILE
    return {"min": float(np.quantile(arr, q)), "max": float(np.quantile(arr, 1.0 - q))}


def build_inputs(frame: pd.DataFrame, columns: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's ``inputs`` (API contract names), with ranges from the training frame."""
    known: dict[str, list[str]] = {}
    for column in columns:
        if column["kind"] == "ordinal" and column["input"] not in known:
            known[column["input"]] = sorted(column["codes"])
    specs: list[dict[str, Any]] = []
    for name in INPUT_ORDER:
        required = name in REQUIRED
        if name == "model":
            specs.append(
                {"name": name, "type": "text", "description": DESCRIPTIONS[name], "required": True, "max_length": 200}
            )
        elif name in CATEGORY_INPUTS:
            categories = known[name]
            specs.append(
                {
                    "name": name,
                    "type": "category",
                    "description": DESCRIPTIONS[name],
                    "required": required,
                    "categories": categories,
                    "aliases": _category_aliases(name, set(categories)),
                }
            )
        else:
            low, high, unit, integer = PLAUSIBLE[name]
            specs.append(
                {
                    "name": name,
                    "type": "number",
                    "description": DESCRIPTIONS[name],
                    "required": required,
                    "unit": unit,
                    "units": unit_names(unit),
                    "integer": integer,
                    "plausible": {"min": low, "max": high},
                    "training": training_range(frame[name].to_numpy(dtype=np.float64)),
                    "in_distribution": in_distribution(name, frame[name].to_numpy(dtype=np.float64)),
                }
            )
    return specs


def fuel_description() -> str:
    return ", ".join(f"{code} = {FUEL_NAMES[code]}" for code in FUEL_CODES)


def input_values(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """Normalised request values per input (None when absent), as serving would hand them to the encoder."""
    values: dict[str, list[Any]] = {}
    for name in INPUT_ORDER:
        series = frame[name]
        if name in NUMERIC_INPUTS:
            values[name] = [None if not math.isfinite(v) else float(v) for v in series.to_numpy(np.float64)]
        else:
            values[name] = [
                None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in series.tolist()
            ]
    return values


def mask_pattern(values: Mapping[str, list[Any]], pattern: str) -> dict[str, list[Any]]:
    """Drop the consumption figures whose character in ``pattern`` (city, hwy, comb) is ``0``."""
    out = dict(values)
    n = len(next(iter(values.values())))
    for name, flag in zip(CONSUMPTION, pattern, strict=True):
        if flag == "0":
            out[name] = [None] * n
    return out


def perturb(
    values: Mapping[str, list[Any]], rng: np.random.Generator, year_mask_from: float | None = None
) -> dict[str, list[Any]]:
    """Training-only noise that teaches the model the unknown code and an absent model year.

    ``year_mask_from``: only rows of that model year or later lose their year (the physics term assumes the
    current factor regime when the year is absent, so only current-regime rows may teach that case).
    """
    out = {k: list(v) for k, v in values.items()}
    n = len(out["make"])
    for name in ("make", "vehicle_class", "transmission"):
        hits = rng.random(n) < UNKNOWN_RATE
        out[name] = [UNKNOWN_VALUE if hit else v for hit, v in zip(hits, out[name], strict=True)]
    hits = rng.random(n) < YEAR_MASK_RATE
    if year_mask_from is not None:
        hits &= np.array([v is not None and v >= year_mask_from for v in out["model_year"]], dtype=bool)
    out["model_year"] = [None if hit else v for hit, v in zip(hits, out["model_year"], strict=True)]
    return out


def encode(encoder: ColumnEncoder, values: Mapping[str, list[Any]]) -> npt.NDArray[np.float32]:
    n = len(next(iter(values.values())))
    return encoder.encode_columns(values, n)


ALL_PATTERNS = tuple(f"{i:03b}" for i in range(8))
PATTERN_NAMES = {
    "111": "city + highway + combined",
    "110": "city + highway",
    "101": "city + combined",
    "100": "city only",
    "011": "highway + combined",
    "010": "highway only",
    "001": "combined only",
    "000": "specs only",
}
