"""Open Inference Protocol (KServe V2) against a real ``tabserve serve`` process, with the real tritonclient.

One server per module (default configuration: every model under ``models/``, newest version). Every infer
answer is compared with ``POST /models/{name}/predict`` for the same rows: both must go through the same
prediction path, so the numbers are equal, not merely close.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess, start_server

pytestmark = pytest.mark.e2e

REGRESSION_OUTPUTS = ["prediction", "lower", "upper", "out_of_distribution"]
CLASSIFICATION_OUTPUTS = ["prediction", "probabilities", "prediction_set", "out_of_distribution"]


@pytest.fixture(scope="module")
def oip_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("oip"), {"TABSERVE_ACCESS_LOG": "false"})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(oip_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=oip_server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def triton(oip_server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=oip_server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def co2_doc(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/models/co2")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


@pytest.fixture(scope="module")
def penguins_doc(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/models/penguins")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


# --- helpers ------------------------------------------------------------------------------------------------
def _specs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {spec["name"]: spec for spec in doc["inputs"]}


def _co2_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's example plus two variants with other known categories and numbers."""
    specs = _specs(doc)
    example = dict(doc["example_request"])
    second = dict(example)
    third = dict(example)
    engine = specs["engine_size_l"]["training_range"]
    second["engine_size_l"] = round(min(engine["max"], max(engine["min"], example["engine_size_l"] + 1.5)), 1)
    second["cylinders"] = 6 if example["cylinders"] != 6 else 8
    third["engine_size_l"] = round(max(engine["min"], min(engine["max"], 1.6)), 1)
    third["cylinders"] = 4
    for key in (
        "fuel_consumption_city_l_per_100km",
        "fuel_consumption_hwy_l_per_100km",
        "fuel_consumption_comb_l_per_100km",
    ):
        if key in example:  # with fuel figures CO2 is nearly physics: vary them so the rows really differ
            second[key] = round(example[key] + 2.0, 1)
            third[key] = round(example[key] - 1.5, 1)
    for name, spec in specs.items():
        if spec["type"] == "category" and name in example:
            other = [c for c in spec["categories"] if c != example[name]]
            if other and name != "fuel_type":
                third[name] = other[0]
    return [example, second, third]


def _penguin_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    example = dict(doc["example_request"])
    gentoo = {
        "bill_length_mm": 47.5,
        "bill_depth_mm": 14.2,
        "flipper_length_mm": 217,
        "body_mass_g": 5250,
        "island": "Biscoe",
    }
    chinstrap = {"bill_length_mm": 49.5, "bill_depth_mm": 19.0, "flipper_length_mm": 200, "body_mass_g": 3800}
    return [example, gentoo, chinstrap]


def _present(rows: list[dict[str, Any]], specs: dict[str, dict[str, Any]]) -> list[str]:
    """Inputs given in every row, in schema order (an input absent from some rows is left out entirely)."""
    return [name for name in specs if all(name in row for row in rows)]


def _tensors(
    rows: list[dict[str, Any]],
    specs: dict[str, dict[str, Any]],
    *,
    binary: bool,
    fp32: frozenset[str] = frozenset(),
) -> tuple[list[httpclient.InferInput], list[dict[str, Any]]]:
    """One named tensor per feature (BYTES / INT64 / FP32 / FP64) and the rows exactly as the tensors carry
    them (FP32 values rounded to float32), for the REST comparison."""
    names = _present(rows, specs)
    sent = [{name: row[name] for name in names} for row in rows]
    tensors: list[httpclient.InferInput] = []
    for name in names:
        spec = specs[name]
        values = [row[name] for row in rows]
        if spec["type"] != "number":
            array = np.array([str(v).encode() for v in values], dtype=np.object_)
            datatype = "BYTES"
        elif spec.get("integer"):
            array = np.array(values, dtype=np.int64)
            datatype = "INT64"
        elif name in fp32:
            array = np.array(values, dtype=np.float32)
            datatype = "FP32"
            for row, value in zip(sent, array.tolist(), strict=True):
                row[name] = value
        else:
            array = np.array(values, dtype=np.float64)
            datatype = "FP64"
        tensor = httpclient.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return tensors, sent


