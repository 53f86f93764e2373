"""The coverage route in-process: its answer matches its OpenAPI schema, the drift route carries the same section,
answers report the effective level only with adaptive levels on, and clear errors without a log or a model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from fastapi.testclient import TestClient

from conftest import MODELS
from tabserve.api import create_app
from tabserve.config import Settings


def _example(client: TestClient, model: str) -> dict[str, Any]:
    example: dict[str, Any] = client.get(f"/models/{model}").json()["example_request"]
    return example


def test_coverage_route_matches_its_openapi_schema_and_the_drift_section_when_feedback_given(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(coverage_refresh_s=0.0, coverage_min_samples=1)
    for model in ("co2", "penguins"):
        answer = client.post(f"/models/{model}/predict", json=_example(client, model)).json()
        assert "effective_level" not in answer.get("interval", answer)  # fixed scheme: the answer as before
        actual = answer["prediction"]  # inside: the point prediction is in its own interval / set
        assert client.post("/feedback", json={"request_id": answer["request_id"], "actual": actual}).status_code == 200
    schema = client.get("/openapi.json").json()["paths"]["/models/{name}/coverage"]["get"]["responses"]
    body_schema = schema["200"]["content"]["application/json"]["schema"]
    for model, pattern in (("co2", "111"), ("penguins", "11")):
        report = client.get(f"/models/{model}/coverage")
        assert report.status_code == 200
        jsonschema.validate(report.json(), body_schema)
        (cell,) = report.json()["cells"]
        assert (cell["pattern"], cell["samples"], cell["covered"], cell["status"]) == (pattern, 1, 1, "ok")
        assert cell["effective_level"] == cell["level"] == 0.9
        drift = client.get(f"/models/{model}/drift").json()
        assert drift["coverage"]["cells"] == report.json()["cells"]
    missing = client.get("/models/nope/coverage")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_coverage_route_is_503_when_the_prediction_log_is_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(prediction_log=False)
    response = client.get("/models/co2/coverage")
    assert response.status_code == 503
    assert "prediction log" in response.json()["detail"]
    assert "coverage" not in client.get("/models/co2/drift").json()


def test_adaptive_answers_report_requested_and_effective_level_when_on(make_client: Callable[..., TestClient]) -> None:
    client = make_client(coverage_adaptive=True, coverage_refresh_s=0.0)
    example = _example(client, "co2")
    first = client.post("/models/co2/predict", json=example).json()
    assert first["interval"]["level"] == 0.9
    assert first["interval"]["effective_level"] == 0.9  # no feedback yet
    miss = first["interval"]["upper"] + 100.0
    assert client.post("/feedback", json={"request_id": first["request_id"], "actual": miss}).status_code == 200
    second = client.post("/models/co2/predict", json=example).json()["interval"]
    assert second["level"] == 0.9
    assert second["effective_level"] == 0.9045  # 0.9 + 0.005 x (1 miss - 1 x 0.1)
    assert second["upper"] - second["lower"] > first["interval"]["upper"] - first["interval"]["lower"]
    batch = client.post("/models/co2/predict", json={"instances": [example, example]}).json()["predictions"]
    assert [row["interval"]["effective_level"] for row in batch] == [0.9045, 0.9045]
    assert batch[0]["interval"]["lower"] == second["lower"]  # the batch path serves the same adjusted interval
    penguin = client.post("/models/penguins/predict", json=_example(client, "penguins")).json()
    assert (penguin["level"], penguin["effective_level"]) == (0.9, 0.9)


def test_shutdown_waits_for_a_background_coverage_read_before_closing_the_store(tmp_path: Path) -> None:
    """The coverage refresh reads the log in a worker thread; closing SQLite under it crashed the process at exit
    (SIGSEGV seen after a 10-minute soak). Shutdown now waits for the read, then closes the store."""
    app = create_app(Settings(models_dir=MODELS, data_dir=tmp_path))
    ctx = app.state.ctx
    events: list[str] = []
    source, close = ctx.coverage.source, ctx.log.backend.close
    reading = threading.Event()

    def slow_source(*args: Any) -> Any:
        events.append("read started")
        reading.set()
        time.sleep(0.5)
        rows = source(*args)
        events.append("read done")
        return rows

    def recording_close() -> None:
        events.append("store closed")
        close()

    ctx.coverage.source = slow_source
    ctx.log.backend.close = recording_close
    with TestClient(app):
        assert reading.wait(10)  # the flusher's first refresh is in its thread: shut down now
    assert events[:3] == ["read started", "read done", "store closed"], events
