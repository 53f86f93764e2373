"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from tabserve.api.context import ContextDep

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/ready",
    summary="Readiness: every configured model verified, loaded and warmed",
    responses={503: {"description": "Not ready (loading or failed)", "content": {"application/json": {}}}},
)
async def ready(ctx: ContextDep) -> Response:
    registry = ctx.registry
    models = {name: state.as_dict() for name, state in registry.states().items()}
    if ctx.started and registry.ready:
        status, code = ("degraded" if registry.degraded else "ready"), 200
    else:
        status, code = ("failed" if registry.failures() and ctx.started else "loading"), 503
    body = {"status": status, "models": models}
    return Response(orjson.dumps(body), status_code=code, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(ctx: ContextDep) -> Response:
    body, content_type = ctx.metrics.render()
    return Response(body, media_type=content_type)
