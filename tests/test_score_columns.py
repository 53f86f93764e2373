"""The batch scorer's column plan and cell conversion: unit columns, clashes, CSV text cells as request values."""

from __future__ import annotations

import pyarrow as pa
import pytest

from conftest import MODELS
from tabserve.artifacts import model_dir, verify_model_dir
from tabserve.errors import ScoreInputError
from tabserve.features.fields import NumberField
from tabserve.features.validation import InstanceValidator
from tabserve.manifest import Manifest
from tabserve.score.columns import plan, unit_columns, unit_slug
from tabserve.score.convert import unit_values, values


def manifest(name: str) -> Manifest:
    return verify_model_dir(model_dir(MODELS, name)).manifest


def test_unit_columns_follow_the_input_names_unit_suffix() -> None:
    co2 = unit_columns(manifest("co2"))
    assert (co2["engine_size_cc"].input, co2["engine_size_cc"].unit) == ("engine_size_l", "cc")
    assert co2["engine_size_cu_in"].unit == "cu in"
    assert (co2["fuel_consumption_comb_mpg"].input, co2["fuel_consumption_comb_mpg"].unit) == (
        "fuel_consumption_comb_l_per_100km",
        "mpg_us",
    )
    assert co2["fuel_consumption_city_mpg_imp"].unit == "mpg_imp"
    assert "engine_size_l" not in co2  # the canonical name is the input itself
    penguins = unit_columns(manifest("penguins"))
    assert penguins["body_mass_kg"].unit == "kg"
    assert penguins["bill_length_in"].unit == "in"
    assert unit_slug("L/100km") == "l_per_100km"


def test_plan_keeps_other_columns_and_rejects_doubled_inputs_and_clashes() -> None:
    co2 = manifest("co2")
    required = [s.name for s in co2.inputs if s.required and s.name != "engine_size_l"]
    p = plan(co2, ["id", *required, "engine_size_cc", "CO2 (g/km)"])
    assert p.direct == tuple(s.name for s in co2.inputs if s.name in required)
    assert [u.column for u in p.units] == ["engine_size_cc"]
    assert p.passthrough == ("id", "CO2 (g/km)")
    with pytest.raises(ScoreInputError, match="engine_size_l given by engine_size_l, engine_size_cc"):
        plan(co2, ["engine_size_l", "engine_size_cc"])
    with pytest.raises(ScoreInputError, match="prediction"):
        plan(co2, ["make", "prediction"])
    with pytest.raises(ScoreInputError, match="no column is an input"):
        plan(co2, ["a", "b"])
    with pytest.raises(ScoreInputError, match=r"no column for the required input\(s\) engine_size_l of co2"):
        plan(co2, required)


def test_csv_text_cells_become_request_values() -> None:
    cells = pa.array(["2.5", " 3 ", None, "abc", "1e400", "-0"], pa.string())
    assert values(cells, numeric=True) == [2.5, 3.0, None, "abc", float("inf"), -0.0]
    assert values(pa.array(["2.5", "4"]), numeric=True) == [2.5, 4.0]
    assert values(pa.array(["Ford", None, "", "Ford"]), numeric=False) == ["Ford", None, None, "Ford"]
    assert values(pa.array([1, 2], pa.int64()), numeric=True) == [1, 2]
    assert values(pa.array([1.5, None]), numeric=True) == [1.5, None]


def test_unit_column_converts_as_the_validator_converts_the_request_form() -> None:
    co2 = manifest("co2")
    validator = InstanceValidator(co2)
    checker = next(f for f in validator.fields if f.name == "fuel_consumption_comb_l_per_100km")
    assert isinstance(checker, NumberField)
    unit = unit_columns(co2)["fuel_consumption_comb_mpg"]
    cells = pa.array([28.3, 31.0, 0.0, -2.0, None])
    out = unit_values(cells, unit, checker)
    for got, mpg in zip(out[:2], [28.3, 31.0], strict=True):
        value, error, _ = checker.check({"value": mpg, "unit": "mpg_us"}, ())
        assert error is None
        assert got == value  # bit for bit: the same float64 operations
    assert out[2] == {"value": 0.0, "unit": "mpg_us"}  # left in the request form: the validator rejects it
    assert out[3] == {"value": -2.0, "unit": "mpg_us"}
    assert out[4] is None
    _, error, _ = checker.check(out[2], ())
    assert error is not None
    assert error.code == "out_of_range"
