"""Input validation units: one-instance and batch paths agree; encoders agree."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from conftest import MODELS
from tabserve.artifacts import list_versions, verify_model_dir
from tabserve.errors import RequestValidationError
from tabserve.features.validation import InstanceValidator
from tabserve.manifest import Manifest
from tabserve.runtime import ColumnEncoder


def manifest_of(name: str) -> Any:
    return verify_model_dir(MODELS / name / "1.0.0").manifest


def mutate(example: dict[str, Any], rng: random.Random, manifest: Any) -> dict[str, Any]:
    row = dict(example)
    for spec in manifest.inputs:
        roll = rng.random()
        if spec.type == "number":
            low, high = spec.training.min, spec.training.max
            if roll < 0.6:
                row[spec.name] = (
                    round(rng.uniform(low, high), 2) if not spec.integer else rng.randint(int(low), int(high))
                )
            elif roll < 0.7:
                row[spec.name] = {"value": row.get(spec.name) or low, "unit": spec.unit}
            elif roll < 0.8 and not spec.required:
                row.pop(spec.name, None)
            elif roll < 0.85:
                row[spec.name] = spec.plausible.max * 1.0  # plausible, maybe outside training
        elif spec.type == "category":
            if roll < 0.5:
                row[spec.name] = rng.choice(spec.categories).lower()
            elif roll < 0.6:
                row[spec.name] = "NEVER SEEN " + str(rng.randint(0, 9))
            elif roll < 0.7 and not spec.required:
                row[spec.name] = None
    return row


@pytest.mark.parametrize("name", ["co2", "penguins"])
def test_batch_path_equals_one_instance_path(name: str) -> None:
    manifest = manifest_of(name)
    validator = InstanceValidator(manifest)
    encoder = ColumnEncoder(manifest.columns)
    rng = random.Random(7)
    rows = [mutate(manifest.example_request, rng, manifest) for _ in range(300)]
    batch = validator.many(rows)
    singles = [validator.one(r) for r in rows]
    assert batch.patterns == [s.pattern for s in singles]
    assert batch.out_of_distribution == [s.out_of_distribution for s in singles]
    assert [[w.as_dict() for w in ws] for ws in batch.warnings] == [[w.as_dict() for w in s.warnings] for s in singles]
    for i, single in enumerate(singles):
        assert batch.instance_values(i) == single.values
    by_columns = encoder.encode_columns(batch.columns, batch.rows)
    by_rows = np.vstack([encoder.encode_row(s.values) for s in singles])
    np.testing.assert_array_equal(by_columns, by_rows)


def test_unknown_category_counts_as_absent_for_the_conformal_pattern() -> None:
    manifest = manifest_of("penguins")
    validator = InstanceValidator(manifest)
    example = dict(manifest.example_request)
    known = validator.one({**example, "island": "Biscoe", "sex": "female"})
    unknown = validator.one({**example, "island": "Atlantis", "sex": "female"})
    absent = validator.one({**{k: v for k, v in example.items() if k != "island"}, "sex": "female"})
    assert known.pattern == "11"
    assert unknown.pattern == absent.pattern == "01"
    assert validator.many([{**example, "island": "Atlantis", "sex": "female"}]).patterns == ["01"]


def test_batch_errors_cap_at_one_hundred() -> None:
    manifest = manifest_of("penguins")
    validator = InstanceValidator(manifest)
    with pytest.raises(RequestValidationError) as info:
        validator.many([{"bill_length_mm": "x"}] * 500)
    assert len(info.value.errors) == 100


def test_manifests_round_trip_through_json() -> None:
    for name in ("co2", "penguins"):
        for version in list_versions(MODELS, name):
            raw = json.loads((MODELS / name / version / "manifest.json").read_text())
            # exclude_unset: an optional field a manifest predates (e.g. in_distribution) is not written back
            assert Manifest.model_validate(raw).model_dump(mode="json", exclude_unset=True) == raw
