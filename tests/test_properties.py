"""Property tests (Hypothesis) of unit conversion, spelling normalisation and field validation.

They replace hand-rolled random loops where those overlapped: instead of a few seeded mutations, Hypothesis
searches the whole input space (NaN, infinities, huge and tiny floats, odd unicode) and shrinks any failure to
a minimal example. The promise checked everywhere: a value is either accepted and normalised to a finite
canonical number / a known category, or refused with a ``RequestValidationError`` naming that field; never any
other exception.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import MODELS
from tabserve.api.openapi_inputs import CATEGORY_PATTERN
from tabserve.artifacts import verify_model_dir
from tabserve.errors import RequestValidationError
from tabserve.features.text import normalise_key, served_key
from tabserve.features.units import FAMILIES, FUEL_CONSUMPTION, UnitFamily
from tabserve.features.validation import InstanceValidator
from tabserve.manifest import Manifest

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAMILY_LIST = list(FAMILIES.values())
positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
any_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-320, 1e308, -1e308])
odd_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=40
) | st.sampled_from(["", " ", "\u200b", "ｓｕｖ", "SUV\x00Small", "é" * 200, "🚗", "\u202eLLIKS"])


def manifest_of(name: str) -> Manifest:
    return verify_model_dir(MODELS / name / "1.0.0").manifest


def respell(name: str, data: st.DataObject) -> str:
    """The same unit name with random case and spaces, which lookup must ignore."""
    chars = [c.upper() if data.draw(st.booleans()) else c.lower() for c in name.replace(" ", "")]
    return "".join(c + (" " if data.draw(st.booleans()) else "") for c in chars)


@PROPERTY_SETTINGS
@given(family=st.sampled_from(FAMILY_LIST), data=st.data())
def test_unit_lookup_ignores_case_and_spaces(family: UnitFamily, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(family.units)))
    assert family.lookup(respell(name, data)) == name


@PROPERTY_SETTINGS
@given(family=st.sampled_from(FAMILY_LIST), data=st.data(), a=positive, b=positive)
def test_conversions_keep_order_and_scale_linearly(family: UnitFamily, data: st.DataObject, a: float, b: float) -> None:
    name = data.draw(st.sampled_from(sorted(family.units)))
    convert = family.units[name]
    low, high = sorted((a, b))
    if name in family.inverse:  # consumption from distance per volume: more mpg is less L/100 km
        assert convert(low) >= convert(high) > 0.0
    else:
        assert 0.0 < convert(low) <= convert(high)
        assert math.isclose(convert(a + b), convert(a) + convert(b), rel_tol=1e-12)
    assert math.isfinite(convert(a))


@PROPERTY_SETTINGS
@given(name=st.sampled_from(sorted(FUEL_CONSUMPTION.inverse)), value=positive)
def test_inverse_fuel_units_round_trip(name: str, value: float) -> None:
    """mpg -> L/100 km is k / x, so applying it twice gives the value back (the same holds for km/L)."""
    convert = FUEL_CONSUMPTION.units[name]
    assert math.isclose(convert(convert(value)), value, rel_tol=1e-12)


@PROPERTY_SETTINGS
@given(text=odd_text)
def test_normalise_key_is_idempotent_and_case_free(text: str) -> None:
    key = normalise_key(text)
    assert normalise_key(key) == key
    assert normalise_key(text.lower()) == normalise_key(text.upper()) or text.lower().upper() != text.upper()
    assert key == key.strip()
    assert "  " not in key


@PROPERTY_SETTINGS
@given(text=odd_text)
def test_a_category_is_blank_exactly_when_the_openapi_pattern_says_so_in_either_dialect(text: str) -> None:
    """ECMA-262 reads ``\\W`` over ASCII only (schemathesis too: ``re.ASCII``), Python over every script: the
    pattern means the same in both, and the validator refuses a value as blank exactly when it does not match."""
    ecma = re.search(CATEGORY_PATTERN, text, re.ASCII) is not None
    assert ecma == (re.search(CATEGORY_PATTERN, text) is not None)
    assert ecma == bool(served_key(text))


def names_only(error: RequestValidationError, name: str) -> bool:
    """Every error names the field (or a part of it, e.g. ``body.engine_size_l.unit``)."""
    return all(e.field == f"body.{name}" or e.field.startswith(f"body.{name}.") for e in error.errors)


def validate(validator: InstanceValidator, row: dict[str, Any]) -> tuple[Any, RequestValidationError | None]:
    try:
        return validator.one(row), None
    except RequestValidationError as error:
        return None, error


def check_one(validator: InstanceValidator, row: dict[str, Any], name: str) -> Any:
    """Validate and return the normalised value of ``name``, or None when refused naming that field only."""
    instance, error = validate(validator, row)
    if error is not None:
        assert names_only(error, name), error.errors
        return None
    return instance.values[name]


@pytest.mark.parametrize("model", ["co2", "penguins"])
@PROPERTY_SETTINGS
@given(data=st.data(), value=any_float)
def test_any_float_in_a_numeric_field_is_normalised_or_refused_by_name(
    model: str, data: st.DataObject, value: float
) -> None:
    manifest = manifest_of(model)
    validator = InstanceValidator(manifest)
    spec = data.draw(st.sampled_from([s for s in manifest.inputs if s.type == "number"]))
    row = dict(manifest.example_request)
    unit = data.draw(st.none() | st.sampled_from(list(spec.units or [])) | odd_text)
    row[spec.name] = value if unit is None else {"value": value, "unit": unit}
    normalised = check_one(validator, row, spec.name)
    if normalised is not None:
        assert math.isfinite(normalised)
        assert spec.plausible.min <= normalised <= spec.plausible.max
        if spec.integer:
            assert float(normalised).is_integer()


@pytest.mark.parametrize("model", ["co2", "penguins"])
@PROPERTY_SETTINGS
@given(data=st.data(), text=odd_text)
def test_any_text_in_a_category_field_is_known_warned_or_refused_by_name(
    model: str, data: st.DataObject, text: str
) -> None:
    manifest = manifest_of(model)
    validator = InstanceValidator(manifest)
    spec = data.draw(st.sampled_from([s for s in manifest.inputs if s.type == "category"]))
    row = dict(manifest.example_request)
    row[spec.name] = text
    instance, error = validate(validator, row)
    if error is not None:
        assert names_only(error, spec.name), error.errors
        return
    value = instance.values[spec.name]
    unknown = [w for w in instance.warnings if w.field == spec.name and w.code == "unknown_category"]
    assert value is None or value in spec.categories or unknown, (text, value)


@pytest.mark.parametrize("model", ["co2", "penguins"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_batch_path_equals_one_instance_path_for_any_rows(model: str, data: st.DataObject) -> None:
    """The columnar batch path and the single-instance path agree on every generated row, refused rows included."""
    manifest = manifest_of(model)
    validator = InstanceValidator(manifest)
    rows = []
    for _ in range(data.draw(st.integers(1, 8))):
        row = dict(manifest.example_request)
        for spec in manifest.inputs:
            if data.draw(st.booleans()):
                continue
            if spec.type == "number":
                row[spec.name] = data.draw(
                    st.floats(spec.plausible.min, spec.plausible.max) | any_float | st.none()
                    if not spec.required
                    else st.floats(spec.plausible.min, spec.plausible.max) | any_float
                )
            elif spec.type == "category":
                row[spec.name] = data.draw(st.sampled_from(spec.categories) | odd_text)
            else:  # free text: never rejected for being new, only for its length
                row[spec.name] = data.draw(odd_text)
        rows.append(row)
    singles: list[Any] = []
    for row in rows:
        try:
            singles.append(validator.one(row))
        except RequestValidationError:
            singles.append(None)
    if any(s is None for s in singles):
        with pytest.raises(RequestValidationError):
            validator.many(rows)
        return
    batch = validator.many(rows)
    assert batch.patterns == [s.pattern for s in singles]
    assert batch.out_of_distribution == [s.out_of_distribution for s in singles]
    assert [[w.as_dict() for w in ws] for ws in batch.warnings] == [[w.as_dict() for w in s.warnings] for s in singles]
