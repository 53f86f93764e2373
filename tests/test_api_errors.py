"""Bad input always gets a clear problem+json error naming the field — never a 500, never a guess."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import MODELS
from tabserve.api.auth import key_entry

CO2 = (
    json.loads((MODELS / "co2" / "1.0.0" / "manifest.json").read_text())["example_request"]
    if (MODELS / "co2" / "1.0.0" / "manifest.json").exists()
    else {}
)


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(body)
    assert body["status"] == status
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body["errors"]}


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"engine_size_l": None}, "body.engine_size_l", "missing"),
        ({"engine_size_l": "2.5"}, "body.engine_size_l", "wrong_type"),
        ({"engine_size_l": True}, "body.engine_size_l", "wrong_type"),
        ({"engine_size_l": 50}, "body.engine_size_l", "out_of_range"),
        ({"engine_size_l": -1.0}, "body.engine_size_l", "out_of_range"),
        ({"cylinders": 40}, "body.cylinders", "out_of_range"),
        ({"cylinders": 4.5}, "body.cylinders", "not_integer"),
        ({"make": 7}, "body.make", "wrong_type"),
        ({"make": "   "}, "body.make", "missing"),
        ({"model": ["x"]}, "body.model", "wrong_type"),
        ({"engine_sise": 2.0}, "body.engine_sise", "unknown_field"),
        (
            {"fuel_consumption_comb_l_per_100km": {"value": 0, "unit": "mpg_us"}},
            "body.fuel_consumption_comb_l_per_100km.value",
            "out_of_range",
        ),
        ({"fuel_consumption_comb_l_per_100km": {"value": 8}}, "body.fuel_consumption_comb_l_per_100km", "wrong_type"),
    ],
)
def test_invalid_field_gets_422_naming_it(client: TestClient, change: dict[str, Any], field: str, code: str) -> None:
    body = problem(client.post("/predict", json={**CO2, **change}), 422)
    error = next(e for e in body["errors"] if e["field"] == field)
    assert error["code"] == code
    assert error["message"]


def test_missing_required_field_gets_422(client: TestClient) -> None:
    request = {k: v for k, v in CO2.items() if k != "transmission"}
    body = problem(client.post("/predict", json=request), 422)
    assert fields(body) == {"body.transmission"}


def test_implausible_value_names_the_plausible_range(client: TestClient) -> None:
    body = problem(client.post("/predict", json={**CO2, "engine_size_l": 50}), 422)
    context = body["errors"][0]["context"]
    assert context["unit"] == "L" and context["min"] <= 1.0 and 8.0 <= context["max"] < 50


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_get_422(client: TestClient, literal: str) -> None:
    text = json.dumps({**CO2, "engine_size_l": 0}).replace('"engine_size_l": 0', f'"engine_size_l": {literal}')
    response = client.post("/predict", content=text, headers={"content-type": "application/json"})
    assert fields(problem(response, 422)) == {"body.engine_size_l"}


def test_huge_integer_is_out_of_range_not_a_crash(client: TestClient) -> None:
    text = json.dumps({**CO2, "cylinders": 10**400})
    response = client.post("/predict", content=text, headers={"content-type": "application/json"})
    assert fields(problem(response, 422)) == {"body.cylinders"}


def test_all_errors_of_a_batch_are_reported_with_their_row(client: TestClient) -> None:
    rows = [CO2, {**CO2, "cylinders": 99}, "not an object", {**CO2, "fuel_type": None}]
    body = problem(client.post("/predict", json={"instances": rows}), 422)
    assert fields(body) == {"body.instances.1.cylinders", "body.instances.2", "body.instances.3.fuel_type"}


def test_malformed_json_gets_400(client: TestClient) -> None:
    response = client.post("/predict", content=b'{"make": ', headers={"content-type": "application/json"})
    problem(response, 400)


def test_empty_body_gets_400(client: TestClient) -> None:
    problem(client.post("/predict", content=b"", headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_gets_415(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    problem(client.post("/predict", content=json.dumps(CO2).encode(), headers=headers), 415)


def test_body_over_limit_gets_413_from_content_length(make_client: Any) -> None:
    small = make_client(max_body_bytes=2048)
    body = json.dumps({"instances": [CO2] * 20}).encode()
    problem(small.post("/predict", content=body, headers={"content-type": "application/json"}), 413)


def test_chunked_body_over_limit_gets_413(make_client: Any) -> None:
    small = make_client(max_body_bytes=2048)

    def chunks() -> Any:
        for _ in range(50):
            yield json.dumps(CO2).encode()

    problem(small.post("/predict", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_batch_over_maximum_gets_413(make_client: Any) -> None:
    limited = make_client(max_batch=3)
    problem(limited.post("/predict", json={"instances": [CO2] * 4}), 413)


def test_empty_batch_gets_422(client: TestClient) -> None:
    assert fields(problem(client.post("/predict", json={"instances": []}), 422)) == {"body.instances"}


@pytest.mark.parametrize("body", [[CO2], 42, "text", None, {"instances": {"a": 1}}])
def test_body_of_the_wrong_shape_gets_422(client: TestClient, body: Any) -> None:
    text = json.dumps(body).encode()
    problem(client.post("/predict", content=text, headers={"content-type": "application/json"}), 422)


def test_unknown_model_gets_404(client: TestClient) -> None:
    problem(client.post("/models/nope/predict", json=CO2), 404)
    problem(client.get("/models/nope"), 404)


def test_unknown_route_gets_problem_json(client: TestClient) -> None:
    problem(client.get("/nowhere"), 404)
    problem(client.get("/predict"), 405)


def test_overload_gets_fast_503_with_retry_after(make_client: Any) -> None:
    limited = make_client(max_in_flight=1)
    limited.app.state.ctx.admission.in_flight += 1  # as if another request were held by the worker
    response = limited.post("/predict", json=CO2)
    body = problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert "in flight" in body["detail"]
    assert limited.get("/health").status_code == 200  # probes are never refused
    limited.app.state.ctx.admission.in_flight -= 1
    assert limited.post("/predict", json=CO2).status_code == 200


def test_request_that_waited_too_long_is_shed() -> None:
    import contextvars
    import time

    from tabserve.api.middleware import _ENQUEUED, Admission
    from tabserve.errors import OverloadedError

    admission = Admission(limit=0, max_queue_s=0.025)
    context = contextvars.copy_context()
    now = time.perf_counter()
    context.run(_ENQUEUED.set, now - 0.010)
    context.run(admission.admit, now)  # waited 10 ms: admitted
    context.run(_ENQUEUED.set, now - 0.050)
    with pytest.raises(OverloadedError, match="waited 50 ms"):
        context.run(admission.admit, now)
    context.run(admission.admit, now, 300_000)  # a large batch may wait in proportion to its size


def test_rate_limit_gets_429_with_retry_after(make_client: Any) -> None:
    k1, k2 = "first-key-0123456789abcdefghijk", "second-key-0123456789abcdefghij"  # per key: tests/test_auth.py
    keys = ",".join(key_entry(name, frozenset({"predict"}), key) for name, key in (("k1", k1), ("k2", k2)))
    limited = make_client(rate_limit=0.5, rate_limit_burst=2, api_keys=keys)
    statuses = [limited.post("/predict", json=CO2, headers={"x-api-key": k1}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    other = limited.post("/predict", json=CO2, headers={"x-api-key": k2})
    assert other.status_code == 200
    response = limited.post("/predict", json=CO2, headers={"x-api-key": k1})
    problem(response, 429)
    assert int(response.headers["retry-after"]) >= 1


def test_oip_tensor_datatype_of_the_wrong_type_is_400_not_500(client: TestClient) -> None:
    """Found by schemathesis: a datatype that is an object (unhashable) crashed the tensor lookup."""
    for datatype in ({"a": 1}, ["FP64"], 3, None):
        body = {"inputs": [{"name": "bill_length_mm", "datatype": datatype, "shape": [1], "data": [40.0]}]}
        response = client.post("/v2/models/penguins/infer", json=body)
        assert response.status_code == 400, (datatype, response.text)
        assert "datatype" in response.json()["error"]
