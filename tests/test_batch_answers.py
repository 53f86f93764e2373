"""A batch's answers as columns: the JSON written from them, the lazy per-row dicts, the hooks' column reads, and
the Open Inference Protocol's columnar batch end to end (response, prediction log)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from conftest import MODELS
from tabserve.api.routes_predict import predictions_json
from tabserve.confidence import BatchAnswers
from tabserve.observability.drift import DriftMonitor
from tabserve.observability.metrics import ServiceMetrics
from tabserve.observe import PredictionObserver
from tabserve.registry import ModelRegistry
from tabserve.service import BatchResult, Outcome, PredictionService


class Capture:
    """A hook that keeps every outcome and reads only what ``read`` reads."""

    def __init__(self, read: Callable[[Outcome], Any] = lambda _: None) -> None:
        self.read = read
        self.outcomes: list[Outcome] = []

    def predicted(self, outcome: Outcome) -> None:
        self.read(outcome)
        self.outcomes.append(outcome)


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    registry = ModelRegistry(MODELS, {"co2": None, "penguins": None}, {}, strict_fields=True, warmup=False)
    registry.load_all()
    return registry


def service(registry: ModelRegistry, hook: Capture | None = None) -> PredictionService:
    return PredictionService(registry, max_batch=10_000, hooks=hook)


def example(registry: ModelRegistry, name: str) -> dict[str, Any]:
    return dict(registry.get(name).manifest.example_request)


def co2_rows(registry: ModelRegistry, n: int, seed: int) -> list[dict[str, Any]]:
    """Varied vehicles: some years outside the training range, some unseen makes and gear boxes, some both in
    one row (warnings from several inputs), fuel figures sometimes left out."""
    rng = random.Random(seed)
    base = example(registry, "co2")
    rows = []
    for _ in range(n):
        row = {**base, "model_year": rng.randint(2005, 2030), "engine_size_l": round(rng.uniform(1.0, 6.5), 1)}
        if rng.random() < 0.1:
            row["make"] = rng.choice(["Zorblatt", "Polestar"])
        if rng.random() < 0.1:
            row["transmission"] = "A11"
        if rng.random() < 0.2:
            row.pop("fuel_consumption_comb_l_per_100km", None)
        rows.append(row)
    return rows


def answer(svc: PredictionService, name: str, rows: Any) -> BatchResult:
    result = svc.answer(name, {"instances": rows}, request_id="r")
    assert isinstance(result, BatchResult)
    return result


def assert_json_equals_dicts(result: BatchResult) -> None:
    written = predictions_json(result.answers)  # from the columns (no dicts yet for a regression)
    assert written == orjson.dumps(result.answers.dicts())
    assert predictions_json(result.answers) == written  # and from the dicts once they exist


def test_json_from_columns_equals_the_answer_dicts_when_rows_have_warnings_from_several_inputs(
    registry: ModelRegistry,
) -> None:
    result = answer(service(registry), "co2", co2_rows(registry, 600, 1))
    runs = result.answers.runs
    assert len(runs) >= 3
    rows_per_warning = Counter(i for rows, _ in runs for i in rows)
    assert max(rows_per_warning.values()) > 1, "some row has warnings from two inputs"
    assert not result.answers.built
    assert_json_equals_dicts(result)


def test_json_from_columns_equals_the_answer_dicts_when_one_input_warns(registry: ModelRegistry) -> None:
    rows = [{**example(registry, "co2"), "model_year": year} for year in (2016, 2026, 2027, 2017, 2028)]
    result = answer(service(registry), "co2", rows)
    assert [len(r) for r, _ in result.answers.runs] == [3]
    assert_json_equals_dicts(result)
    assert orjson.loads(predictions_json(result.answers))[1]["warnings"][0]["field"] == "model_year"


def test_json_from_columns_equals_the_answer_dicts_without_warnings(registry: ModelRegistry) -> None:
    result = answer(service(registry), "co2", [{**example(registry, "co2"), "model_year": 2010}] * 3)
    assert result.answers.runs == []
    assert_json_equals_dicts(result)


def test_json_flags_unknown_fields_without_out_of_distribution(tmp_path: Path) -> None:
    relaxed = ModelRegistry(MODELS, {"co2": None}, {}, strict_fields=False, warmup=False)
    relaxed.load_all()
    base = {**example(relaxed, "co2"), "model_year": 2010}
    rows = [base, {**base, "colour": "red"}, {**base, "colour": "red", "model_year": 2030}, {**base, "tint": 1}]
    result = answer(service(relaxed), "co2", rows)
    assert_json_equals_dicts(result)
    written = orjson.loads(predictions_json(result.answers))
    assert [a["out_of_distribution"] for a in written] == [False, False, True, False]
    assert [[w["code"] for w in a["warnings"]] for a in written] == [
        [],
        ["unknown_field"],
        ["unknown_field", "out_of_distribution"],
        ["unknown_field"],
    ]


def test_json_keeps_a_flag_that_came_without_a_warning() -> None:
    """The validator flags a row only with a warning, but the writer must not rely on it."""
    column = np.array([1.5, 2.25, 3.0])
    answers = BatchAnswers(0.9, "g/km", [False, True, False], [], interval=(column, column - 1, column + 1))
    assert predictions_json(answers) == orjson.dumps(answers.dicts())
    assert [a["out_of_distribution"] for a in orjson.loads(predictions_json(answers))] == [False, True, False]


def test_json_of_a_classification_batch_is_its_dicts(registry: ModelRegistry) -> None:
    penguin = example(registry, "penguins")
    result = answer(service(registry), "penguins", [penguin, {**penguin, "island": "Atlantis"}])
    assert result.answers.interval is None
    assert_json_equals_dicts(result)


def test_predict_document_is_the_documented_batch_answer(registry: ModelRegistry) -> None:
    svc = service(registry)
    rows = co2_rows(registry, 50, 2)
    document = svc.predict("co2", {"instances": rows}, request_id="r")
    singles = [svc.predict("co2", row, request_id="r") for row in rows]
    for single in singles:
        del single["model"], single["request_id"]
    assert document["predictions"] == singles
    assert orjson.dumps(document["predictions"]) == predictions_json(answer(svc, "co2", rows).answers)


def test_hooks_reading_columns_build_no_answer_dicts(registry: ModelRegistry) -> None:
    hook = Capture(lambda o: (o.rows, o.predictions(), o.warning_counts()))
    answer(service(registry, hook), "co2", co2_rows(registry, 300, 3))
    outcome = hook.outcomes[-1]
    assert outcome.result is not None and not outcome.result.built
    answers = outcome.answers  # whoever reads them gets them, built now
    assert outcome.result.built
    assert outcome.rows == len(answers) == 300
    assert outcome.predictions() == [a["prediction"] for a in answers]
    assert outcome.warning_counts() == Counter((w["field"], w["code"]) for a in answers for w in a["warnings"])


def test_the_services_observer_without_a_log_builds_no_answer_dicts(registry: ModelRegistry) -> None:
    """Metrics and drift read a batch's columns; only the prediction log needs the per-row dicts."""
    metrics = ServiceMetrics()
    drift = DriftMonitor()
    drift.register("co2", registry.get("co2").manifest)
    hook = Capture()
    svc = PredictionService(registry, max_batch=10_000, hooks=Fanout(PredictionObserver(metrics, drift, None), hook))
    rows = co2_rows(registry, 300, 4)
    answer(svc, "co2", rows)
    outcome = hook.outcomes[-1]
    assert outcome.result is not None and not outcome.result.built
    text = metrics.render()[0].decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples['tabserve_predicted_rows_total{model="co2"}'] == 300
    assert samples['tabserve_prediction_g_per_km_count{model="co2"}'] == 300
    warned = outcome.warning_counts()
    assert sum(warned.values()) > 0
    for (feature, code), n in warned.items():
        assert samples[f'tabserve_input_warnings_total{{code="{code}",feature="{feature}",model="co2"}}'] == n


