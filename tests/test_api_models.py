"""Health, readiness, model metadata, drift, feedback and OpenAPI, in-process."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from conftest import MODELS
from tabserve.artifacts import list_models, list_versions


def test_health_answers_ok(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_lists_every_model_with_its_version(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["models"]) == set(list_models(MODELS))
    assert all(m["status"] == "ready" for m in body["models"].values())
    assert {n: m["version"] for n, m in body["models"].items()} == {
        n: list_versions(MODELS, n)[-1] for n in body["models"]
    }


def test_ready_is_503_before_models_are_loaded(make_client: Any) -> None:
    client = make_client()
    client.app.state.ctx.started = False
    response = client.get("/ready")
    assert response.status_code == 503 and response.json()["status"] == "loading"


def test_models_lists_versions_and_default(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default_model"] == "co2"
    names = [m["name"] for m in body["models"]]
    assert names == sorted(list_models(MODELS))
    assert {m["name"]: m["versions"] for m in body["models"]} == {
        "co2": ["1.0.0", "2.0.0", "3.0.0", "3.0.1"],
        "penguins": ["1.0.0", "1.1.0"],
    }


def test_model_document_has_schema_units_categories_and_example(client: TestClient) -> None:
    body = client.get("/models/co2").json()
    inputs = {i["name"]: i for i in body["inputs"]}
    assert inputs["engine_size_l"]["unit"] == "L" and "cc" in inputs["engine_size_l"]["units"]
    assert "X" in inputs["fuel_type"]["categories"]
    assert inputs["model_year"]["required"] is False
    assert body["output"] == {"task": "regression", "name": "co2_emissions", "unit": "g/km", "floor": 0.0}
    assert 0.9 in body["confidence"]["levels"]
    example = body["example_request"]
    assert client.post("/predict", json=example).status_code == 200


def test_model_version_document_is_verified_from_disk(client: TestClient) -> None:
    body = client.get("/models/penguins/versions/1.1.0").json()
    assert body["version"] == "1.1.0" and body["serving"] is True
    assert client.get("/models/penguins/versions/9.9.9").status_code == 404


def test_drift_report_has_a_status_per_feature(client: TestClient) -> None:
    example = client.get("/models/co2").json()["example_request"]
    client.post("/predict", json={"instances": [example] * 20})
    body = client.get("/models/co2/drift").json()
    assert body["n_seen"] == 20
    assert body["window_size"] == 1000
    assert "engine_size_l" in body["features"]


def test_feedback_attaches_and_conflicts(client: TestClient) -> None:
    example = client.get("/models/co2").json()["example_request"]
    rid = client.post("/predict", json=example).json()["request_id"]
    first = client.post("/feedback", json={"request_id": rid, "actual": 190.0})
    assert first.status_code == 200
    again = client.post("/feedback", json={"request_id": rid, "actual": 190.0})
    assert again.status_code == 200
    conflict = client.post("/feedback", json={"request_id": rid, "actual": 250.0})
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    unknown = client.post("/feedback", json={"request_id": "no-such-id", "actual": 1.0})
    assert unknown.status_code == 404
    invalid = client.post("/feedback", json={"request_id": rid})
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "body.actual"


def test_feedback_of_the_wrong_kind_is_refused(client: TestClient) -> None:
    co2 = client.post("/predict", json=client.get("/models/co2").json()["example_request"]).json()["request_id"]
    wrong = client.post("/feedback", json={"request_id": co2, "actual": "abc"})
    assert wrong.status_code == 400 and "is a regression: actual must be a number" in wrong.json()["detail"]
    example = client.get("/models/penguins").json()["example_request"]
    penguin = client.post("/models/penguins/predict", json=example).json()["request_id"]
    wrong = client.post("/feedback", json={"request_id": penguin, "actual": 12345})
    assert wrong.status_code == 400 and "is a classification: actual must be a class label" in wrong.json()["detail"]
    assert client.post("/feedback", json={"request_id": penguin, "actual": "Adelie"}).status_code == 200


def test_openapi_has_a_working_example_per_model(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for name in list_models(MODELS):
        operation = schema["paths"][f"/models/{name}/predict"]["post"]
        example = operation["requestBody"]["content"]["application/json"]["examples"]["one"]["value"]
        assert client.post(f"/models/{name}/predict", json=example).status_code == 200
    default = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "engine_size_l" in default["examples"]["one"]["value"]
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_by_route_model_and_status(client: TestClient) -> None:
    example = client.get("/models/co2").json()["example_request"]
    client.post("/predict", json=example)
    client.post("/predict", json={**example, "cylinders": 99})
    text = client.get("/metrics").text
    assert 'tabserve_requests_total{model="co2",route="/predict",status="200"} 1.0' in text
    assert 'tabserve_requests_total{model="co2",route="/predict",status="422"} 1.0' in text
    assert "tabserve_model_info" in text
