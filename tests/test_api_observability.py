"""Observability through the real app: trace spans, Cloud Logging fields, metrics, drift, and the retraining loop."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import MODELS, TABSERVE
from tabserve.api import create_app
from tabserve.config import Settings
from tabserve.observability.tracing import Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def co2_example() -> dict[str, Any]:
    manifest = json.loads((MODELS / "co2" / "3.0.1" / "manifest.json").read_text())
    return {**manifest["example_request"], "model_year": 2022}


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_request_and_stage_spans_continue_the_callers_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    app = create_app(Settings(models_dir=MODELS, data_dir=tmp_path), tracing=Tracing.create(None, "t", exporter))
    with TestClient(app) as client:
        client.post("/predict", json=co2_example(), headers={"traceparent": TRACEPARENT})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["POST /predict"]
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.attributes is not None and server.attributes["model"] == "co2"
    stages = [spans[name] for name in ("validate", "preprocess", "inference", "serialise")]
    for stage in stages:
        assert stage.parent is not None and stage.parent.span_id == server.context.span_id
    assert [s.start_time for s in stages] == sorted(s.start_time for s in stages)


def test_tracing_is_off_without_an_endpoint(tmp_path: Path) -> None:
    app = create_app(Settings(models_dir=MODELS, data_dir=tmp_path))
    assert app.state.ctx.tracing.enabled is False


def test_access_log_has_cloud_logging_fields_and_no_body(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(models_dir=MODELS, data_dir=tmp_path, google_cloud_project="proj-1")
    with TestClient(create_app(settings)) as client:
        client.post("/predict", json=co2_example(), headers={"traceparent": TRACEPARENT, "x-request-id": "rid-1"})
        client.post("/predict", json=co2_example(), headers={"x-cloud-trace-context": f"{TRACE_ID}/1;o=1"})
    lines = [line for line in log_lines(capsys.readouterr().out) if line.get("message") == "request"]
    first = lines[0]
    assert first["severity"] == "INFO"
    assert first["time"].endswith("Z")
    assert first["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE_ID}"
    assert first["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    expected = {"request_id": "rid-1", "model": "co2", "model_version": "3.0.1", "status": 200, "rows": 1}
    assert expected.items() <= first.items()
    assert {"latency_ms", "preprocess_ms", "inference_ms"} <= first.keys()
    assert lines[1]["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE_ID}"
    assert "RAV4" not in json.dumps(lines)


def test_text_log_format_is_human_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TestClient(create_app(Settings(models_dir=MODELS, data_dir=tmp_path, log_format="text"))) as client:
        client.get("/health")
    out = capsys.readouterr().out
    assert "GET" in out
    assert not any(line.startswith("{") for line in out.splitlines())


def test_metrics_count_warnings_ood_predictions_and_the_log(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(models_dir=MODELS, data_dir=tmp_path))) as client:
        example = co2_example()
        client.post("/predict", json={**example, "make": "Zorblatt", "engine_size_l": 9.5})
        penguin = json.loads((MODELS / "penguins" / "1.1.0" / "manifest.json").read_text())["example_request"]
        client.post("/models/penguins/predict", json=penguin)
        client.app.state.ctx.log.flush(5.0)
        text = client.get("/metrics").text
    assert 'tabserve_input_warnings_total{code="unknown_category",feature="make",model="co2"} 1.0' in text
    assert 'tabserve_out_of_distribution_total{feature="engine_size_l",model="co2"} 1.0' in text
    assert 'tabserve_prediction_g_per_km_count{model="co2"} 1.0' in text
    assert 'tabserve_class_predictions_total{class="Adelie",model="penguins"} 1.0' in text
    assert 'tabserve_stage_duration_seconds_count{model="co2",stage="inference"} 1.0' in text
    assert "tabserve_prediction_log_written_rows_total 2.0" in text
    assert "tabserve_in_flight_requests" in text
    assert 'tabserve_model_info{degraded="false",model="co2",sha256="' in text


def test_drift_flags_exactly_the_shifted_features(tmp_path: Path) -> None:
    rng = random.Random(3)
    with TestClient(create_app(Settings(models_dir=MODELS, data_dir=tmp_path, prediction_log=False))) as client:
        rows = _sample_rows(rng, 600)
        client.post("/predict", json={"instances": rows})
        calm = client.get("/models/co2/drift").json()
        assert [n for n, f in calm["features"].items() if f["status"] == "drift"] == []
    with TestClient(create_app(Settings(models_dir=MODELS, data_dir=tmp_path, prediction_log=False))) as client:
        shifted = [
            {**r, "engine_size_l": min(9.9, round(r["engine_size_l"] * 1.5, 1)), "transmission": "AS11"}
            for r in _sample_rows(rng, 600)
        ]
        client.post("/predict", json={"instances": shifted})
        report = client.get("/models/co2/drift").json()
    flagged = sorted(n for n, f in report["features"].items() if f["status"] == "drift")
    assert flagged == ["engine_size_l", "transmission"]


def _sample_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Real vehicles of the training years (NRCan ratings 1995–2022, all three files), sampled with replacement."""
    import csv

    from conftest import data_dir

    rows: list[list[str]] = []
    for name in (
        "fuel_consumption_ratings_1995_2014_5cycle.csv",
        "fuel_consumption_ratings_2015_2020.csv",
        "fuel_consumption_ratings_2021_2022.csv",
    ):
        with (data_dir() / name).open(encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader)
            rows += [r for r in reader if int(r[0]) <= 2022]
    out = []
    for r in (rng.choice(rows) for _ in range(n)):
        year, make, model, vclass, engine, cylinders, transmission, fuel, city, hwy, comb = r[:11]
        out.append(
            {
                "make": make,
                "model": model,
                "vehicle_class": vclass,
                "engine_size_l": float(engine),
                "cylinders": int(cylinders),
                "transmission": transmission,
                "fuel_type": fuel,
                "model_year": int(year),
                "fuel_consumption_city_l_per_100km": float(city),
                "fuel_consumption_hwy_l_per_100km": float(hwy),
                "fuel_consumption_comb_l_per_100km": float(comb),
            }
        )
    return out


