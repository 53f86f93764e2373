"""The simple API in-process: shapes of answers, confidence levels, batches, units, spellings, warnings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import MODELS


def example(name: str) -> dict[str, Any]:
    manifest = json.loads((MODELS / name / "1.0.0" / "manifest.json").read_text())
    request: dict[str, Any] = manifest["example_request"]
    return dict(request)


@pytest.fixture
def co2() -> dict[str, Any]:
    """The manifest's example, set in the last training year so that no input is out of distribution."""
    return {**example("co2"), "model_year": 2017}


@pytest.fixture
def penguin() -> dict[str, Any]:
    return example("penguins")


def test_predict_returns_interval_unit_and_model_for_one_vehicle(client: TestClient, co2: dict[str, Any]) -> None:
    response = client.post("/predict", json=co2, headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"prediction", "unit", "interval", "warnings", "out_of_distribution", "model", "request_id"}
    assert body["unit"] == "g/km"
    assert body["model"] == {"name": "co2", "version": "3.0.1"}
    assert body["request_id"] == "abc-123" == response.headers["x-request-id"]
    interval = body["interval"]
    assert interval["level"] == 0.9
    assert interval["lower"] < body["prediction"] < interval["upper"]
    assert 50 < body["prediction"] < 600
    assert body["warnings"] == [] and body["out_of_distribution"] is False


def test_predict_default_route_equals_named_route(client: TestClient, co2: dict[str, Any]) -> None:
    a = client.post("/predict", json=co2).json()
    b = client.post("/models/co2/predict", json=co2).json()
    assert a["prediction"] == b["prediction"] and a["interval"] == b["interval"]


def test_request_id_is_generated_when_absent(client: TestClient, co2: dict[str, Any]) -> None:
    response = client.post("/predict", json=co2)
    assert len(response.json()["request_id"]) >= 16
    assert response.headers["x-request-id"] == response.json()["request_id"]


def test_batch_answers_equal_single_answers(client: TestClient, co2: dict[str, Any]) -> None:
    variants = [
        co2,
        {**co2, "engine_size_l": 3.5, "cylinders": 6},
        {k: v for k, v in co2.items() if "fuel_cons" not in k},
    ]
    batch = client.post("/predict", json={"instances": variants})
    assert batch.status_code == 200
    body = batch.json()
    assert set(body) == {"predictions", "model", "request_id"}
    singles = [client.post("/predict", json=v).json() for v in variants]
    for got, want in zip(body["predictions"], singles, strict=True):
        assert got["prediction"] == pytest.approx(want["prediction"], abs=1e-3)
        assert got["interval"] == want["interval"]
        assert got["warnings"] == want["warnings"]


def test_levels_nest_and_unknown_level_is_rejected(client: TestClient, co2: dict[str, Any]) -> None:
    widths = []
    for level in ("0.5", "0.8", "0.9", "0.95"):
        interval = client.post(f"/predict?level={level}", json=co2).json()["interval"]
        assert interval["level"] == float(level)
        widths.append(interval["upper"] - interval["lower"])
    assert widths == sorted(widths) and widths[0] < widths[-1]
    bad = client.post("/predict?level=0.42", json=co2)
    assert bad.status_code == 422
    error = bad.json()["errors"][0]
    assert error["loc"] == ["query", "level"] and 0.9 in error["context"]["allowed"]


def test_specs_only_interval_is_wider_than_with_fuel_figures(client: TestClient, co2: dict[str, Any]) -> None:
    full = client.post("/predict", json=co2).json()["interval"]
    specs = {k: v for k, v in co2.items() if not k.startswith("fuel_consumption")}
    only = client.post("/predict", json=specs).json()["interval"]
    assert (only["upper"] - only["lower"]) > 3 * (full["upper"] - full["lower"])


@pytest.mark.parametrize(
    ("field", "value", "unit", "canonical"),
    [
        ("engine_size_l", 2500, "cc", 2.5),
        ("engine_size_l", 152.56, "cu in", 2.5),
        ("fuel_consumption_comb_l_per_100km", 29.04, "mpg_us", 8.1),
        ("fuel_consumption_comb_l_per_100km", 34.87, "mpg_imp", 8.1),
        ("fuel_consumption_comb_l_per_100km", 12.345679, "km/L", 8.1),
    ],
)
def test_units_convert_to_the_canonical_unit(
    client: TestClient, co2: dict[str, Any], field: str, value: float, unit: str, canonical: float
) -> None:
    base = client.post("/predict", json={**co2, field: canonical}).json()
    converted = client.post("/predict", json={**co2, field: {"value": value, "unit": unit}}).json()
    assert converted["prediction"] == pytest.approx(base["prediction"], abs=0.5)


