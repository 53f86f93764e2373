"""Reading the table to build from: CSV or Parquet files into one pandas frame, refusing empty or unreadable files
and files whose columns do not match."""

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
    names = pd.Index([str(c).strip() for c in frame.columns])
    duplicated = sorted({str(c) for c in names[names.duplicated()]})
    if duplicated:
        raise BuildError(f"{path}: duplicated column names {duplicated} (after trimming spaces around names)")
    frame = frame.reset_index(drop=True)
    frame.columns = names
    for column in frame.columns:  # Parquet categoricals: their unused categories are not values of the data
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(object)
    return frame


def read_tables(paths: list[Path]) -> tuple[pd.DataFrame, list[int]]:
    """The files' rows one after the other (rows are numbered through the files in order), and each file's row
    count. Every file must have the first file's columns (in any order): e.g. the training data and an exported
    prediction log with feedback."""
    frames = [read_table(path) for path in paths]
    first = frames[0]
    for path, frame in zip(paths[1:], frames[1:], strict=True):
        missing = [c for c in first.columns if c not in frame.columns]
        extra = [c for c in frame.columns if c not in first.columns]
        if missing or extra:
            raise BuildError(
                f"{path}: its columns differ from {paths[0].name}'s"
                + (f"; lacks {missing[:8]}" if missing else "")
                + (f"; has others {extra[:8]}" if extra else "")
            )
    counts = [len(frame) for frame in frames]
    if len(frames) == 1:
        return first, counts
    return pd.concat([f[list(first.columns)] for f in frames], ignore_index=True), counts
