"""What a table says about itself: the task, each column's kind, identifiers, leaks, gaps — and every refusal.

``infer_schema`` runs before any model is fitted: a target that is missing or constant, too few rows to
calibrate, a feature equal to the target, a column mixing numbers and text, a class too rare to split are
BuildErrors naming the column (and row); a column unique per row is warned about and dropped as an identifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tabserve.errors import BuildError
from tabserve.features.text import normalise_key
from tabserve.score.columns import is_output_name
from tabserve.training.build.spec import DEFAULT_CALIBRATION_SHARE, BuildSpec
from tabserve.training.build.spelling import decorated_number, warn_merged_spellings

MIN_CALIBRATION_ROWS = 30
"""Per conformal pattern: the 0.9 level needs 9 scores to be finite, 0.95 needs 19, 0.99 needs 99; below 30 a
quantile is too noisy to publish."""
MIN_ROWS = math.ceil(MIN_CALIBRATION_ROWS / DEFAULT_CALIBRATION_SHARE)
"""With the default calibration share; a spec's ``[split] calibration`` changes it (``min_rows``)."""


def min_rows(calibration_share: float) -> int:
    """Rows with a target needed for ``MIN_CALIBRATION_ROWS`` calibration rows."""
    return math.ceil(MIN_CALIBRATION_ROWS / calibration_share - 1e-9)


MIN_CLASS_ROWS = 10
MAX_CLASSES = 100
MAX_CATEGORIES = 1000
MAX_PATTERN_INPUTS = 3
CLASSIFICATION_MAX_INTEGER_LEVELS = 10
"""An integer target with at most this many distinct values is taken as classes (override with --task)."""
IDENTIFIER_MIN_ROWS = 20


@dataclass(slots=True)
class Feature:
    name: str
    kind: str
    """``number``, ``category`` or ``text`` (free text, read for its words: spec ``type = "text"``)."""
    missing: int
    integer: bool = False
    categories: list[str] = field(default_factory=list)
    """Normalised spellings, most frequent first."""
    counts: dict[str, int] = field(default_factory=dict)
    raw_spelling: dict[str, str] = field(default_factory=dict)
    """Normalised category -> the spelling most rows of the file use (what a fitted pipeline saw)."""


@dataclass(slots=True)
class Schema:
    task: str
    target: str
    classes: list[str]
    features: list[Feature]
    pattern_inputs: list[str]
    optional: list[str]
    dropped: dict[str, str]
    warnings: list[str]
    rows: int
    """Rows with a target value (the ones used)."""
    target_missing: int
    time_column: str | None

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)


def category_text(value: Any) -> str:
    """A cell as category text: ``1.0`` -> ``"1"``, ``True`` -> ``"TRUE"``."""
    if isinstance(value, bool | np.bool_):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _is_text(series: pd.Series) -> bool:
    """Object or string dtype (pandas 3 reads text columns as ``str``)."""
    return bool(pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series))


def _file_row(frame: pd.DataFrame, position: int) -> int:
    """The 1-based row of the file (header not counted) of the frame's ``position``-th row."""
    return int(frame.index[position]) + 1


def _numeric_or_mixed(name: str, series: pd.Series) -> pd.Series | None:
    """A text column's numbers when every value is one; None when it is text; BuildError when it mixes both."""
    present = series.dropna()
    if present.empty:
        return None
    kinds = {type(v) for v in present}
    parsed = pd.to_numeric(present.astype(str).str.strip(), errors="coerce")
    numbers = int(parsed.notna().sum())
    typed_mix = any(issubclass(k, int | float | np.number) and not issubclass(k, bool) for k in kinds) and str in kinds
    if numbers == len(present) and not typed_mix:
        return pd.to_numeric(series.astype("string").str.strip(), errors="coerce").astype("float64")
    if typed_mix or (numbers * 2 >= len(present) and numbers < len(present)):
        bad = parsed[parsed.isna()].index[0] if numbers * 2 >= len(present) else parsed[parsed.notna()].index[0]
        raise BuildError(
            f"column {name!r} mixes numbers and text: row {int(bad) + 1} has {series.loc[bad]!r} while "
            f"{numbers} of its {len(present)} values are numbers; clean the column or declare its type in the spec"
        )
    return None


