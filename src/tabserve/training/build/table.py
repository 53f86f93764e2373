"""The table as serving sees it: normalised columns (canonical numbers and category spellings, None when absent),
labels, the train / validation / calibration / test splits, and the masking that stands rows in for a pattern.

Values are normalised exactly as a request is (categories through ``normalise_key`` and the spec's aliases,
numbers converted from the spec's ``data_unit``), and every matrix is then built by the manifest's own
``ColumnEncoder``, so what the build measures is what the server answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tabserve.errors import BuildError
from tabserve.features.text import normalise_key
from tabserve.features.units import FAMILIES
from tabserve.training.build.infer import Schema, category_text
from tabserve.training.build.spec import DEFAULT_CALIBRATION_SHARE, DEFAULT_TEST_SHARE, BuildSpec

VALIDATION_SHARE = 0.15
"""Of the training split: the rows early stopping (and the temperature) look at."""

Columns = dict[str, list[Any]]


@dataclass(frozen=True, slots=True)
class Rows:
    """Normalised input columns, labels (class index or float target) and each row's 1-based row in the file."""

    columns: Columns
    labels: npt.NDArray[Any]
    file_rows: npt.NDArray[np.int64]

    @property
    def rows(self) -> int:
        return int(self.labels.size)

    def __add__(self, other: Rows) -> Rows:
        columns = {name: values + other.columns[name] for name, values in self.columns.items()}
        return Rows(
            columns, np.concatenate([self.labels, other.labels]), np.concatenate([self.file_rows, other.file_rows])
        )

    def take(self, index: Sequence[int] | npt.NDArray[np.int64]) -> Rows:
        idx = np.asarray(index, dtype=np.int64)
        columns = {name: [values[i] for i in idx.tolist()] for name, values in self.columns.items()}
        return Rows(columns, self.labels[idx], self.file_rows[idx])


@dataclass(frozen=True, slots=True)
class Splits:
    train: Rows
    validation: Rows
    calibration: Rows
    test: Rows
    temporal: bool

    def sizes(self) -> dict[str, int]:
        return {
            "train": self.train.rows,
            "validation": self.validation.rows,
            "calibration": self.calibration.rows,
            "test": self.test.rows,
        }


def _number_column(series: pd.Series, data_unit: str | None, unit: str | None) -> list[float | None]:
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    if data_unit is not None and unit is not None:
        family = FAMILIES[unit]
        name = family.lookup(data_unit)
        if name is not None:
            convert = family.units[name]
            values = np.array([convert(float(v)) if math.isfinite(v) else math.nan for v in values])
    return [None if math.isnan(v) else v for v in values.tolist()]


def _category_column(series: pd.Series, aliases: dict[str, str]) -> list[str | None]:
    table = {normalise_key(k): normalise_key(v) for k, v in aliases.items()}
    out: list[str | None] = []
    for value in series.tolist():
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            out.append(None)
            continue
        key = normalise_key(category_text(value))
        out.append(table.get(key, key) or None)
    return out


def _text_column(series: pd.Series) -> list[str | None]:
    """Free text as a request sends it (the token columns read its words, upper-cased): blank is absent."""
    out: list[str | None] = []
    for value in series.tolist():
        text = (
            None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else str(value)
        )
        out.append(text if text is not None and text.strip() else None)
    return out


def normalise(frame: pd.DataFrame, schema: Schema, spec: BuildSpec) -> Rows:
    """The frame's feature columns in serving form, and its labels."""
    columns: Columns = {}
    for feature in schema.features:
        column = spec.column(feature.name)
        if feature.kind == "number":
            columns[feature.name] = _number_column(frame[feature.name], column.data_unit, column.unit)
        elif feature.kind == "text":
            columns[feature.name] = _text_column(frame[feature.name])
        else:
            columns[feature.name] = _category_column(frame[feature.name], column.aliases)
    target = frame[schema.target]
    labels: npt.NDArray[Any]
    if schema.task == "classification":
        index = {label: i for i, label in enumerate(schema.classes)}
        labels = np.array([index[category_text(v)] for v in target.tolist()], dtype=np.int64)
    else:
        labels = target.to_numpy(dtype=np.float64)
    file_rows = np.asarray(frame.index, dtype=np.int64) + 1
    return Rows(columns, labels, file_rows)


_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{2,4})(?:[ T].*)?$")


