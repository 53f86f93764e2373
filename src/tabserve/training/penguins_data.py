"""The penguins model's data and schema: loading, cleaning, normalising, splitting, input/column specs.

Rows come from the ``palmerpenguins`` package's bundled CSV (plus an optional ``--extra`` CSV in the
same layout). Values are normalised exactly as serving normalises a request (categories through
``normalise_key`` + aliases), held as ``{input: [value or None]}`` columns, and every matrix is built by
the manifest's ``ColumnEncoder`` from those columns, so training and serving cannot disagree.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from palmerpenguins import load_penguins
from pydantic import TypeAdapter
from sklearn.model_selection import train_test_split

from tabserve.features.text import normalise_key
from tabserve.features.units import unit_names
from tabserve.manifest import ColumnSpec
from tabserve.runtime import ColumnEncoder, FloatMatrix
from tabserve.training.describe import training_range

CLASSES: tuple[str, ...] = ("Adelie", "Chinstrap", "Gentoo")
"""The output's classes, in the ONNX probability columns' order."""
MEASUREMENTS: tuple[tuple[str, str, str, float, float], ...] = (
    # name, unit, description, plausible min, plausible max (generous: any adult Pygoscelis and then some)
    ("bill_length_mm", "mm", "Culmen (bill) length", 20.0, 90.0),
    ("bill_depth_mm", "mm", "Culmen (bill) depth", 8.0, 35.0),
    ("flipper_length_mm", "mm", "Flipper length", 130.0, 280.0),
    ("body_mass_g", "g", "Body mass", 1000.0, 15000.0),
)
ISLANDS: tuple[str, ...] = ("BISCOE", "DREAM", "TORGERSEN")
SEXES: tuple[str, ...] = ("FEMALE", "MALE")
ISLAND_ALIASES = {
    "BISCOE ISLAND": "BISCOE",
    "BISCOE ISLANDS": "BISCOE",
    "DREAM ISLAND": "DREAM",
    "TORGERSEN ISLAND": "TORGERSEN",
    "TORGERSON": "TORGERSEN",
}
SEX_ALIASES = {"M": "MALE", "F": "FEMALE", "MALES": "MALE", "FEMALES": "FEMALE", "MAN": "MALE", "WOMAN": "FEMALE"}
OPTIONAL_INPUTS: tuple[str, ...] = ("island", "sex")
"""The conformal pattern inputs, in pattern-key order."""
PATTERN_NAMES = {
    "11": "island and sex given",
    "10": "island given, sex absent",
    "01": "sex given, island absent",
    "00": "measurements only",
}
CSV_COLUMNS = ("species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex")

Columns = dict[str, list[Any]]


def package_csv() -> Path:
    """The CSV that ``load_penguins()`` reads, located without importing the downloading module."""
    path = Path(str(importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the palmerpenguins package has no bundled penguins.csv")
    return path


def _category(raw: object, aliases: dict[str, str]) -> str | None:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw is pd.NA:
        return None
    key = normalise_key(str(raw))
    return aliases.get(key, key) if key else None


def _number(raw: object) -> float | None:
    if raw is None or raw is pd.NA:
        return None
    value = float(str(raw)) if not isinstance(raw, int | float) else float(raw)
    return None if math.isnan(value) else value


@dataclass(frozen=True, slots=True)
class PenguinData:
    """Cleaned rows: normalised input columns and class indices (into ``CLASSES``)."""

    columns: Columns
    labels: npt.NDArray[np.int64]
    raw_rows: int
    dropped: int

    @property
    def rows(self) -> int:
        return int(self.labels.size)

    def take(self, index: Sequence[int] | npt.NDArray[np.int64]) -> PenguinData:
        idx = [int(i) for i in index]
        columns = {name: [values[i] for i in idx] for name, values in self.columns.items()}
        return PenguinData(columns, self.labels[idx], len(idx), 0)


def read_frame(extra: Path | None = None) -> tuple[pd.DataFrame, int]:
    """The package's rows (via ``load_penguins``) plus ``extra``'s; returns (frame, package row count)."""
    base = load_penguins()
    missing = set(CSV_COLUMNS) - set(base.columns)
    if missing:
        raise ValueError(f"palmerpenguins data lacks columns {sorted(missing)}")
    frames = [base[list(CSV_COLUMNS)]]
    if extra is not None:
        more = pd.read_csv(extra, na_values=["NA", ""], keep_default_na=False)
        lacking = set(CSV_COLUMNS) - set(more.columns)
        if lacking:
            raise ValueError(f"{extra}: lacks columns {sorted(lacking)} (expected the palmerpenguins CSV layout)")
        frames.append(more[list(CSV_COLUMNS)])
    return pd.concat(frames, ignore_index=True), len(base)


def clean(frame: pd.DataFrame) -> PenguinData:
    """Drop rows without a species or any of the four measurements; normalise island and sex."""
    class_index = {normalise_key(name): i for i, name in enumerate(CLASSES)}
    columns: Columns = {name: [] for name, *_ in MEASUREMENTS}
    columns["island"] = []
    columns["sex"] = []
    labels: list[int] = []
    dropped = 0
    for record in frame.to_dict(orient="records"):
        species = _category(record["species"], {})
        numbers = [_number(record[name]) for name, *_ in MEASUREMENTS]
        if species is None or any(v is None for v in numbers):
            dropped += 1
            continue
        if species not in class_index:
            raise ValueError(f"unknown species {record['species']!r} (expected one of {', '.join(CLASSES)})")
        labels.append(class_index[species])
        for (name, *_), value in zip(MEASUREMENTS, numbers, strict=True):
            columns[name].append(value)
        columns["island"].append(_category(record["island"], ISLAND_ALIASES))
        columns["sex"].append(_category(record["sex"], SEX_ALIASES))
    return PenguinData(columns, np.asarray(labels, dtype=np.int64), len(frame), dropped)


def split(data: PenguinData, seed: int) -> tuple[PenguinData, PenguinData, PenguinData]:
    """Stratified train 40 % / calibration 30 % / test 30 %, fixed by ``seed``."""
    index = np.arange(data.rows)
    train, rest = train_test_split(index, test_size=0.6, stratify=data.labels, random_state=seed)
    calibration, test = train_test_split(rest, test_size=0.5, stratify=data.labels[rest], random_state=seed + 1)
    return data.take(np.sort(train)), data.take(np.sort(calibration)), data.take(np.sort(test))


def pattern_keys() -> list[str]:
    """Every pattern of the optional inputs, all given first: ``["11", "10", "01", "00"]``."""
    width = len(OPTIONAL_INPUTS)
    return [format(code, f"0{width}b") for code in reversed(range(2**width))]


def masked(data: PenguinData, pattern: str) -> PenguinData:
    """The rows that can stand for ``pattern``, with its absent inputs removed.

    A row whose value for a *given* input is missing in the data (e.g. sex NA) cannot represent a
    request that gives it, so it is left out of that pattern (it still counts in the patterns without it).
    """
    needed = [name for name, flag in zip(OPTIONAL_INPUTS, pattern, strict=True) if flag == "1"]
    keep = [i for i in range(data.rows) if all(data.columns[name][i] is not None for name in needed)]
    subset = data.take(keep)
    columns = dict(subset.columns)
    for name, flag in zip(OPTIONAL_INPUTS, pattern, strict=True):
        if flag == "0":
            columns[name] = [None] * subset.rows
    return PenguinData(columns, subset.labels, subset.rows, 0)


def augmented(data: PenguinData) -> PenguinData:
    """Training rows repeated once per pattern so the model learns every absent/unknown encoding."""
    parts = [masked(data, key) for key in pattern_keys()]
    columns = {name: [v for part in parts for v in part.columns[name]] for name in data.columns}
    labels = np.concatenate([part.labels for part in parts])
    return PenguinData(columns, labels, int(labels.size), 0)


def column_specs() -> list[dict[str, Any]]:
    """The ONNX input's columns: four measurements, island one-hot, sex one-hot (absent/unknown = all 0)."""
    specs: list[dict[str, Any]] = [{"kind": "numeric", "input": name} for name, *_ in MEASUREMENTS]
    specs += [{"kind": "indicator", "input": "island", "value": v, "missing": 0.0} for v in ISLANDS]
    specs += [{"kind": "indicator", "input": "sex", "value": v, "missing": 0.0} for v in SEXES]
    return specs


