"""Random, hostile request bodies never get a 500: every answer is 200, or a 4xx problem+json naming a field."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import MODELS

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2.5,
    -0.0,
    1e308,
    -1e308,
    10**40,
    -(10**40),
    "",
    " ",
    "x",
    "2.5",
    "NaN",
    "\u0000",
    "é" * 300,
    [],
    [1],
    {},
    {"value": 1},
    {"value": "1", "unit": "L"},
    {"value": 1, "unit": "cc"},
    {"value": 1e300, "unit": "mpg_us"},
    {"value": -5, "unit": "km/L"},
    {"value": 3, "unit": None},
    {"unit": "L"},
    {"value": 1, "unit": "L", "extra": 1},
]


def mutate(example: dict[str, Any], rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice(VALUES)
    if roll < 0.15:
        return {"instances": [mutate(example, rng) for _ in range(rng.randint(0, 3))]}
    body = dict(example)
    for _ in range(rng.randint(1, 4)):
        key = rng.choice([*example, "engine_sise", "instances", "", "x" * 200])
        if rng.random() < 0.2:
            body.pop(key, None)
        else:
            body[key] = rng.choice(VALUES)
    return body


@pytest.mark.parametrize("model", ["co2", "penguins"])
def test_hostile_bodies_never_get_a_500(client: TestClient, model: str) -> None:
    example = json.loads((MODELS / model / "1.0.0" / "manifest.json").read_text())["example_request"]
    rng = random.Random(20261126)
    seen: set[int] = set()
    for _ in range(400):
        body = mutate(example, rng)
        text = json.dumps(body, allow_nan=True)
        level = rng.choice(["", "?level=0.9", "?level=abc", "?level=", "?level=0.95&level=2"])
        response = client.post(
            f"/models/{model}/predict{level}", content=text, headers={"content-type": "application/json"}
        )
        seen.add(response.status_code)
        assert response.status_code < 500, (text, response.text)
        if response.status_code >= 400:
            problem = response.json()
            assert problem["status"] == response.status_code
            if response.status_code == 422:
                assert problem["errors"]
                assert all(e["field"] and e["message"] for e in problem["errors"])
    assert {200, 422} <= seen


@pytest.mark.parametrize("model", ["co2", "penguins"])
def test_hostile_inference_requests_never_get_a_500(client: TestClient, model: str) -> None:
    """The Open Inference Protocol route: random datatypes, shapes, data and documents."""
    example = json.loads((MODELS / model / "1.0.0" / "manifest.json").read_text())["example_request"]
    rng = random.Random(7)
    seen: set[int] = set()
    for _ in range(300):
        inputs: list[Any] = []
        for name, value in example.items():
            if rng.random() < 0.1:
                continue
            tensor: Any = {
                "name": name if rng.random() > 0.05 else "zz",
                "datatype": rng.choice(["BYTES", "FP64", "FP32", "INT64", "BOOL", "XX", None]),
                "shape": rng.choice([[1], [2], [1, 1], [0], [-1], "x", [1, 2]]),
                "data": rng.choice([[value], [rng.choice(VALUES)], [[value]], value, [value, value], []]),
            }
            inputs.append(tensor if rng.random() > 0.05 else rng.choice(VALUES))
        document: Any = {"id": "fuzz", "inputs": inputs}
        if rng.random() < 0.1:
            document = rng.choice(VALUES)
        elif rng.random() < 0.1:
            document["outputs"] = rng.choice(VALUES)
            document["parameters"] = rng.choice(VALUES)
        response = client.post(
            f"/v2/models/{model}/infer", content=json.dumps(document), headers={"content-type": "application/json"}
        )
        seen.add(response.status_code)
        assert response.status_code < 500, (document, response.text)
        if response.status_code >= 400:
            assert set(response.json()) == {"error"}
    assert seen - {200}
    valid = {
        "inputs": [
            {"name": k, "datatype": "BYTES" if isinstance(v, str) else "FP64", "shape": [1], "data": [v]}
            for k, v in example.items()
        ]
    }
    assert client.post(f"/v2/models/{model}/infer", json=valid).status_code == 200