def _day_first(column: str, series: pd.Series) -> bool:
    """Whether ``dd/mm/yyyy``-like dates are day first: decided by a field above 12; refused when no value decides."""
    text = series.dropna().astype(str)
    matched = text.str.extract(_NUMERIC_DATE)
    if text.empty or bool(matched[0].isna().any()):
        return False  # not all numeric d/m/y dates: ISO and named months parse unambiguously
    first, second = matched[0].astype(int), matched[1].astype(int)
    if bool((first > 12).any()):
        return True
    if bool((second > 12).any()):
        return False
    example = str(text.iloc[0]).strip()
    raise BuildError(
        f"time column {column!r}: dates like {example!r} could be day-first or month-first (no day above 12 tells); "
        "write them as ISO dates (YYYY-MM-DD)"
    )


def _time_key(frame: pd.DataFrame, column: str) -> npt.NDArray[np.float64]:
    series = frame[column]
    if pd.api.types.is_numeric_dtype(series):
        key = series.to_numpy(dtype=np.float64)
    else:
        day_first = pd.api.types.is_datetime64_any_dtype(series) is False and _day_first(column, series)
        # utc=True: offsets (+01:00) are converted, naive times are read as UTC, so a mix still orders
        parsed = pd.to_datetime(series, errors="coerce", format="mixed", utc=True, dayfirst=day_first)
        bad = parsed.isna()
        if bool(bad.any()):
            position = int(np.flatnonzero(bad.to_numpy())[0])
            row = int(frame.index[position]) + 1
            raise BuildError(f"time column {column!r} row {row}: {series.iloc[position]!r} is not a date or time")
        key = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
    return np.asarray(key, dtype=np.float64)


def _snapped(cut: int, key: npt.NDArray[np.float64], low: int, high: int, reach: float) -> int:
    """The boundary between two time values nearest to ``cut`` (ties: the earlier), strictly between ``low`` and
    ``high`` and at most ``reach`` rows away, so one time value (a model year, a day) does not sit on both sides of
    a split; ``cut`` itself when there is none (a period larger than the split is cut as asked)."""
    boundaries = np.flatnonzero(key[1:] != key[:-1]) + 1
    inside = boundaries[(boundaries > low) & (boundaries < high) & (np.abs(boundaries - cut) <= reach)]
    if inside.size == 0:
        return cut
    return int(inside[np.argmin(np.abs(inside - cut))])


def temporal_cuts(frame: pd.DataFrame, column: str, n_cal: int, n_test: int) -> tuple[npt.NDArray[np.int64], int, int]:
    """(row order in time, where calibration starts, where test starts): each cut moved to the nearest change of
    time value within half its split's size, as long as two rows or more are left to fit on."""
    key = _time_key(frame, column)
    order = np.argsort(key, kind="stable").astype(np.int64)
    ordered = key[order]
    n = order.size
    test_start = _snapped(n - n_test, ordered, 1, n, n_test / 2)
    cal_start = _snapped(test_start - n_cal, ordered, 1, test_start, n_cal / 2)
    if cal_start < 2:
        return order, n - n_test - n_cal, n - n_test
    return order, cal_start, test_start


def split(
    frame: pd.DataFrame,
    rows: Rows,
    schema: Schema,
    seed: int,
    shares: tuple[float, float] = (DEFAULT_CALIBRATION_SHARE, DEFAULT_TEST_SHARE),
    validation: bool = True,
) -> Splits:
    """Train / validation / calibration / test (``shares`` = the calibration and test shares of all rows): the last
    rows in time when there is a time column, else a seeded shuffle (stratified by class for a classifier) that
    first holds out calibration and test together, then halves them. ``validation=False`` (a fit without early
    stopping) trains on the validation rows too and leaves that split empty."""
    n = rows.rows
    n_test = max(1, round(n * shares[1]))
    n_cal = max(1, round(n * shares[0]))
    if schema.time_column is not None:
        order, cal_start, test_start = temporal_cuts(frame, schema.time_column, n_cal, n_test)
        fit, calibration, test = order[:cal_start], order[cal_start:test_start], order[test_start:]
        train, held = _newest_held(fit, validation)
        temporal = True
    else:
        from sklearn.model_selection import train_test_split

        index = np.arange(n)
        strat = rows.labels if schema.task == "classification" else None
        fit, rest = train_test_split(index, test_size=n_cal + n_test, random_state=seed, stratify=strat)
        strat_rest = rows.labels[rest] if strat is not None else None
        calibration, test = train_test_split(rest, test_size=n_test, random_state=seed + 1, stratify=strat_rest)
        if validation:
            strat_fit = rows.labels[fit] if strat is not None else None
            n_val = max(2, round(fit.size * VALIDATION_SHARE))
            train, held = train_test_split(fit, test_size=n_val, random_state=seed + 2, stratify=strat_fit)
        else:
            train, held = fit, index[:0]
        train, held, calibration, test = (np.sort(s) for s in (train, held, calibration, test))
        temporal = False
    return Splits(rows.take(train), rows.take(held), rows.take(calibration), rows.take(test), temporal)


