"""OpenAPI with a real request schema and a working example per model, taken from the loaded manifests."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

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


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that documents each model's predict body from its manifest."""

    def build() -> dict[str, Any]:
        ctx = app.state.ctx
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        paths = schema.get("paths", {})
        models = {}
        for name, state in ctx.registry.states().items():
            if state.serving is not None:
                models[name] = state.serving.manifest
        default = models.get(ctx.settings.default_model)
        if default is not None and "/predict" in paths:
            paths["/predict"]["post"]["requestBody"] = _request_body(default)
        template = paths.pop("/models/{name}/predict", None) if models else None
        for name, manifest in sorted(models.items()):
            if template is None:
                break
            operation = {**template["post"], "requestBody": _request_body(manifest)}
            operation["operationId"] = f"predict_{name}"
            operation["summary"] = f"Predict with {name} {manifest.version}"
            operation["parameters"] = [p for p in operation.get("parameters", []) if p.get("name") != "name"]
            paths[f"/models/{name}/predict"] = {"post": operation}
        if ctx.started:
            app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
