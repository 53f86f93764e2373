"""The version folder: its name and version (never an existing one), the manifest's input schema and drift
reference, and sealing — built in a private folder in the models root and moved into place whole, so a running
server's hot reload never sees half a version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tabserve.artifacts import NAME_RE, VERSION_RE, list_versions, version_sort_key, write_manifest
from tabserve.errors import BuildError
from tabserve.features.text import normalise_key
from tabserve.features.units import FAMILIES
from tabserve.manifest import Manifest
from tabserve.training.build.infer import Feature, Schema
from tabserve.training.build.spec import BuildSpec
from tabserve.training.build.table import Rows
from tabserve.training.build.tokens import first_words
from tabserve.training.describe import category_shares, numeric_histogram, training_range

TEXT_MAX_LENGTH = 200
"""A text input's longest accepted value: this, or the training data's longest if longer."""
PLAUSIBLE_MARGIN = 1.0
"""The inferred hard range is the data's range widened by this many spans on each side (not below 0 for a
column that is never negative)."""


def choose_version(models: Path, name: str, version: str | None) -> str:
    """The version to write: the one given (refused if it exists) or the next minor after the newest."""
    if not NAME_RE.match(name):
        raise BuildError(f"model name {name!r} is not allowed: lower-case letters, digits, '_' or '-', a letter first")
    existing = list_versions(models, name)
    if version is None:
        if not existing:
            return "1.0.0"
        newest = existing[-1].split(".")
        major = newest[0] if newest[0].isdigit() else "1"
        minor = int(newest[1]) + 1 if len(newest) > 1 and newest[1].isdigit() else 1
        version = f"{major}.{minor}.0"
        while version in existing:
            minor += 1
            version = f"{major}.{minor}.0"
        return version
    if not VERSION_RE.match(version):
        raise BuildError(f"version {version!r} is not allowed (digits and dots, e.g. 1.2.0)")
    if (models / name / version).exists():
        raise BuildError(
            f"{models / name / version} already exists: versions are never overwritten; pass another --version"
            + (f" (newest is {sorted(existing, key=version_sort_key)[-1]})" if existing else "")
        )
    return version


@contextmanager
def staging(models: Path, name: str, version: str) -> Iterator[Path]:
    """A private folder to build in; moved to ``models/name/version`` when the block succeeds, removed if not.

    It sits in the models root (same file system: the move is one rename) as ``.tabserve-build-*``, holding the
    version's files directly, so the registry never takes it for a model (a model is a folder of version folders)."""
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tabserve-build-{name}-", dir=models))
    try:
        yield tmp
        final = models / name / version
        if final.exists():
            raise BuildError(f"{final} appeared while building: versions are never overwritten")
        final.parent.mkdir(parents=True, exist_ok=True)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private (0700): a server running as another user reads it
        if tmp.stat().st_dev == final.parent.stat().st_dev:
            tmp.replace(final)  # atomic: a hot reload sees the whole version or none of it
        else:
            shutil.move(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _plausible(
    values: np.ndarray[Any, np.dtype[np.float64]], low: float | None, high: float | None
) -> dict[str, float]:
    lo, hi = float(values.min()), float(values.max())
    span = (hi - lo) or max(abs(hi), 1.0)
    inferred_low = lo - PLAUSIBLE_MARGIN * span
    if lo >= 0:
        inferred_low = max(0.0, inferred_low)
    return {
        "min": low if low is not None else inferred_low,
        "max": high if high is not None else hi + PLAUSIBLE_MARGIN * span,
    }


def check_spec_ranges(rows: Rows, schema: Schema, spec: BuildSpec) -> None:
    """A spec range that excludes a value of the data is a contradiction: refused, naming the row."""
    for feature in schema.features:
        column = spec.column(feature.name)
        if feature.kind != "number" or (column.minimum is None and column.maximum is None):
            continue
        for i, value in enumerate(rows.columns[feature.name]):
            if value is None:
                continue
            if (column.minimum is not None and value < column.minimum) or (
                column.maximum is not None and value > column.maximum
            ):
                raise BuildError(
                    f"column {feature.name!r} row {int(rows.file_rows[i])} is {value:g}, outside the spec's range "
                    f"{column.minimum} to {column.maximum}"
                )


def _input(feature: Feature, rows: Rows, train: Rows, spec: BuildSpec, optional: set[str]) -> dict[str, Any]:
    column = spec.column(feature.name)
    required = feature.name not in optional
    description = column.description or f"{feature.name} (from the training data)"
    if feature.kind == "text":
        longest = max((len(v) for v in rows.columns[feature.name] if v is not None), default=0)
        return {
            "name": feature.name,
            "type": "text",
            "description": description,
            "required": required,
            "max_length": max(TEXT_MAX_LENGTH, longest),
        }
    if feature.kind == "category":
        known = set(feature.categories)
        pairs = ((normalise_key(a), normalise_key(c)) for a, c in column.aliases.items())
        aliases = {a: c for a, c in pairs if c in known and a and a not in known}
        return {
            "name": feature.name,
            "type": "category",
            "description": description,
            "required": required,
            "categories": sorted(feature.categories),
            "aliases": aliases,
        }
    all_values = np.array([v for v in rows.columns[feature.name] if v is not None], dtype=np.float64)
    unit = column.unit or ""
    family = FAMILIES.get(unit)
    seen = training_range([v for v in train.columns[feature.name] if v is not None])
    normal = {}
    if column.normal_ahead is not None:
        normal = {"in_distribution": {"min": seen["min"], "max": seen["max"] + column.normal_ahead}}
    return {
        "name": feature.name,
        "type": "number",
        "description": description,
        "required": required,
        "unit": unit,
        "units": list(family.units) if family else [unit],
        "integer": feature.integer,
        "plausible": _plausible(all_values, column.minimum, column.maximum),
        "training": seen,
        **normal,
    }


def input_specs(schema: Schema, rows: Rows, train: Rows, spec: BuildSpec, optional: set[str]) -> list[dict[str, Any]]:
    return [_input(f, rows, train, spec, optional) for f in schema.features]


def reference_histograms(schema: Schema, train: Rows) -> dict[str, Any]:
    """Drift reference from the training split: quantile-binned numbers, category shares, a text's first words."""
    out: dict[str, Any] = {}
    for feature in schema.features:
        values = train.columns[feature.name]
        if feature.kind == "number":
            present = [v for v in values if v is not None]
            if present:
                out[feature.name] = numeric_histogram(present)
        elif feature.kind == "text":  # not monitored for drift (thousands of values), shown on the card
            out[feature.name] = category_shares(first_words(values))
        else:
            out[feature.name] = category_shares(values)
    return out


def example_request(schema: Schema, test: Rows) -> dict[str, Any]:
    """A real row of the test split (the first with every input), as a client would send it."""
    names = [f.name for f in schema.features]
    chosen = next((i for i in range(test.rows) if all(test.columns[n][i] is not None for n in names)), 0)
    example: dict[str, Any] = {}
    for feature in schema.features:
        value = test.columns[feature.name][chosen]
        if value is None:
            continue
        if feature.kind == "number":
            example[feature.name] = int(value) if feature.integer else round(float(value), 6)
        else:
            example[feature.name] = feature.raw_spelling.get(value, value)
    return example


def seal(out: Path, manifest: dict[str, Any]) -> Manifest:
    """Hash every file in ``out`` and write the validated manifest."""
    return write_manifest(out, manifest)