def _task(spec_task: str | None, target: pd.Series, name: str) -> str:
    if spec_task is not None:
        return spec_task
    if pd.api.types.is_bool_dtype(target) or not pd.api.types.is_numeric_dtype(target):
        return "classification"
    values = target.to_numpy(dtype=np.float64)
    if np.all(np.equal(np.mod(values, 1), 0)) and len(np.unique(values)) <= CLASSIFICATION_MAX_INTEGER_LEVELS:
        return "classification"
    del name
    return "regression"


def _target(frame: pd.DataFrame, name: str, task: str | None) -> tuple[pd.DataFrame, str, list[str], int]:
    if name not in frame.columns:
        raise BuildError(f"target column {name!r} is not in the file; its columns: {', '.join(frame.columns[:30])}")
    present = frame[name].notna()
    missing = int((~present).sum())
    if missing == len(frame):
        raise BuildError(f"target column {name!r} has no values (all {len(frame)} rows are empty)")
    frame = frame.loc[present]
    target = frame[name]
    if target.nunique() < 2:
        raise BuildError(f"target column {name!r} is constant ({category_text(target.iloc[0])!r} in every row)")
    if _is_text(target):
        numeric = _numeric_or_mixed(name, target)
        if numeric is not None:
            frame = frame.assign(**{name: numeric})
            target = frame[name]
    chosen = _task(task, target, name)
    classes: list[str] = []
    if chosen == "regression":
        if pd.api.types.is_bool_dtype(target):
            raise BuildError(
                f"target column {name!r} is boolean (true/false); regression needs numbers, "
                "or use --task classification"
            )
        if not pd.api.types.is_numeric_dtype(target):
            first = next((i for i, v in enumerate(target) if isinstance(v, bool) or not isinstance(v, int | float)), 0)
            raise BuildError(
                f"target column {name!r} is not numeric (row {_file_row(frame, first)} has {target.iloc[first]!r}); "
                "regression needs numbers, or use --task classification"
            )
        if not np.isfinite(target.to_numpy(dtype=np.float64)).all():
            raise BuildError(f"target column {name!r} holds an infinite value")
    else:
        labels = target.map(category_text)
        counts = labels.value_counts()
        if len(counts) > MAX_CLASSES:
            raise BuildError(
                f"target column {name!r} has {len(counts)} distinct values: too many classes (at most {MAX_CLASSES}); "
                "use --task regression for a number"
            )
        rare = counts[counts < MIN_CLASS_ROWS]
        if len(rare):
            raise BuildError(
                f"target column {name!r}: class {rare.index[0]!r} has {int(rare.iloc[0])} rows; every class needs at "
                f"least {MIN_CLASS_ROWS} (to appear in training, calibration and test)"
            )
        classes = sorted(counts.index, key=_class_order)
    return frame, chosen, classes, missing