def _newest_held(fit: npt.NDArray[np.int64], validation: bool) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, validation): the newest ``VALIDATION_SHARE`` of rows in time order (none without early stopping)."""
    n_val = max(1, round(fit.size * VALIDATION_SHARE)) if validation else 0
    return fit[: fit.size - n_val], fit[fit.size - n_val :]


def refit_splits(frame: pd.DataFrame, rows: Rows, schema: Schema, splits: Splits, validation: bool) -> list[Splits]:
    """For ``[split] refit``: the fits on the rows before the test period, and on every row (train and validation
    only; their calibration and test splits are empty). The cuts are ``split``'s, found the same way."""
    if schema.time_column is None:
        raise BuildError("[split] refit needs a time column (--time-column or [model] time_column)")
    order, _, test_start = temporal_cuts(frame, schema.time_column, splits.calibration.rows, splits.test.rows)
    none = rows.take([])
    out = []
    for fit in (order[:test_start], order):
        train, held = _newest_held(fit, validation)
        out.append(Splits(rows.take(train), rows.take(held), none, none, True))
    return out


def pattern_keys(width: int) -> list[str]:
    """Every pattern of ``width`` optional inputs, all given first: ``["11", "10", "01", "00"]``."""
    return [format(code, f"0{width}b") if width else "" for code in reversed(range(2**width))]


def masked(rows: Rows, pattern_inputs: Sequence[str], key: str) -> Rows:
    """The rows that can stand for pattern ``key``, with its absent inputs removed.

    A row lacking a value the pattern gives cannot represent such a request, so it is left out of that pattern
    (it still counts in the patterns without that input)."""
    needed = [name for name, flag in zip(pattern_inputs, key, strict=True) if flag == "1"]
    keep = [i for i in range(rows.rows) if all(rows.columns[name][i] is not None for name in needed)]
    subset = rows.take(keep)
    columns = dict(subset.columns)
    for name, flag in zip(pattern_inputs, key, strict=True):
        if flag == "0":
            columns[name] = [None] * subset.rows
    return Rows(columns, subset.labels, subset.file_rows)


def every_pattern(rows: Rows, pattern_inputs: Sequence[str]) -> Rows:
    """``rows`` once per pattern, each copy masked to it (``masked``): a model fitted on them has seen every
    absence for every row. 2^k copies, so for small tables and cheap fits (the linear estimator)."""
    if not pattern_inputs:
        return rows
    parts = [masked(rows, pattern_inputs, key) for key in pattern_keys(len(pattern_inputs))]
    columns = {name: [v for part in parts for v in part.columns[name]] for name in rows.columns}
    return Rows(
        columns,
        np.concatenate([part.labels for part in parts]),
        np.concatenate([part.file_rows for part in parts]),
    )


def sometimes_absent(rows: Rows, names: Sequence[str], share: float, seed: int) -> Rows:
    """``rows`` with each of ``names`` removed (None) at random in ``share`` of them (seeded), in place of a copy."""
    if not names or rows.rows == 0:
        return rows
    rng = np.random.default_rng(seed)
    columns = dict(rows.columns)
    for name in names:
        drop = rng.random(rows.rows) < share
        columns[name] = [None if gone else value for value, gone in zip(columns[name], drop.tolist(), strict=True)]
    return Rows(columns, rows.labels, rows.file_rows)


AUGMENT_COPY_MAX_ROWS = 20_000
"""Up to this many rows, augmentation appends a masked copy; beyond, it masks in place (the table is large enough
to spare the values, and the fit stays as fast as the table)."""


def augmented(rows: Rows, pattern_inputs: Sequence[str], seed: int) -> Rows:
    """Rows in which the pattern inputs are sometimes absent, so a model fitted on them has seen every absence it
    will be asked about: ``rows`` plus a copy with each pattern input absent with probability 1/2 (small tables),
    or ``rows`` with each pattern input absent with probability 1/4 (over ``AUGMENT_COPY_MAX_ROWS`` rows)."""
    if not pattern_inputs:
        return rows
    rng = np.random.default_rng(seed)
    in_place = rows.rows > AUGMENT_COPY_MAX_ROWS
    copy = {name: list(values) for name, values in rows.columns.items()}
    for name in pattern_inputs:
        drop = rng.random(rows.rows) < (0.25 if in_place else 0.5)
        column = copy[name]
        for i in np.flatnonzero(drop).tolist():
            column[i] = None
    if in_place:
        return Rows(copy, rows.labels, rows.file_rows)
    columns = {name: rows.columns[name] + copy[name] for name in rows.columns}
    return Rows(columns, np.concatenate([rows.labels, rows.labels]), np.concatenate([rows.file_rows, rows.file_rows]))
