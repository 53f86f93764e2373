"""Admin calls (the ``admin`` scope, checked by ``api/auth.py`` before the route runs): hot reload of a model
version (verified, loaded and warmed before it serves), in every worker of the server (``worker_reloads.py``)."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from tabserve.api.context import ContextDep
from tabserve.worker_reloads import Acks, WorkerReloads

WORKERS_WAIT_S = 15.0
"""How long a reload waits for the server's other workers to serve the new version before it answers."""

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
    body: dict[str, object] = {
        "model": model.name,
        "version": model.version,
        "previous_version": old_version,
        "status": "ready",
    }
    if ctx.reloads is not None:
        workers = ctx.settings.workers
        try:
            seq = await asyncio.to_thread(ctx.reloads.publish, model.name, model.version, item.version is None)
        except OSError as exc:  # the data dir not writable (full): this worker serves it, the others cannot know
            body |= {"status": "partial", "workers": {"serving": 1, "of": workers}}
            body["worker_errors"] = [f"the reload order could not be written: {exc.strerror or exc}"]
            return Response(orjson.dumps(body), media_type="application/json")
        acks = await _other_workers(ctx.reloads, workers, seq)
        body["workers"] = {"serving": 1 + acks.done - len(acks.errors), "of": workers}
        if acks.errors or 1 + acks.done < workers:
            body["status"] = "partial"  # this worker serves it; the others' reasons, or not yet within the wait
            body["worker_errors"] = [f"worker {pid}: {error}" for pid, error in sorted(acks.errors.items())]
    return Response(orjson.dumps(body), media_type="application/json")


async def _other_workers(reloads: WorkerReloads, workers: int, seq: int) -> Acks:
    """The other workers' answers to reload order ``seq``, once all have answered or after ``WORKERS_WAIT_S``."""
    deadline = time.monotonic() + WORKERS_WAIT_S
    while True:
        acks = await asyncio.to_thread(reloads.acks, seq)
        if acks.done >= workers - 1 or time.monotonic() >= deadline:
            return acks
        await asyncio.sleep(0.05)