@pytest.mark.training
def test_serve_log_feedback_export_retrain_loop(tmp_path: Path) -> None:
    """The promise end to end: predictions are logged, truth attached, exported in the training layout, retrained."""
    import subprocess

    data = tmp_path / "var"
    penguin = json.loads((MODELS / "penguins" / "1.1.0" / "manifest.json").read_text())["example_request"]
    settings = Settings(models_dir=MODELS, data_dir=data)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/models/penguins/predict", json={"instances": [penguin] * 3}).json()
        rid = answer["request_id"]
        for index in range(3):
            assert (
                client.post("/feedback", json={"request_id": rid, "index": index, "actual": "Adelie"}).status_code
                == 200
            )
    env_cmd = [str(TABSERVE)]
    out = tmp_path / "penguins-export.csv"
    exported = subprocess.run(
        [*env_cmd, "export", "--model", "penguins", "--labelled-only", "--out", str(out)],
        env={"TABSERVE_DATA_DIR": str(data), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 3 rows" in exported.stdout
    header, *lines = out.read_text().splitlines()
    assert header.startswith("species,island,bill_length_mm")
    assert len(lines) == 3
    assert all(line.startswith("Adelie,") for line in lines)
    retrained = subprocess.run(
        [
            *env_cmd,
            "train",
            "penguins",
            "--out",
            str(tmp_path / "models"),
            "--version",
            "1.1.0",
            "--extra",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "built penguins 1.1.0" in retrained.stdout
    manifest = json.loads((tmp_path / "models" / "penguins" / "1.1.0" / "manifest.json").read_text())
    assert manifest["training_data"][-1] == {
        "path": out.name,
        "sha256": manifest["training_data"][-1]["sha256"],
        "rows": 3,
    }
    assert subprocess.run([*env_cmd, "verify", str(tmp_path / "models")], check=False).returncode == 0
