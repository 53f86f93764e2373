"""The columnar path shared by the HTTP batch and the file scorer: columns given as float64 arrays and as coded
text (distinct values + codes, as ``tabserve score`` reads them) validate and encode exactly as the same values
given as lists (as a JSON request carries them): same values, warnings, flags, patterns and matrix bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tabserve.features.batch import CodedColumn, ColumnRows, listed
from tabserve.registry import ModelRegistry
from tabserve.score.convert import coded, numbers

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    reg = ModelRegistry(MODELS, {"co2": None, "penguins": None}, {}, strict_fields=True, warmup=False)
    reg.load_all()
    return reg


def _rows(registry: ModelRegistry, model: str) -> list[dict[str, Any]]:
    example = dict(registry.get(model).manifest.example_request)
    if model == "co2":
        variants = [
            {**example, "model_year": 2031},
            {**example, "make": "Zastava", "model": "Yugo GV"},
            {**example, "transmission": "M6", "vehicle_class": "Compact"},
        ]
    else:
        variants = [{**example, "island": "Atlantis"}, {**example, "bill_length_mm": 80.0}, {**example, "sex": "male"}]
    return [variants[i % 3] if i % 4 else example for i in range(40)]


def _as_file_columns(rows: list[dict[str, Any]], numeric: set[str]) -> dict[str, Any]:
    """The columns as the file scorer hands them over (``score.convert``), from an Arrow table of the rows."""
    table = pa.Table.from_pylist(rows)
    out: dict[str, Any] = {}
    for name in table.column_names:
        column = numbers(table.column(name)) if name in numeric else coded(table.column(name))
        assert column is not None
        out[name] = column
    return out


@pytest.mark.parametrize("model", ["co2", "penguins"])
@pytest.mark.parametrize("specs_only", [False, True])
def test_arrays_and_coded_columns_validate_and_encode_as_lists(
    registry: ModelRegistry, model: str, specs_only: bool
) -> None:
    served = registry.get(model)
    rows = _rows(registry, model)
    if specs_only:  # an optional input left out of every row: its column is absent from the file
        optional = [f.name for f in served.validator.fields if not f.required][:3]
        rows = [{k: v for k, v in row.items() if k not in optional} for row in rows]
    numeric = {f.name for f in served.validator.fields if f.kind == "number"}
    as_lists = {name: [row[name] for row in rows] for name in rows[0]}
    as_file = _as_file_columns(rows, numeric)
    assert all(isinstance(c, np.ndarray if n in numeric else CodedColumn) for n, c in as_file.items())
    expected = served.validator.many(ColumnRows(as_lists, len(rows)))
    got = served.validator.many(ColumnRows(as_file, len(rows)))
    assert {k: listed(v) for k, v in got.columns.items()} == {k: listed(v) for k, v in expected.columns.items()}
    assert got.row_warnings == expected.row_warnings
    assert got.out_of_distribution == expected.out_of_distribution
    assert got.patterns == expected.patterns
    assert got.complete == expected.complete
    encoder = served.runtime.encoder
    matrix = encoder.encode_columns(got.columns, got.rows, got.arrays, got.complete)
    reference = encoder.encode_columns(expected.columns, expected.rows, expected.arrays, expected.complete)
    assert matrix.tobytes() == reference.tobytes()
    assert matrix.tobytes() == np.vstack([encoder.encode_row(expected.instance_values(i)) for i in range(40)]).tobytes()


def test_coded_column_reads_like_its_list() -> None:
    column = CodedColumn(["B", None, "A"], np.array([2, 0, 0, 1, 2], dtype=np.intp))
    assert column.tolist() == ["A", "B", "B", None, "A"] == list(column) == listed(column)
    assert len(column) == 5 and column[3] is None and column[4] == "A"


def test_coded_text_keeps_empty_and_null_cells_absent() -> None:
    column = coded(pa.array(["x", "", None, "x"]))
    assert column is not None and column.tolist() == ["x", None, None, "x"]
    assert coded(pa.array([1, 2])) is None
