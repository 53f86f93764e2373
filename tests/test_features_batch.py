"""The column-wise batch path (fast and slow columns, warm caches) agrees with the one-instance path, and a batch
that arrives as columns (``ColumnRows``, the Open Inference Protocol's tensors) validates as the rows it holds."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from conftest import MODELS
from tabserve.artifacts import verify_model_dir
from tabserve.errors import RequestValidationError
from tabserve.features.batch import MISSING, ColumnRows, uniform_columns
from tabserve.features.validation import Batch, Instance, InstanceValidator
from tabserve.runtime import ColumnEncoder


def manifest_of(name: str) -> Any:
    return verify_model_dir(MODELS / name / "1.0.0").manifest


def assert_same(batch: Batch, singles: list[Instance], encoder: ColumnEncoder) -> None:
    assert batch.rows == len(singles)
    assert batch.patterns == [s.pattern for s in singles]
    assert batch.out_of_distribution == [s.out_of_distribution for s in singles]
    assert batch.warnings == [s.warnings for s in singles]
    for i, single in enumerate(singles):
        values = batch.instance_values(i)
        assert values == single.values
        assert [type(v) for v in values.values()] == [type(v) for v in single.values.values()]
    by_rows = np.vstack([encoder.encode_row(s.values) for s in singles])
    np.testing.assert_array_equal(encoder.encode_columns(batch.columns, batch.rows), by_rows)
    fast = encoder.encode_columns(batch.columns, batch.rows, batch.arrays, batch.complete)
    np.testing.assert_array_equal(fast, by_rows)


def clean_rows(name: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Rows with every field present and valid (the fast path), some outside the training range, some with
    unseen categories, ints where floats are usual."""
    manifest = manifest_of(name)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = dict(manifest.example_request)
        for spec in manifest.inputs:
            if spec.type == "number":
                low, high = spec.training.min, spec.training.max
                if spec.integer:
                    row[spec.name] = rng.randint(int(low), int(min(high + 3, spec.plausible.max)))
                else:
                    top = min(high * 1.1, spec.plausible.max)
                    row[spec.name] = rng.choice([round(rng.uniform(low, top), 2), int(low) + 1])
            elif spec.type == "category":
                row[spec.name] = rng.choice([*spec.categories[:5], "Never Seen", "never  seen"]).lower()
        rows.append(row)
    return rows


@pytest.mark.parametrize("name", ["co2", "penguins"])
def test_clean_batches_take_the_fast_path_and_agree(name: str) -> None:
    manifest = manifest_of(name)
    validator = InstanceValidator(manifest)
    encoder = ColumnEncoder(manifest.columns)
    rows = clean_rows(name, 400, 3)
    first = validator.many(rows)  # cold caches: new spellings looked up value by value
    second = validator.many(rows)  # warm caches: C-level passes
    singles = [validator.one(r) for r in rows]
    assert first.complete == second.complete == frozenset(f.name for f in validator.fields)
    numeric = {s.name for s in manifest.inputs if s.type == "number"}
    assert set(second.arrays) == numeric
    assert any(single.warnings for single in singles)
    assert_same(first, singles, encoder)
    assert_same(second, singles, encoder)


def test_batch_with_gaps_wrong_shapes_and_unknown_fields_agrees() -> None:
    manifest = manifest_of("co2")
    validator = InstanceValidator(manifest, strict_fields=False)
    encoder = ColumnEncoder(manifest.columns)
    rows = clean_rows("co2", 200, 5)
    rng = random.Random(11)
    for row in rows:
        if rng.random() < 0.3:
            row.pop("fuel_consumption_comb_l_per_100km")
        if rng.random() < 0.2:
            row["fuel_consumption_city_l_per_100km"] = None
        if rng.random() < 0.1:
            row["colour"] = "red"
        if rng.random() < 0.1:
            row["engine_size_l"] = {"value": 2000, "unit": "cc"}
    batch = validator.many(rows)
    singles = [validator.one(r) for r in rows]
    assert any(w.code == "unknown_field" for s in singles for w in s.warnings)
    assert_same(batch, singles, encoder)
    assert_same(validator.many(rows), singles, encoder)


