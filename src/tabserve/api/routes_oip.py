"""Open Inference Protocol (KServe V2) REST routes, so existing clients (tritonclient, KServe) work unchanged.

One named input tensor per feature (BYTES for categories and text, FP32/FP64/INT32/INT64 for numbers; an
optional input may be left out), shape ``[n]`` or ``[n, 1]``. JSON tensors and the binary tensor extension
(``Inference-Header-Content-Length``) are accepted; responses are JSON. Errors are ``{"error": "..."}``.
The rows go through the same ``PredictionService`` as ``/predict``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from tabserve import __version__
from tabserve.api.body import parse_json, read_body
from tabserve.api.context import AppContext, ContextDep
from tabserve.errors import BadRequestError, RequestValidationError, TabserveError
from tabserve.manifest import ClassificationOutput, InputSpec, Manifest, NumericInput
from tabserve.registry import ServingModel

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

_NUMPY = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "INT16": "<i2", "INT8": "i1", "UINT8": "u1"}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def oip_error(exc: TabserveError) -> Response:
    detail = exc.detail
    if isinstance(exc, RequestValidationError):
        detail = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
    return _json({"error": detail}, exc.status)


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return _json({"name": "tabserve", "version": __version__, "extensions": ["binary_tensor_data"]})


@router.get("/health/live", summary="Server liveness")
async def live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="Server readiness (200 ready, 400 not ready)")
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
    state: dict[str, Any] = request.scope["state"]
    try:
        raw = await read_body(request.receive, request.headers.get("content-length"), ctx.settings.max_body_bytes)
        header, blobs = _split_binary(raw, request.headers.get("inference-header-content-length"))
        document = parse_json(header)
        if type(document) is not dict:
            raise BadRequestError("the inference request must be a JSON object")
        instances = _instances(document, blobs)
        parameters = document.get("parameters") or {}
        level = parameters.get("level") if isinstance(parameters, dict) else None
        model, answers = ctx.service.predict_instances(
            name, instances, request_id=state["request_id"], level=level, version=version, info=state
        )
        outputs = _outputs(model, answers, document.get("outputs"))
    except TabserveError as exc:
        return oip_error(exc)
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if "id" in document:
        body["id"] = document["id"]
    return _json(body)


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


def _instances(document: dict[str, Any], blobs: bytes) -> list[dict[str, Any]]:
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
    n = rows or 0
    return [{name: col[i] for name, col in columns.items()} for i in range(n)]


def _tensor_values(tensor: dict[str, Any], blobs: bytes, offset: int) -> tuple[list[Any], int]:
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
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


def _outputs(model: ServingModel, answers: list[dict[str, Any]], requested: Any) -> list[dict[str, Any]]:
    n = len(answers)
    if model.confidence.task == "classification":
        classes = model.confidence.classes
        tensors = {
            "prediction": ("BYTES", [n], [a["prediction"] for a in answers]),
            "probabilities": (
                "FP64",
                [n, len(classes)],
                [a["probabilities"][c] for a in answers for c in classes],
            ),
            "prediction_set": ("BYTES", [n], [",".join(a["prediction_set"]) for a in answers]),
        }
    else:
        tensors = {
            "prediction": ("FP64", [n], [a["prediction"] for a in answers]),
            "lower": ("FP64", [n], [a["interval"]["lower"] for a in answers]),
            "upper": ("FP64", [n], [a["interval"]["upper"] for a in answers]),
        }
    tensors["out_of_distribution"] = ("BOOL", [n], [a["out_of_distribution"] for a in answers])
    names = list(tensors)
    if isinstance(requested, list) and requested:
        wanted = [o.get("name") for o in requested if isinstance(o, dict)]
        unknown = [w for w in wanted if w not in tensors]
        if unknown:
            raise BadRequestError(f"unknown output(s) {unknown}; available: {names}")
        names = [w for w in wanted if isinstance(w, str)]
    return [{"name": k, "datatype": tensors[k][0], "shape": tensors[k][1], "data": tensors[k][2]} for k in names]