def encoder() -> ColumnEncoder:
    """The serving encoder for ``column_specs()`` (validated through the manifest's column schema)."""
    return ColumnEncoder(TypeAdapter(list[ColumnSpec]).validate_python(column_specs()))


def encode(data: PenguinData) -> FloatMatrix:
    return encoder().encode_columns(data.columns, data.rows)


def input_specs(train: PenguinData) -> list[dict[str, Any]]:
    """The manifest's inputs; training ranges come from the training split."""
    specs: list[dict[str, Any]] = []
    for name, unit, description, low, high in MEASUREMENTS:
        specs.append(
            {
                "name": name,
                "type": "number",
                "description": f"{description} ({unit})",
                "required": True,
                "unit": unit,
                "units": unit_names(unit),
                "plausible": {"min": low, "max": high},
                "training": training_range(train.columns[name]),
            }
        )
    specs.append(
        {
            "name": "island",
            "type": "category",
            "description": "Island in the Palmer Archipelago where the bird was measured (optional)",
            "required": False,
            "categories": list(ISLANDS),
            "aliases": ISLAND_ALIASES,
        }
    )
    specs.append(
        {
            "name": "sex",
            "type": "category",
            "description": "Sex of the bird (optional)",
            "required": False,
            "categories": list(SEXES),
            "aliases": SEX_ALIASES,
        }
    )
    return specs
