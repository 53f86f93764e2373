"""OpenAPI with a real request schema and a working example per model, taken from the loaded manifests."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tabserve.api.openapi_coverage import document_coverage
from tabserve.manifest import CategoryInput, Manifest, NumericInput


def instance_schema(manifest: Manifest) -> dict[str, Any]:
    """JSON Schema of one instance (numbers may also be ``{"value", "unit"}`` objects)."""
    properties: dict[str, Any] = {}
    for spec in manifest.inputs:
        if isinstance(spec, NumericInput):
            number = {"type": "integer" if spec.integer else "number", "description": f"in {spec.unit}"}
            with_unit = {
                "type": "object",
                "required": ["value", "unit"],
                "properties": {"value": {"type": "number"}, "unit": {"type": "string", "enum": spec.units}},
                "additionalProperties": False,
            }
            prop: dict[str, Any] = {"description": spec.description, "oneOf": [number, with_unit]}
        elif isinstance(spec, CategoryInput):
            prop = {"type": "string", "description": spec.description, "examples": spec.categories[:10]}
        else:
            prop = {"type": "string", "description": spec.description, "maxLength": spec.max_length}
        properties[spec.name] = prop
    return {
        "type": "object",
        "title": f"{manifest.name} instance",
        "properties": properties,
        "required": [s.name for s in manifest.inputs if s.required],
        "additionalProperties": False,
    }


def _request_body(manifest: Manifest) -> dict[str, Any]:
    instance = instance_schema(manifest)
    batch = {
        "type": "object",
        "required": ["instances"],
        "properties": {"instances": {"type": "array", "items": instance}},
    }
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


def _predict_operation(operation_id: str, summary: str, manifest: Manifest | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["predict"],
        "operationId": operation_id,
        "summary": summary,
        "description": PREDICT_DESCRIPTION,
        "parameters": [LEVEL_PARAMETER],
        "responses": {
            "200": {
                "description": "The prediction(s)",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "422": {"description": "Invalid input, one entry per field", "content": {"application/problem+json": {}}},
        },
    }
    if manifest is not None:
        operation["requestBody"] = _request_body(manifest)
    return operation


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that documents each model's predict body from its manifest."""

    def build() -> dict[str, Any]:
        ctx = app.state.ctx
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        paths = schema.setdefault("paths", {})
        models = {n: s.serving.manifest for n, s in ctx.registry.states().items() if s.serving is not None}
        default = ctx.settings.default_model
        paths["/predict"] = {
            "post": _predict_operation(
                "predict_default", f"Predict with the default model ({default})", models.get(default)
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
            paths[f"/models/{name}/predict"] = {"post": _predict_operation(f"predict_{name}", summary, manifest)}
        document_coverage(paths)
        if ctx.started:
            app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
