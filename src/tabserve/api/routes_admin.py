"""Authenticated admin calls: hot reload of a model version (verified, loaded and warmed before it serves)."""

from __future__ import annotations

import asyncio
import hmac

import orjson
from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from tabserve.api.context import ContextDep
from tabserve.errors import NotFoundError, UnauthorizedError

router = APIRouter(tags=["admin"])


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="Model name")
    version: str | None = Field(default=None, description="Version to serve; newest on disk when omitted")


@router.post("/admin/reload", summary="Hot-reload a model version (Authorization: Bearer <TABSERVE_ADMIN_TOKEN>)")
async def reload_model(
    item: ReloadRequest, ctx: ContextDep, authorization: str | None = Header(default=None)
) -> Response:
    token = ctx.settings.admin_token.get_secret_value()
    if not token:
        raise NotFoundError("the admin API is disabled (set TABSERVE_ADMIN_TOKEN)")
    presented = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise UnauthorizedError("missing or wrong bearer token")
    previous = ctx.registry.states().get(item.model)
    old_version = previous.version if previous else None
    model = await asyncio.to_thread(ctx.registry.reload, item.model, item.version)
    body = {"model": model.name, "version": model.version, "previous_version": old_version, "status": "ready"}
    return Response(orjson.dumps(body), media_type="application/json")
