"""Admin calls (the ``admin`` scope, checked by ``api/auth.py`` before the route runs): hot reload of a model
version (verified, loaded and warmed before it serves)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from tabserve.api.context import ContextDep

router = APIRouter(tags=["admin"])


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="Model name")
    version: str | None = Field(default=None, description="Version to serve; newest on disk when omitted")


@router.post("/admin/reload", summary="Hot-reload a model version (needs the admin credential)")
async def reload_model(item: ReloadRequest, ctx: ContextDep) -> Response:
    """Credential checked before the route runs (``api/auth.py``): ``admin`` scope."""
    previous = ctx.registry.states().get(item.model)
    old_version = previous.version if previous else None
    model = await asyncio.to_thread(ctx.registry.reload, item.model, item.version)
    body = {"model": model.name, "version": model.version, "previous_version": old_version, "status": "ready"}
    return Response(orjson.dumps(body), media_type="application/json")