def test_unknown_unit_is_rejected_naming_the_allowed_units(client: TestClient, co2: dict[str, Any]) -> None:
    response = client.post("/predict", json={**co2, "engine_size_l": {"value": 2.5, "unit": "gallons"}})
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["loc"] == ["body", "engine_size_l", "unit"] and error["code"] == "unknown_unit"
    assert error["context"]["allowed"] == ["L", "cc", "cu in"]


def test_spellings_and_aliases_are_normalised(client: TestClient, co2: dict[str, Any]) -> None:
    base = client.post("/predict", json=co2).json()
    messy = {**co2, "make": f"  {co2['make'].lower()} ", "transmission": co2["transmission"].lower()}
    assert client.post("/predict", json=messy).json()["prediction"] == base["prediction"]
    premium = client.post("/predict", json={**co2, "fuel_type": "Premium gasoline"}).json()
    code = client.post("/predict", json={**co2, "fuel_type": "Z"}).json()
    assert premium["prediction"] == code["prediction"] and premium["warnings"] == []


def test_unknown_category_is_served_with_a_warning(client: TestClient, co2: dict[str, Any]) -> None:
    body = client.post("/predict", json={**co2, "make": "Zorblatt Motors", "transmission": "AS11"}).json()
    assert body["out_of_distribution"] is True
    codes = {(w["field"], w["code"]) for w in body["warnings"]}
    assert codes == {("make", "unknown_category"), ("transmission", "unknown_category")}
    assert 50 < body["prediction"] < 600


def test_plausible_value_outside_training_range_is_flagged(client: TestClient, penguin: dict[str, Any]) -> None:
    body = client.post("/models/penguins/predict", json={**penguin, "body_mass_g": 7500}).json()
    assert body["out_of_distribution"] is True
    assert [w["field"] for w in body["warnings"]] == ["body_mass_g"]
    assert body["warnings"][0]["code"] == "out_of_distribution"


def test_penguin_answer_has_probabilities_and_prediction_set(client: TestClient, penguin: dict[str, Any]) -> None:
    body = client.post("/models/penguins/predict?level=0.95", json=penguin).json()
    assert body["prediction"] == "Adelie"
    assert set(body["probabilities"]) == {"Adelie", "Chinstrap", "Gentoo"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["prediction_set"][0] == "Adelie"
    assert body["model"]["name"] == "penguins"


@pytest.mark.parametrize(
    ("units", "mass"),
    [({"value": 3.75, "unit": "kg"}, 3750), ({"value": 8.2673, "unit": "lb"}, 3750)],
)
def test_penguin_mass_units_convert(client: TestClient, penguin: dict[str, Any], units: Any, mass: float) -> None:
    a = client.post("/models/penguins/predict", json={**penguin, "body_mass_g": mass}).json()
    b = client.post("/models/penguins/predict", json={**penguin, "body_mass_g": units}).json()
    for cls, p in a["probabilities"].items():
        assert b["probabilities"][cls] == pytest.approx(p, abs=1e-3)


def test_unknown_fields_can_be_relaxed_to_a_warning(make_client: Any, co2: dict[str, Any]) -> None:
    relaxed = make_client(strict_fields=False)
    body = relaxed.post("/predict", json={**co2, "colour": "red"}).json()
    assert {"field": "colour", "code": "unknown_field"}.items() <= body["warnings"][0].items()


def test_every_prediction_reaches_the_prediction_log(make_client: Any, co2: dict[str, Any], tmp_path: Path) -> None:
    client = make_client(data_dir=tmp_path / "logdir")
    rid = client.post("/predict", json={"instances": [co2, co2]}).json()["request_id"]
    client.app.state.ctx.log.flush(5.0)
    rows = list(client.app.state.ctx.log.backend.export(None, "co2", False))
    assert [(r["request_id"], r["index"]) for r in rows] == [(rid, 0), (rid, 1)]
