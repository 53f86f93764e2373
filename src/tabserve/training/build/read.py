"""Reading the table to build from: CSV or Parquet into a pandas frame, refusing empty or unreadable files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tabserve.errors import BuildError

NA_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?"]
"""Cells read as missing in a CSV (``?`` is the UCI convention)."""


def read_table(path: Path) -> pd.DataFrame:
    """The file's rows with their columns; CSV unless the suffix says Parquet. BuildError when it cannot be used."""
    if not path.is_file():
        raise BuildError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise BuildError(f"{path}: the file is empty (no header, no rows)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path, na_values=NA_VALUES, keep_default_na=False, low_memory=False, skipinitialspace=True
            )
    except pd.errors.EmptyDataError as exc:
        raise BuildError(f"{path}: the file is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise BuildError(f"{path}: cannot be read as {kind}: {exc}") from exc
    if frame.shape[1] == 0:
        raise BuildError(f"{path}: the file has no columns")
    if len(frame) == 0:
        raise BuildError(f"{path}: the file has a header ({', '.join(map(str, frame.columns[:8]))}) but no data rows")
    duplicated = [str(c) for c in frame.columns[frame.columns.duplicated()]]
    if duplicated:
        raise BuildError(f"{path}: duplicated column names {duplicated}")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame
