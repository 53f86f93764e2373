"""Model metadata, drift and feedback routes (predict lives in ``routes_predict``: the hot path)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from tabserve.api.context import ContextDep
from tabserve.api.metadata import model_summary, version_document
from tabserve.artifacts import list_versions, model_dir, verify_model_dir
from tabserve.errors import ModelNotFoundError, ServiceUnavailableError

router = APIRouter(tags=["models"])


@router.get("/models", summary="Models served and their versions")
async def list_models_route(ctx: ContextDep) -> Response:
    states = ctx.registry.states()
    body = {
        "default_model": ctx.settings.default_model,
        "models": [model_summary(ctx, name, states[name]) for name in sorted(states)],
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/models/{name}", summary="One model: versions, input and output schema, example request")
async def get_model(name: str, ctx: ContextDep) -> Response:
    model = ctx.registry.get(name)
    body = version_document(model.manifest, serving=True)
    body["versions"] = list_versions(ctx.settings.models_dir, name)
    body["status"] = ctx.registry.states()[name].as_dict()
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/models/{name}/versions/{version}", summary="One model version (verified from disk)")
async def get_model_version(name: str, version: str, ctx: ContextDep) -> Response:
    if name not in ctx.registry.states():
        raise ModelNotFoundError(f"no model {name!r}")
    path = model_dir(ctx.settings.models_dir, name, version)
    verified = await asyncio.to_thread(verify_model_dir, path)
    loaded = ctx.registry.states()[name].version == version
    body = version_document(verified.manifest, serving=loaded)
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/models/{name}/drift", summary="Drift of recent inputs against the training reference")
async def get_drift(name: str, ctx: ContextDep) -> Response:
    ctx.registry.get(name)
    report = ctx.drift.report(name)
    return Response(orjson.dumps(report), media_type="application/json")


class Feedback(BaseModel):
    """The true outcome of a logged prediction."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    index: int | None = Field(default=None, ge=0, description="Row of a batch request; omit for a single one")
    actual: float | str = Field(description="Measured CO2 in g/km, or the species")


@router.post("/feedback", tags=["feedback"], summary="Attach the true value to a logged prediction")
async def feedback(item: Feedback, ctx: ContextDep) -> Response:
    if ctx.log is None:
        raise ServiceUnavailableError("the prediction log is disabled (TABSERVE_PREDICTION_LOG=false)")
    result = await asyncio.to_thread(ctx.log.attach_feedback, item.request_id, item.index, item.actual)
    return Response(orjson.dumps(result.as_dict()), media_type="application/json")