def _class_order(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _is_row_counter(values: npt.NDArray[np.float64]) -> bool:
    diffs = np.diff(values)
    return bool(diffs.size) and (bool(np.all(diffs > 0)) or bool(np.all(diffs < 0)))


def _leak(feature: pd.Series, target: pd.Series, task: str) -> bool:
    both = feature.notna()
    if int(both.sum()) < max(10, len(feature) // 2):
        return False
    f, t = feature[both], target[both]
    if pd.api.types.is_numeric_dtype(f) and pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(f):
        return bool(np.allclose(f.to_numpy(np.float64), t.to_numpy(np.float64), rtol=1e-9, atol=1e-12))
    if task != "classification":
        return False
    ft = f.map(category_text).map(normalise_key)  # the feature as the model sees it, the classes as they are
    tt = t.map(category_text)
    pairs = pd.DataFrame({"f": ft, "t": tt}).drop_duplicates()
    return bool(pairs["f"].is_unique and pairs["t"].is_unique)


def _feature(
    frame: pd.DataFrame, name: str, spec: BuildSpec, warnings: list[str], dropped: dict[str, str]
) -> Feature | None:
    series = frame[name]
    missing = int(series.isna().sum())
    rows = len(series)
    if missing == rows:
        dropped[name] = "no values"
        warnings.append(f"column {name!r} has no values: dropped")
        return None
    forced = spec.column(name).kind
    if forced == "text":
        blank = int(series.dropna().map(lambda v: not str(v).strip()).sum())
        return Feature(name, "text", missing + blank)
    if forced is None and _is_text(series):
        numeric = _numeric_or_mixed(name, series)
        if numeric is not None:
            series = numeric
            frame[name] = numeric
        elif (example := decorated_number(series)) is not None:
            warnings.append(
                f"column {name!r} holds numbers written with symbols or separators (e.g. {example!r}): it is read as "
                "text; write plain numbers in the data to use it as a number"
            )
    is_number = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if forced == "number" and not is_number:
        numeric = pd.to_numeric(series, errors="coerce")
        bad = numeric.isna() & series.notna()
        if bool(bad.any()):
            position = int(np.flatnonzero(bad.to_numpy())[0])
            row, value = _file_row(frame, position), series.iloc[position]
            raise BuildError(f"column {name!r} is declared a number but row {row} has {value!r}")
        series, is_number = numeric.astype("float64"), True
        frame[name] = series
    if is_number and forced != "category":
        values = series.dropna().to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            position = int(np.flatnonzero(~np.isfinite(series.to_numpy(dtype=np.float64)) & series.notna())[0])
            raise BuildError(f"column {name!r} row {_file_row(frame, position)} holds an infinite value")
        integer = bool(np.all(np.equal(np.mod(values, 1), 0)))
        if integer and missing == 0 and rows >= IDENTIFIER_MIN_ROWS and _is_row_counter(values):
            dropped[name] = "identifier (a row counter: unique and ordered)"
            warnings.append(
                f"column {name!r} is unique per row and ordered like a row counter: dropped as an identifier"
            )
            return None
        return Feature(name, "number", missing, integer=integer and pd.api.types.is_integer_dtype(series))
    text = series.dropna().map(category_text)
    keys = text.map(normalise_key)
    warn_merged_spellings(name, text, keys, warnings)
    aliases = {normalise_key(k): normalise_key(v) for k, v in spec.column(name).aliases.items()}
    keys = keys.map(lambda k: aliases.get(k, k))
    keys = keys[keys != ""]
    counts = keys.value_counts()
    if len(counts) == len(keys) and len(keys) == rows and rows >= IDENTIFIER_MIN_ROWS:
        dropped[name] = "identifier (unique per row)"
        warnings.append(f"column {name!r} is unique per row: dropped as an identifier")
        return None
    if len(counts) > MAX_CATEGORIES:
        dropped[name] = f"{len(counts)} distinct values (more than {MAX_CATEGORIES} categories)"
        warnings.append(f"column {name!r} has {len(counts)} distinct values, too many for a category: dropped")
        return None
    spelling = (
        pd.DataFrame({"key": keys, "raw": text[keys.index]}).groupby("key")["raw"].agg(lambda s: s.mode().iloc[0])
    )
    return Feature(
        name,
        "category",
        missing + int((text.map(normalise_key) == "").sum()),
        categories=[str(k) for k in counts.index],
        counts={str(k): int(v) for k, v in counts.items()},
        raw_spelling={str(k): str(v) for k, v in spelling.items()},
    )


def infer_schema(
    frame: pd.DataFrame, target: str, spec: BuildSpec, task: str | None, time_column: str | None
) -> tuple[Schema, pd.DataFrame]:
    """The schema of ``frame`` and its rows with a target (text columns of numbers parsed), or the first BuildError
    in it: nothing is fitted before this returns."""
    unknown = sorted(set(spec.drop) - set(frame.columns))
    if unknown:
        raise BuildError(f"spec drops columns the file does not have: {unknown}")
    time_column = time_column or spec.time_column
    if time_column is not None and time_column not in frame.columns:
        raise BuildError(
            f"time column {time_column!r} is not in the file; its columns: {', '.join(frame.columns[:30])}"
        )
    if time_column == target:
        raise BuildError(f"time column {time_column!r} is the target")
    unknown_required = sorted(set(spec.required) - set(frame.columns))
    if unknown_required:
        raise BuildError(f"spec requires columns the file does not have: {unknown_required}")
    frame, chosen, classes, target_missing = _target(frame, target, task or spec.task)
    warnings: list[str] = []
    if target_missing:
        warnings.append(f"{target_missing} rows without a target value were left out")
    if spec.required:
        complete = frame[list(spec.required)].notna().all(axis=1)
        if not bool(complete.all()):
            warnings.append(
                f"{int((~complete).sum())} rows without a required input ({', '.join(spec.required)}) were left out"
            )
            frame = frame.loc[complete]
    frame = frame.copy()
    needed = min_rows(spec.calibration_share)
    if len(frame) < needed:
        raise BuildError(
            f"too few rows to calibrate: {len(frame)} rows with a target; at least {needed} are needed "
            f"({MIN_CALIBRATION_ROWS} for the calibration split, which is {spec.calibration_share:.0%} of the rows)"
        )
    if time_column is not None:
        bad = frame[time_column].isna()
        if bool(bad.any()):
            position = int(np.flatnonzero(bad.to_numpy())[0])
            raise BuildError(f"time column {time_column!r} is empty in row {_file_row(frame, position)}")
    dropped: dict[str, str] = dict.fromkeys(spec.drop, "dropped by the spec")
    features: list[Feature] = []
    for name in frame.columns:
        if name == target or name in spec.drop or (name == time_column and not spec.time_input):
            continue
        feature = _feature(frame, name, spec, warnings, dropped)
        if feature is None:
            continue
        if _leak(frame[name], frame[target], chosen):
            raise BuildError(
                f"column {name!r} equals the target {target!r} (or determines it one to one): a leak, refused; "
                "drop it (spec [model] drop) if that is expected"
            )
        features.append(feature)
    named_like_outputs = [f.name for f in features if is_output_name(f.name)]
    if named_like_outputs:
        raise BuildError(
            f"input column(s) {named_like_outputs} are named like a column tabserve score adds to a scored file "
            "(prediction, warnings, probability_…); rename them in the data"
        )
    if not features:
        raise BuildError(f"no usable input columns besides the target {target!r} (dropped: {dropped})")
    unknown_optional = sorted(set(spec.optional) - {f.name for f in features})
    if unknown_optional:
        raise BuildError(f"spec marks as optional columns that are not inputs: {unknown_optional}")
    both = sorted(set(spec.optional) & set(spec.required))
    if both:
        raise BuildError(f"spec marks columns both optional and required: {both}")
    optional = [f for f in features if (f.missing or f.name in spec.optional) and f.name not in spec.required]
    listed = {name: i for i, name in enumerate(spec.optional)}
    optional.sort(key=lambda f: (listed.get(f.name, len(listed)), -f.missing, f.name))  # the spec's first, in order
    patterns: list[str] = []
    for f in optional:
        present = len(frame) - f.missing
        if len(patterns) < MAX_PATTERN_INPUTS and present * spec.calibration_share >= MIN_CALIBRATION_ROWS:
            patterns.append(f.name)
        else:
            warnings.append(
                f"column {f.name!r} may be missing but is not a conformal pattern input (at most {MAX_PATTERN_INPUTS}, "
                f"each present in at least {needed} rows): its absence does not widen intervals"
            )
    schema = Schema(
        task=chosen,
        target=target,
        classes=classes,
        features=features,
        pattern_inputs=patterns,
        optional=[f.name for f in optional],
        dropped=dropped,
        warnings=warnings,
        rows=len(frame),
        target_missing=target_missing,
        time_column=time_column,
    )
    return schema, frame
