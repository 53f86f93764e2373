"""Describing training data for the manifest: ranges, reference histograms, data files, library versions."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.artifacts import sha256_file

REFERENCE_BINS = 10
LIBRARIES = (
    "numpy",
    "pandas",
    "scikit-learn",
    "lightgbm",
    "onnx",
    "onnxruntime",
    "skl2onnx",
    "onnxmltools",
    "palmerpenguins",
)


def training_range(values: npt.ArrayLike) -> dict[str, float]:
    """min/max/q01/q99/mean/std of the non-missing values, as the manifest's ``training`` block."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError("no finite values to describe")
    return {
        "min": float(arr.min()),
        "max": float(arr.max()),
        "q01": float(np.quantile(arr, 0.01)),
        "q99": float(np.quantile(arr, 0.99)),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
    }


def numeric_histogram(values: npt.ArrayLike, bins: int = REFERENCE_BINS) -> dict[str, Any]:
    """Reference histogram for drift: quantile edges (so each bin holds ~1/bins of training) + counts.

    The outer edges are -inf/+inf so that every future value falls in a bin.
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    inner = np.unique(np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    counts, _ = np.histogram(arr, bins=edges)
    return {
        "kind": "numeric",
        "edges": [float(e) if np.isfinite(e) else (1e308 if e > 0 else -1e308) for e in edges],
        "counts": [int(c) for c in counts],
    }


def category_shares(values: Iterable[str | None]) -> dict[str, Any]:
    """Reference shares of each category (missing counted as ``"(missing)"``)."""
    counts: dict[str, int] = {}
    total = 0
    for value in values:
        key = "(missing)" if value is None else str(value)
        counts[key] = counts.get(key, 0) + 1
        total += 1
    return {"kind": "category", "shares": {k: v / total for k, v in sorted(counts.items())}}


def data_file_entry(path: Path, rows: int) -> dict[str, Any]:
    return {"path": path.name, "sha256": sha256_file(path), "rows": rows}


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
