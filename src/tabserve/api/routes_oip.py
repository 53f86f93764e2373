"""Open Inference Protocol (KServe V2) REST routes, so existing clients (tritonclient, KServe) work unchanged.

One named input tensor per feature (BYTES for categories and text, FP32/FP64/INT32/INT64 for numbers; an
optional input may be left out), shape ``[n]`` or ``[n, 1]``. JSON tensors and the binary tensor extension
(``Inference-Header-Content-Length``) are accepted; responses are JSON. Errors are ``{"error": "..."}``.
The rows go through the same ``PredictionService`` as ``/predict``: the tensors are handed over as columns
(``features.batch.ColumnRows``, no per-row object unless a row must be checked on its own) and the output
tensors are written from the answer columns (numpy arrays, serialised by orjson). ``infer`` is served by the
fast ASGI layer of ``api/routes_predict.py`` under ``tabserve serve`` (``infer_target``, ``infer_payload``); the
FastAPI route below documents it and answers under any other setup, through the same ``infer_payload``.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive

from tabserve import __version__
from tabserve.api.body import parse_json, read_body
from tabserve.api.context import AppContext, ContextDep
from tabserve.confidence import BatchAnswers
from tabserve.errors import BadRequestError, RequestValidationError, TabserveError
from tabserve.features.batch import ColumnRows
from tabserve.manifest import ClassificationOutput, InputSpec, Manifest, NumericInput
from tabserve.registry import ServingModel
from tabserve.service import PredictionService

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

_NUMPY = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "INT16": "<i2", "INT8": "i1", "UINT8": "u1"}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_json(exc: TabserveError) -> bytes:
    """``{"error": "..."}``; a validation error lists every field's message."""
    detail = exc.detail
    if isinstance(exc, RequestValidationError):
        detail = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
    return orjson.dumps({"error": detail})


def oip_error(exc: TabserveError) -> Response:
    return Response(error_json(exc), status_code=exc.status, media_type="application/json")


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return _json({"name": "tabserve", "version": __version__, "extensions": ["binary_tensor_data"]})


@router.get("/health/live", summary="Server liveness")
async def live() -> Response:
    return _json({"live": True})


@router.get(
    "/health/ready",
    summary="Server readiness (200 ready, 400 not ready)",
    responses={400: {"description": "Not ready", "content": {"application/json": {}}}},
)
async def server_ready(ctx: ContextDep) -> Response:
    ok = ctx.started and ctx.registry.ready
    return _json({"ready": ok}, 200 if ok else 400)


def _tensor_type(spec: InputSpec) -> str:
    return "FP64" if isinstance(spec, NumericInput) else "BYTES"


def model_metadata(model: ServingModel) -> dict[str, Any]:
    manifest = model.manifest
    inputs = [
        {"name": s.name, "datatype": _tensor_type(s), "shape": [-1], "parameters": {"optional": not s.required}}
        for s in manifest.inputs
    ]
    return {
        "name": manifest.name,
        "versions": [manifest.version],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": _output_specs(manifest),
    }


def _output_specs(manifest: Manifest) -> list[dict[str, Any]]:
    if isinstance(manifest.output, ClassificationOutput):
        k = len(manifest.output.classes)
        return [
            {"name": "prediction", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, k]},
            {"name": "prediction_set", "datatype": "BYTES", "shape": [-1]},
            {"name": "out_of_distribution", "datatype": "BOOL", "shape": [-1]},
        ]
    return [
        {"name": "prediction", "datatype": "FP64", "shape": [-1]},
        {"name": "lower", "datatype": "FP64", "shape": [-1]},
        {"name": "upper", "datatype": "FP64", "shape": [-1]},
        {"name": "out_of_distribution", "datatype": "BOOL", "shape": [-1]},
    ]


def _model(ctx: AppContext, name: str, version: str | None) -> ServingModel:
    return ctx.registry.get(name, version)


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model version metadata")
async def get_metadata(name: str, ctx: ContextDep, version: str | None = None) -> Response:
    try:
        return _json(model_metadata(_model(ctx, name, version)))
    except TabserveError as exc:
        return oip_error(exc)


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness")
async def get_model_ready(name: str, ctx: ContextDep, version: str | None = None) -> Response:
    try:
        model = _model(ctx, name, version)
    except TabserveError as exc:
        return oip_error(exc)
    return _json({"name": model.name, "version": model.version, "ready": True})


@router.post("/models/{name}/infer", summary="Inference")
@router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version")
async def infer(name: str, request: Request, ctx: ContextDep, version: str | None = None) -> Response:
    headers = request.headers
    status, payload = await infer_payload(
        ctx.service,
        name,
        version,
        request.receive,
        headers.get("content-length"),
        headers.get("inference-header-content-length"),
        ctx.settings.max_body_bytes,
        request.scope["state"],
    )
    return Response(payload, status_code=status, media_type="application/json")


INFER = "/v2/models/{name}/infer"
INFER_VERSION = "/v2/models/{name}/versions/{version}/infer"