def _rest(http: httpx.Client, model: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = http.post(f"/models/{model}/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def _json_tensor(name: str, datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


def _json_request(rows: list[dict[str, Any]], specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    inputs = []
    for name in _present(rows, specs):
        datatype = "FP64" if specs[name]["type"] == "number" else "BYTES"
        inputs.append(_json_tensor(name, datatype, [row[name] for row in rows]))
    return {"inputs": inputs}


def _assert_oip_error(response: httpx.Response, status: int | tuple[int, ...], *needles: str) -> str:
    expected = status if isinstance(status, tuple) else (status,)
    assert response.status_code in expected, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    assert isinstance(body["error"], str)
    assert body["error"]
    for needle in needles:
        assert needle in body["error"], (needle, body["error"])
    error: str = body["error"]
    return error


# --- health and metadata ------------------------------------------------------------------------------------
def test_server_live_and_ready_when_started(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live() is True
    assert triton.is_server_ready() is True


def test_model_ready_for_each_served_model(triton: httpclient.InferenceServerClient, co2_doc: dict[str, Any]) -> None:
    assert triton.is_model_ready("co2") is True
    assert triton.is_model_ready("penguins") is True
    assert triton.is_model_ready("co2", co2_doc["version"]) is True
    assert triton.is_model_ready("no_such_model") is False
    assert triton.is_model_ready("co2", "9.9.9") is False


def test_server_metadata_names_binary_extension_when_asked(triton: httpclient.InferenceServerClient) -> None:
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "tabserve"
    assert isinstance(metadata["version"], str)
    assert metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_lists_every_input_with_datatype_for_co2(
    triton: httpclient.InferenceServerClient, co2_doc: dict[str, Any]
) -> None:
    metadata = triton.get_model_metadata("co2")
    assert metadata["name"] == "co2"
    assert co2_doc["version"] in metadata["versions"]
    inputs = {t["name"]: t for t in metadata["inputs"]}
    specs = _specs(co2_doc)
    assert list(inputs) == list(specs)
    for name, spec in specs.items():
        want = "FP64" if spec["type"] == "number" else "BYTES"
        assert inputs[name]["datatype"] == want, name
        assert inputs[name]["shape"] == [-1]
        assert inputs[name]["parameters"]["optional"] is (not spec["required"])
    assert {"make", "model", "vehicle_class", "transmission", "fuel_type"} <= {
        n for n, t in inputs.items() if t["datatype"] == "BYTES"
    }
    assert {"engine_size_l", "cylinders"} <= {n for n, t in inputs.items() if t["datatype"] == "FP64"}
    outputs = {t["name"]: t for t in metadata["outputs"]}
    assert list(outputs) == REGRESSION_OUTPUTS
    assert [outputs[n]["datatype"] for n in REGRESSION_OUTPUTS] == ["FP64", "FP64", "FP64", "BOOL"]


def test_model_metadata_has_probabilities_output_for_penguins(
    triton: httpclient.InferenceServerClient, penguins_doc: dict[str, Any]
) -> None:
    metadata = triton.get_model_metadata("penguins")
    assert [t["name"] for t in metadata["inputs"]] == [s["name"] for s in penguins_doc["inputs"]]
    datatypes = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    assert datatypes == {
        "bill_length_mm": "FP64",
        "bill_depth_mm": "FP64",
        "flipper_length_mm": "FP64",
        "body_mass_g": "FP64",
        "island": "BYTES",
        "sex": "BYTES",
    }
    outputs = {t["name"]: t for t in metadata["outputs"]}
    assert list(outputs) == CLASSIFICATION_OUTPUTS
    k = len(penguins_doc["output"]["classes"])
    assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP64", "shape": [-1, k]}


def test_model_metadata_versioned_route_when_version_served(
    triton: httpclient.InferenceServerClient, co2_doc: dict[str, Any]
) -> None:
    metadata = triton.get_model_metadata("co2", model_version=co2_doc["version"])
    assert metadata["versions"] == [co2_doc["version"]]


# --- inference: co2 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_rest_predict_for_co2(
    triton: httpclient.InferenceServerClient, http: httpx.Client, co2_doc: dict[str, Any], binary: bool
) -> None:
    specs = _specs(co2_doc)
    rows = _co2_rows(co2_doc)
    tensors, sent = _tensors(rows, specs, binary=binary, fp32=frozenset({"engine_size_l"}))
    assert {t.datatype() for t in tensors} == {"BYTES", "INT64", "FP32", "FP64"}
    result = triton.infer("co2", tensors, request_id=f"co2-{binary}")
    response = result.get_response()
    assert response["id"] == f"co2-{binary}"
    assert response["model_name"] == "co2"
    assert response["model_version"] == co2_doc["version"]
    assert [o["name"] for o in response["outputs"]] == REGRESSION_OUTPUTS
    expected = _rest(http, "co2", sent)
    assert result.as_numpy("prediction").tolist() == [p["prediction"] for p in expected]
    assert result.as_numpy("lower").tolist() == [p["interval"]["lower"] for p in expected]
    assert result.as_numpy("upper").tolist() == [p["interval"]["upper"] for p in expected]
    assert result.as_numpy("out_of_distribution").tolist() == [p["out_of_distribution"] for p in expected]
    lower, prediction, upper = (result.as_numpy(n) for n in ("lower", "prediction", "upper"))
    assert np.all(lower <= prediction)
    assert np.all(prediction <= upper)
    assert len(set(prediction.tolist())) == len(rows)  # the rows really differ: not one answer broadcast


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_returns_only_requested_outputs_when_outputs_given(
    triton: httpclient.InferenceServerClient, http: httpx.Client, co2_doc: dict[str, Any], binary: bool
) -> None:
    tensors, sent = _tensors(_co2_rows(co2_doc), _specs(co2_doc), binary=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("upper", "prediction")]
    result = triton.infer("co2", tensors, outputs=outputs, request_id="req-outputs")
    response = result.get_response()
    assert response["id"] == "req-outputs"
    assert [o["name"] for o in response["outputs"]] == ["upper", "prediction"]
    assert result.as_numpy("lower") is None
    expected = _rest(http, "co2", sent)
    assert result.as_numpy("prediction").tolist() == [p["prediction"] for p in expected]
    assert result.as_numpy("upper").tolist() == [p["interval"]["upper"] for p in expected]


def test_infer_accepts_omitted_optional_inputs_for_co2(
    triton: httpclient.InferenceServerClient, http: httpx.Client, co2_doc: dict[str, Any]
) -> None:
    specs = _specs(co2_doc)
    required = {n for n, s in specs.items() if s["required"]}
    optional = set(specs) - required
    assert optional, "co2 has optional inputs (model year, fuel consumption)"
    rows = [{k: v for k, v in row.items() if k in required} for row in _co2_rows(co2_doc)]
    tensors, sent = _tensors(rows, specs, binary=True)
    assert {t.name() for t in tensors} == required
    result = triton.infer("co2", tensors)
    expected = _rest(http, "co2", sent)
    assert result.as_numpy("prediction").tolist() == [p["prediction"] for p in expected]
    assert result.as_numpy("lower").tolist() == [p["interval"]["lower"] for p in expected]
    assert result.as_numpy("upper").tolist() == [p["interval"]["upper"] for p in expected]
    full = _rest(http, "co2", _co2_rows(co2_doc))
    widths = [p["interval"]["upper"] - p["interval"]["lower"] for p in expected]
    full_widths = [p["interval"]["upper"] - p["interval"]["lower"] for p in full]
    assert widths != full_widths  # the interval honestly reflects the missing inputs


def test_infer_on_versioned_route_when_version_served(
    triton: httpclient.InferenceServerClient, http: httpx.Client, co2_doc: dict[str, Any]
) -> None:
    version = co2_doc["version"]
    tensors, sent = _tensors(_co2_rows(co2_doc), _specs(co2_doc), binary=True)
    result = triton.infer("co2", tensors, model_version=version, request_id="versioned")
    assert result.get_response()["model_version"] == version
    assert result.get_response()["id"] == "versioned"
    assert result.as_numpy("prediction").tolist() == [p["prediction"] for p in _rest(http, "co2", sent)]
    raw = http.post(f"/v2/models/co2/versions/{version}/infer", json=_json_request(sent, _specs(co2_doc)))
    assert raw.status_code == 200, raw.text
    assert raw.json()["model_version"] == version


def test_infer_echoes_request_id_when_given_raw(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    body = _json_request([co2_doc["example_request"]], _specs(co2_doc))
    body["id"] = "my-oip-id-42"
    response = http.post("/v2/models/co2/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "my-oip-id-42"
    without = http.post("/v2/models/co2/infer", json=_json_request([co2_doc["example_request"]], _specs(co2_doc)))
    assert without.status_code == 200
    assert "id" not in without.json()


def test_infer_accepts_n_by_1_shape_for_co2(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    rows = _co2_rows(co2_doc)
    body = _json_request(rows, _specs(co2_doc))
    for tensor in body["inputs"]:
        tensor["shape"] = [len(rows), 1]
        tensor["data"] = [[v] for v in tensor["data"]]
    response = http.post("/v2/models/co2/infer", json=body)
    assert response.status_code == 200, response.text
    prediction = next(o for o in response.json()["outputs"] if o["name"] == "prediction")
    assert prediction["data"] == [p["prediction"] for p in _rest(http, "co2", rows)]


# --- inference: penguins ------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_returns_probabilities_matrix_for_penguins(
    triton: httpclient.InferenceServerClient, http: httpx.Client, penguins_doc: dict[str, Any], binary: bool
) -> None:
    specs = _specs(penguins_doc)
    rows = _penguin_rows(penguins_doc)
    tensors, sent = _tensors(rows, specs, binary=binary, fp32=frozenset({"bill_depth_mm"}))
    assert "island" not in {t.name() for t in tensors}  # optional, absent from one row: left out
    result = triton.infer("penguins", tensors, request_id="penguins-1")
    response = result.get_response()
    assert response["id"] == "penguins-1"
    assert [o["name"] for o in response["outputs"]] == CLASSIFICATION_OUTPUTS
    classes = penguins_doc["output"]["classes"]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(rows), len(classes))
    expected = _rest(http, "penguins", sent)
    assert probabilities.tolist() == [[p["probabilities"][c] for c in classes] for p in expected]
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    predictions = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("prediction").tolist()]
    assert predictions == [p["prediction"] for p in expected]
    assert predictions == ["Adelie", "Gentoo", "Chinstrap"]
    sets = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("prediction_set").tolist()]
    assert sets == [",".join(p["prediction_set"]) for p in expected]


# --- errors -------------------------------------------------------------------------------------------------
def test_infer_answers_404_error_for_unknown_model(http: httpx.Client, penguins_doc: dict[str, Any]) -> None:
    body = _json_request(_penguin_rows(penguins_doc)[:1], _specs(penguins_doc))
    _assert_oip_error(http.post("/v2/models/no_such_model/infer", json=body), 404, "no_such_model")
    _assert_oip_error(http.get("/v2/models/no_such_model"), 404, "no_such_model")
    _assert_oip_error(http.get("/v2/models/no_such_model/ready"), 404, "no_such_model")


def test_infer_raises_404_in_tritonclient_for_unknown_model(triton: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("bill_length_mm", [1], "FP64")
    tensor.set_data_from_numpy(np.array([40.0]))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("no_such_model", [tensor])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as meta:
        triton.get_model_metadata("no_such_model")
    assert meta.value.status() == "404"


def test_infer_answers_404_error_for_unknown_version(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    body = _json_request([co2_doc["example_request"]], _specs(co2_doc))
    _assert_oip_error(http.post("/v2/models/co2/versions/9.9.9/infer", json=body), 404, "9.9.9")
    _assert_oip_error(http.get("/v2/models/co2/versions/9.9.9"), 404, "9.9.9")
    _assert_oip_error(http.get("/v2/models/co2/versions/9.9.9/ready"), 404, "9.9.9")


def test_infer_answers_400_error_for_shape_mismatch(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    body = _json_request([co2_doc["example_request"]], _specs(co2_doc))
    wrong = copy.deepcopy(body)
    wrong["inputs"][0]["shape"] = [2]
    _assert_oip_error(http.post("/v2/models/co2/infer", json=wrong), 400, wrong["inputs"][0]["name"])
    matrix = copy.deepcopy(body)
    matrix["inputs"][0]["shape"] = [1, 2]
    matrix["inputs"][0]["data"] = [[matrix["inputs"][0]["data"][0], matrix["inputs"][0]["data"][0]]]
    _assert_oip_error(http.post("/v2/models/co2/infer", json=matrix), 400, matrix["inputs"][0]["name"])
    ragged = _json_request(_co2_rows(co2_doc), _specs(co2_doc))
    ragged["inputs"][1]["shape"] = [2]
    ragged["inputs"][1]["data"] = ragged["inputs"][1]["data"][:2]
    _assert_oip_error(http.post("/v2/models/co2/infer", json=ragged), 400, ragged["inputs"][1]["name"])


def test_infer_answers_422_error_for_unknown_input(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    body = _json_request([co2_doc["example_request"]], _specs(co2_doc))
    body["inputs"].append(_json_tensor("engine_sise", "FP64", [2.0]))
    _assert_oip_error(http.post("/v2/models/co2/infer", json=body), 422, "engine_sise")


def test_infer_answers_422_error_for_string_in_numeric_input(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    body = _json_request([co2_doc["example_request"]], _specs(co2_doc))
    tensor = next(t for t in body["inputs"] if t["name"] == "engine_size_l")
    tensor["datatype"] = "BYTES"
    tensor["data"] = ["two litres"]
    _assert_oip_error(http.post("/v2/models/co2/infer", json=body), 422, "engine_size_l")


def test_infer_raises_4xx_in_tritonclient_for_string_in_numeric_input(
    triton: httpclient.InferenceServerClient, co2_doc: dict[str, Any]
) -> None:
    specs = _specs(co2_doc)
    tensors, _ = _tensors([co2_doc["example_request"]], specs, binary=True)
    index = next(i for i, t in enumerate(tensors) if t.name() == "engine_size_l")
    text = httpclient.InferInput("engine_size_l", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"2.5L"], dtype=np.object_), binary_data=True)
    tensors[index] = text
    with pytest.raises(InferenceServerException) as info:
        triton.infer("co2", tensors)
    assert info.value.status() == "422"
    assert "engine_size_l" in info.value.message()


def test_infer_raises_422_in_tritonclient_for_nan_in_required_input(
    triton: httpclient.InferenceServerClient, co2_doc: dict[str, Any]
) -> None:
    rows = [dict(co2_doc["example_request"])]
    rows[0]["engine_size_l"] = float("nan")
    tensors, _ = _tensors(rows, _specs(co2_doc), binary=True)
    with pytest.raises(InferenceServerException) as info:
        triton.infer("co2", tensors)
    assert info.value.status() == "422"
    assert "engine_size_l" in info.value.message()


def test_infer_answers_422_error_for_missing_required_input(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    body = _json_request([co2_doc["example_request"]], _specs(co2_doc))
    body["inputs"] = [t for t in body["inputs"] if t["name"] != "make"]
    _assert_oip_error(http.post("/v2/models/co2/infer", json=body), 422, "make")


def test_infer_answers_400_error_for_malformed_request(http: httpx.Client, co2_doc: dict[str, Any]) -> None:
    _assert_oip_error(
        http.post("/v2/models/co2/infer", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    _assert_oip_error(http.post("/v2/models/co2/infer", json={"inputs": []}), 400, "inputs")
    _assert_oip_error(http.post("/v2/models/co2/infer", json=[1, 2]), 400)
    unknown_output = _json_request([co2_doc["example_request"]], _specs(co2_doc))
    unknown_output["outputs"] = [{"name": "nope"}]
    _assert_oip_error(http.post("/v2/models/co2/infer", json=unknown_output), 400, "nope")


def test_infer_answers_413_error_when_body_over_limit(http: httpx.Client) -> None:
    big = b'{"inputs": [{"name": "model", "datatype": "BYTES", "shape": [1], "data": ["' + b"x" * 1_100_000 + b'"]}]}'
    response = http.post("/v2/models/co2/infer", content=big, headers={"content-type": "application/json"})
    _assert_oip_error(response, 413)


def test_v2_health_routes_answer_when_ready(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    ready = http.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}


def test_metrics_omit_model_label_when_model_unknown(http: httpx.Client) -> None:
    names = [f"bogus_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for name in names:
        assert http.post(f"/v2/models/{name}/infer", json={"inputs": []}).status_code in (400, 404)
        assert http.post(f"/models/{name}/predict", json={}).status_code == 404
    text = http.get("/metrics").text
    assert not [line for line in text.splitlines() if any(name in line for name in names)]
