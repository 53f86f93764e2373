"""The column-wise batch path (fast and slow columns, warm caches) agrees with the one-instance path."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from conftest import MODELS
from tabserve.artifacts import verify_model_dir
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