def infer_target(path: str) -> tuple[str, str | None, str] | None:
    """(model name, version or None, route template) when ``path`` is an infer route, else None."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[11:-6].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None, INFER
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2], INFER_VERSION
    return None


async def infer_payload(
    service: PredictionService,
    name: str,
    version: str | None,
    receive: Receive,
    content_length: str | None,
    header_length: str | None,
    max_body_bytes: int,
    state: dict[str, Any],
) -> tuple[int, bytes]:
    """One inference request, read from ``receive``: (status, JSON body), errors as ``{"error": ...}``."""
    try:
        raw = await read_body(receive, content_length, max_body_bytes)
        header, blobs = _split_binary(raw, header_length)
        document = parse_json(header)
        if type(document) is not dict:
            raise BadRequestError("the inference request must be a JSON object")
        instances = _instances(document, blobs)
        parameters = document.get("parameters")
        if parameters is not None and type(parameters) is not dict:
            raise BadRequestError("'parameters' must be an object")
        level = parameters.get("level") if parameters else None
        if level is not None and (type(level) is bool or not isinstance(level, int | float)):
            raise BadRequestError("parameters.level must be a number (one of the model's levels)")
        result = service.predict_instances(
            name, instances, request_id=state.get("request_id", ""), level=level, version=version, info=state
        )
        outputs = _outputs(result.model, result.answers, document.get("outputs"))
    except TabserveError as exc:
        return exc.status, error_json(exc)
    started = time.perf_counter()
    model = result.model
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if "id" in document:
        body["id"] = document["id"]
    payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)  # the output tensors are numpy arrays
    timings = state.get("timings")
    if timings is not None:
        timings.serialise += time.perf_counter() - started
    return 200, payload


def _split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return raw, b""
    try:
        n = int(header_length)
    except ValueError as exc:
        raise BadRequestError("Inference-Header-Content-Length is not a number") from exc
    if n < 0 or n > len(raw):
        raise BadRequestError("Inference-Header-Content-Length is larger than the body")
    return raw[:n], raw[n:]


def _instances(document: dict[str, Any], blobs: bytes) -> ColumnRows:
    """The input tensors as the batch's columns (one list of values per input)."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError("'inputs' must be a non-empty array of tensors")
    columns: dict[str, list[Any]] = {}
    offset = 0
    rows: int | None = None
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequestError("every input tensor needs a 'name'")
        name = tensor["name"]
        values, offset = _tensor_values(tensor, blobs, offset)
        if rows is None:
            rows = len(values)
        elif len(values) != rows:
            raise BadRequestError(f"input {name!r} has {len(values)} rows, others have {rows}")
        columns[name] = values
    return ColumnRows(columns, rows or 0)


def _tensor_values(tensor: dict[str, Any], blobs: bytes, offset: int) -> tuple[list[Any], int]:
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if type(datatype) is not str:  # (an object here was a 500: unhashable in the lookups below)
        raise BadRequestError(f"input {name!r}: 'datatype' must be a string such as 'FP64' or 'BYTES'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or not shape:
        raise BadRequestError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise BadRequestError(f"input {name!r}: shape must be [n] or [n, 1], one value per row")
    count = shape[0]
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(blobs):
            raise BadRequestError(f"input {name!r}: binary_data_size does not fit the body")
        chunk = blobs[offset : offset + size]
        values = _decode_binary(name, datatype, chunk, count)
        return values, offset + size
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequestError(f"input {name!r}: 'data' must be an array")
    flat = _flatten(data)
    if len(flat) != count:
        raise BadRequestError(f"input {name!r}: shape says {count} values, data has {len(flat)}")
    if datatype == "BYTES" or datatype in _NUMPY or datatype == "BOOL":
        return flat, offset
    raise BadRequestError(f"input {name!r}: unsupported datatype {datatype!r}")


def _flatten(data: list[Any]) -> list[Any]:
    if data and isinstance(data[0], list):
        return [v for row in data for v in (row if isinstance(row, list) else [row])]
    return data


def _decode_binary(name: str, datatype: Any, chunk: bytes, count: int) -> list[Any]:
    if datatype == "BYTES":
        values: list[Any] = []
        pos = 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise BadRequestError(f"input {name!r}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", chunk, pos)
            pos += 4
            values.append(chunk[pos : pos + length].decode("utf-8", errors="replace"))
            pos += length
    elif datatype in _NUMPY:
        dtype = np.dtype(_NUMPY[datatype])
        if len(chunk) % dtype.itemsize:
            raise BadRequestError(f"input {name!r}: binary size is not a multiple of {datatype}")
        values = np.frombuffer(chunk, dtype=dtype).tolist()
    else:
        raise BadRequestError(f"input {name!r}: unsupported datatype {datatype!r}")
    if len(values) != count:
        raise BadRequestError(f"input {name!r}: shape says {count} values, binary data has {len(values)}")
    return values


def _outputs(model: ServingModel, answers: BatchAnswers, requested: Any) -> list[dict[str, Any]]:
    n = answers.rows
    tensors: dict[str, tuple[str, list[int], Any]]
    if answers.interval is None:
        classes = model.confidence.classes
        rows = answers.dicts()
        tensors = {
            "prediction": ("BYTES", [n], [a["prediction"] for a in rows]),
            "probabilities": ("FP64", [n, len(classes)], [a["probabilities"][c] for a in rows for c in classes]),
            "prediction_set": ("BYTES", [n], [",".join(a["prediction_set"]) for a in rows]),
        }
    else:
        prediction, lower, upper = answers.interval
        tensors = {
            "prediction": ("FP64", [n], prediction),
            "lower": ("FP64", [n], lower),
            "upper": ("FP64", [n], upper),
        }
    tensors["out_of_distribution"] = ("BOOL", [n], answers.out_of_distribution)
    names = list(tensors)
    if isinstance(requested, list) and requested:
        wanted = [o.get("name") for o in requested if isinstance(o, dict)]
        unknown = [w for w in wanted if w not in tensors]
        if unknown:
            raise BadRequestError(f"unknown output(s) {unknown}; available: {names}")
        names = [w for w in wanted if isinstance(w, str)]
    return [{"name": k, "datatype": tensors[k][0], "shape": tensors[k][1], "data": tensors[k][2]} for k in names]
