"""OpenAPI with a real request schema and a working example per model, taken from the loaded manifests."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tabserve.api.auth import document_security
from tabserve.api.openapi_coverage import document_coverage
from tabserve.api.openapi_inputs import batch_schema, infer_request_schema, instance_schema
from tabserve.api.openapi_rules import apply_rules
from tabserve.manifest import Manifest

__all__ = ["install_openapi", "instance_schema"]


def _request_body(manifest: Manifest, max_batch: int) -> dict[str, Any]:
    instance = instance_schema(manifest)
    batch = batch_schema(manifest, max_batch)
    example = manifest.example_request
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [instance, batch]},
                "examples": {
                    "one": {"summary": f"one {manifest.name} instance", "value": example},
                    "batch": {"summary": "a batch of two", "value": {"instances": [example, example]}},
                },
            }
        },
    }


LEVEL_PARAMETER = {
    "name": "level",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "default": 0.9},
    "description": "Confidence level of the interval / prediction set (one of the model's levels)",
}
PREDICT_DESCRIPTION = (
    'One instance as a JSON object, or a batch as `{"instances": [...]}`. Numbers in the canonical unit, or '
    '`{"value": x, "unit": "..."}`. Returns the prediction with its conformal interval (regression) or '
    "probabilities and prediction set (classification), warnings and the out-of-distribution flag. "
    "Errors are application/problem+json."
)
PREDICTION_SCHEMA = {
    "type": "object",
    "required": ["request_id", "model"],
    "properties": {"request_id": {"type": "string", "minLength": 1}, "model": {"type": "object"}},
}
FEEDBACK = "#/paths/~1feedback/post"


def _level(manifest: Manifest | None) -> dict[str, Any]:
    if manifest is None:
        return LEVEL_PARAMETER
    levels = sorted(manifest.conformal.levels)
    default = 0.9 if 0.9 in levels else levels[len(levels) // 2]  # as confidence.Confidence.default_level
    schema = {"type": "number", "enum": levels, "default": default}
    return {**LEVEL_PARAMETER, "schema": schema}


def _predict_operation(
    operation_id: str, summary: str, manifest: Manifest | None, max_batch: int = 10_000
) -> dict[str, Any]:
    ok: dict[str, Any] = {
        "description": "The prediction(s)",
        "content": {"application/json": {"schema": PREDICTION_SCHEMA}},
    }
    if manifest is not None:  # predict -> feedback on the logged prediction (schemathesis follows it)
        ok["links"] = {
            "feedback": {
                "operationRef": FEEDBACK,
                "requestBody": {"request_id": "$response.body#/request_id", "index": 0},
            }
        }
    operation: dict[str, Any] = {
        "tags": ["predict"],
        "operationId": operation_id,
        "summary": summary,
        "description": PREDICT_DESCRIPTION,
        "parameters": [_level(manifest)],
        "responses": {"200": ok},
    }
    if manifest is not None:
        operation["requestBody"] = _request_body(manifest, max_batch)
    return operation


def _infer_paths(paths: dict[str, Any], models: dict[str, Manifest]) -> None:
    """The Open Inference Protocol infer routes, one per served model with its tensors (generic when none)."""
    generic = {p: paths.pop(p) for p in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")}
    if not models:
        paths.update(generic)
        return
    for name, manifest in sorted(models.items()):
        body = {"required": True, "content": {"application/json": {"schema": infer_request_schema(manifest)}}}
        ok = {"description": "The output tensors", "content": {"application/json": {"schema": {"type": "object"}}}}
        for template, operation in generic.items():
            op = dict(operation["post"])
            op["operationId"] = f"{op.get('operationId', 'infer')}_{name}"
            op["parameters"] = [  # the model is in the path now; a version only as a path parameter
                {**p, "schema": {"type": "string", "enum": [manifest.version]}} if p.get("name") == "version" else p
                for p in op.get("parameters", [])
                if p.get("name") != "name" and (p.get("in") == "path" or p.get("name") != "version")
            ]
            op["requestBody"] = body
            op["responses"] = {"200": ok}
            paths[template.replace("{name}", name)] = {"post": op}


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that documents each model's predict body from its manifest, and every
    operation's error answers (``openapi_rules``)."""

    def build() -> dict[str, Any]:
        ctx = app.state.ctx
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        paths = schema.setdefault("paths", {})
        models = {n: s.serving.manifest for n, s in ctx.registry.states().items() if s.serving is not None}
        default = ctx.settings.default_model
        max_batch = ctx.settings.max_batch
        paths["/predict"] = {
            "post": _predict_operation(
                "predict_default", f"Predict with the default model ({default})", models.get(default), max_batch
            )
        }
        if not models:
            generic = _predict_operation("predict_model", "Predict with a named model", None)
            generic["parameters"] = [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                LEVEL_PARAMETER,
            ]
            paths["/models/{name}/predict"] = {"post": generic}
        for name, manifest in sorted(models.items()):
            summary = f"Predict with {name} {manifest.version}"
            operation = _predict_operation(f"predict_{name}", summary, manifest, max_batch)
            paths[f"/models/{name}/predict"] = {"post": operation}
        _infer_paths(paths, models)
        document_coverage(paths)
        if ctx.auth is not None:
            document_security(schema, ctx.auth)
        apply_rules(schema)
        if ctx.started:
            app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
