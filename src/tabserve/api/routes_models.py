"""Model metadata, drift and feedback routes (predict lives in ``routes_predict``: the hot path)."""

from __future__ import annotations

import asyncio
from contextlib import suppress

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from starlette.responses import Response

from tabserve.api.context import ContextDep
from tabserve.api.metadata import model_summary, version_document
from tabserve.artifacts import list_versions, model_dir, verify_model_dir
from tabserve.errors import ModelNotFoundError, ServiceUnavailableError, StoreError

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
    model = ctx.registry.get(name)
    report = ctx.drift.report(name)
    if ctx.coverage is not None:
        try:
            coverage = await asyncio.to_thread(ctx.coverage.report, name, model.manifest.conformal.pattern_names)
        except StoreError as exc:  # drift does not need the store: report it without the coverage section
            report = {**report, "coverage": {"error": str(exc)}}
        else:
            report = {**report, "coverage": coverage}
    return Response(orjson.dumps(report), media_type="application/json")


@router.get("/models/{name}/coverage", summary="Realised coverage of served intervals / prediction sets, from feedback")
async def get_coverage(name: str, ctx: ContextDep) -> Response:
    model = ctx.registry.get(name)
    if ctx.coverage is None:
        raise ServiceUnavailableError("coverage needs the prediction log (TABSERVE_PREDICTION_LOG=false)")
    report = await asyncio.to_thread(ctx.coverage.report, name, model.manifest.conformal.pattern_names)
    return Response(orjson.dumps(report), media_type="application/json")


class Feedback(BaseModel):
    """The true outcome of a logged prediction."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    index: int | None = Field(default=None, ge=0, description="Row of a batch request; omit for a single one")
    actual: StrictFloat | StrictInt | StrictStr = Field(description="Measured CO2 in g/km, or the species")


@router.post(
    "/feedback",
    tags=["feedback"],
    summary="Attach the true value to a logged prediction",
    responses={
        404: {"description": "No logged prediction with this request id (and row)"},
        409: {"description": "This row already has a different true value"},
    },
)
async def feedback(item: Feedback, ctx: ContextDep) -> Response:
    if ctx.log is None:
        raise ServiceUnavailableError("the prediction log is disabled (TABSERVE_PREDICTION_LOG=false)")
    result = await asyncio.to_thread(ctx.log.attach_feedback, item.request_id, item.index, item.actual)
    adaptive = ctx.service.adaptive
    if adaptive is not None and result.created:  # this worker serves the new effective level at once
        with suppress(StoreError):  # the periodic refresh catches up
            await asyncio.to_thread(adaptive.refresh, result.model)
    return Response(orjson.dumps(result.as_dict()), media_type="application/json")