class Fanout:
    def __init__(self, *hooks: Any) -> None:
        self.hooks = hooks

    def predicted(self, outcome: Outcome) -> None:
        for hook in self.hooks:
            hook.predicted(outcome)


def test_single_instance_outcome_answers_the_same_reads(registry: ModelRegistry) -> None:
    hook = Capture()
    svc = service(registry, hook)
    svc.predict("co2", {**example(registry, "co2"), "model_year": 2030, "make": "Zorblatt"}, request_id="r")
    outcome = hook.outcomes[-1]
    assert outcome.rows == 1
    assert outcome.predictions() == [outcome.answers[0]["prediction"]]
    assert outcome.warning_counts() == Counter(
        {("make", "unknown_category"): 1, ("model_year", "out_of_distribution"): 1}
    )


def test_v2_batch_reaches_the_prediction_log_row_by_row(make_client: Any, tmp_path: Path) -> None:
    client = make_client(data_dir=tmp_path / "logdir")
    co2 = {**example_from(client, "co2"), "model_year": 2030}
    rows = [co2, {**co2, "engine_size_l": 3.0}]
    inputs = v2_inputs(rows)
    response = client.post("/v2/models/co2/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    expected = client.post("/predict", json={"instances": rows}).json()["predictions"]
    assert outputs["prediction"] == [p["prediction"] for p in expected]
    assert outputs["lower"] == [p["interval"]["lower"] for p in expected]
    assert outputs["upper"] == [p["interval"]["upper"] for p in expected]
    assert outputs["out_of_distribution"] == [True, True]
    client.app.state.ctx.log.flush(5.0)
    request_id = response.headers["x-request-id"]
    logged = [r for r in client.app.state.ctx.log.backend.export(None, "co2", False) if r["request_id"] == request_id]
    assert [r["index"] for r in logged] == [0, 1]
    assert [r["inputs_raw"] for r in logged] == rows  # each row as it arrived, built from the columns
    assert [r["prediction"] for r in logged] == outputs["prediction"]
    assert [r["warnings"] for r in logged] == [p["warnings"] for p in expected]


def v2_inputs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON tensor per field of the rows (strings as BYTES, numbers as FP64)."""
    n = len(rows)
    kinds = {k: "BYTES" if type(v) is str else "FP64" for k, v in rows[0].items()}
    return [{"name": k, "datatype": t, "shape": [n], "data": [r[k] for r in rows]} for k, t in kinds.items()]


def example_from(client: Any, name: str) -> dict[str, Any]:
    request: dict[str, Any] = client.get(f"/models/{name}").json()["example_request"]
    return dict(request)


def test_infer_route_of_the_framework_answers_as_the_fast_layer(make_client: Any) -> None:
    client = make_client()
    co2 = example_from(client, "co2")
    inputs = v2_inputs([co2])
    fast = client.post("/v2/models/co2/infer", json={"id": "a", "inputs": inputs})
    framework = TestClient(client.app.api)  # the FastAPI app alone (started by the client): its own infer route
    routed = framework.post("/v2/models/co2/infer", json={"id": "a", "inputs": inputs})
    broken = framework.post("/v2/models/co2/infer", content=b"{", headers={"content-type": "application/json"})
    assert routed.status_code == fast.status_code == 200
    assert routed.json() == fast.json()
    assert broken.status_code == 400 and "malformed JSON" in broken.json()["error"]


def test_a_floor_bounds_single_and_batch_answers_alike() -> None:
    """``RegressionOutput.floor``: no prediction or bound below it, the same for one row as for a batch."""
    from tabserve.confidence import Confidence

    confidence = Confidence("regression", "absolute", (0.9,), {"": {0.9: 5.0}}, (), "EUR", floor=0.0)
    raw = np.array([-1.2344, 0.5, 3.0, 40.0], dtype=np.float32)
    preds, lower, upper = confidence.regression_batch(raw, [""] * raw.size, 0.9)
    assert preds.tolist() == [0.0, 0.5, 3.0, 40.0]
    assert lower.tolist() == [0.0, 0.0, 0.0, 35.0] and upper.tolist() == [5.0, 5.5, 8.0, 45.0]
    for i, value in enumerate(raw.tolist()):
        point = confidence.point(value)
        assert point == preds[i]
        assert confidence.regression(point, "", 0.9) == {"level": 0.9, "lower": lower[i], "upper": upper[i]}
    free = Confidence("regression", "absolute", (0.9,), {"": {0.9: 5.0}}, (), "EUR")
    assert free.point(-1.2344) == -1.234 and free.regression(-1.234, "", 0.9)["lower"] == -6.234