def test_category_cache_overflow_keeps_answers_right() -> None:
    manifest = manifest_of("co2")
    validator = InstanceValidator(manifest)
    encoder = ColumnEncoder(manifest.columns)
    example = manifest.example_request
    rows = [{**example, "make": f"Brand {i}" if i % 3 else "toyota"} for i in range(7000)]
    batch = validator.many(rows)
    singles = [validator.one(r) for r in rows]
    assert_same(batch, singles, encoder)


def test_column_rows_are_the_rows_they_hold() -> None:
    rows = ColumnRows({"a": [1, 2, 3], "b": ["x", "y", "z"]}, 3)
    assert len(rows) == 3
    assert rows[1] == {"a": 2, "b": "y"}
    assert rows[-1] == {"a": 3, "b": "z"}
    assert rows[1:] == [{"a": 2, "b": "y"}, {"a": 3, "b": "z"}]
    assert list(rows) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": "z"}]
    with pytest.raises(IndexError):
        rows[3]
    columns = uniform_columns(rows, ["b", "a", "c"])
    assert columns is not None
    assert list(columns) == ["b", "a", "c"]
    assert columns["a"] is rows.columns["a"]  # taken as they are: no row was built
    assert columns["c"] == [MISSING] * 3
    assert uniform_columns(rows, ["a"]) is None  # "b" is not an input: the row-by-row checks name it


def as_columns(rows: list[dict[str, Any]], names: list[str]) -> ColumnRows:
    return ColumnRows({name: [row.get(name) for row in rows] for name in names}, len(rows))


def same_batch(left: Batch, right: Batch) -> None:
    assert left.columns == right.columns
    assert left.patterns == right.patterns
    assert left.out_of_distribution == right.out_of_distribution
    assert left.warnings == right.warnings
    assert left.complete == right.complete


def test_columns_validate_as_the_rows_they_hold() -> None:
    validator = InstanceValidator(manifest_of("co2"))
    rows = clean_rows("co2", 300, 7)
    for i, row in enumerate(rows):
        if i % 4 == 0:
            row["fuel_consumption_comb_l_per_100km"] = None
    names = [f.name for f in validator.fields]
    batch = validator.many(as_columns(rows, names))
    same_batch(batch, validator.many(rows))
    assert any(batch.warnings)
    assert len(set(batch.patterns)) == 2


def test_an_optional_input_left_out_validates_as_absent_in_every_row() -> None:
    validator = InstanceValidator(manifest_of("co2"))
    optional = [f.name for f in validator.fields if not f.required]
    rows = [{k: v for k, v in row.items() if k not in optional} for row in clean_rows("co2", 50, 8)]
    required = [f.name for f in validator.fields if f.required]
    batch = validator.many(as_columns(rows, required))
    same_batch(batch, validator.many(rows))
    assert all(batch.columns[name] == [None] * 50 for name in optional)
    assert set(batch.patterns) == {"000"}


def test_a_required_input_left_out_is_an_error_per_row_as_for_rows() -> None:
    validator = InstanceValidator(manifest_of("co2"))
    rows = [{k: v for k, v in row.items() if k != "make"} for row in clean_rows("co2", 5, 9)]
    names = [f.name for f in validator.fields if f.name != "make"]
    with pytest.raises(RequestValidationError) as from_columns:
        validator.many(as_columns(rows, names))
    with pytest.raises(RequestValidationError) as from_rows:
        validator.many(rows)
    assert [e.as_dict() for e in from_columns.value.errors] == [e.as_dict() for e in from_rows.value.errors]
    assert [e.field for e in from_columns.value.errors] == [f"body.instances.{i}.make" for i in range(5)]


def test_an_unknown_column_is_named_as_for_rows() -> None:
    validator = InstanceValidator(manifest_of("co2"))
    rows = [{**row, "colour": "red"} for row in clean_rows("co2", 3, 10)]
    names = [*(f.name for f in validator.fields), "colour"]
    with pytest.raises(RequestValidationError) as from_columns:
        validator.many(as_columns(rows, names))
    with pytest.raises(RequestValidationError) as from_rows:
        validator.many(rows)
    assert [e.as_dict() for e in from_columns.value.errors] == [e.as_dict() for e in from_rows.value.errors]
    assert {e.code for e in from_columns.value.errors} == {"unknown_field"}
