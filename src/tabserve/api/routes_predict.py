"""``POST /predict`` and ``POST /models/{name}/predict``: the hot path, as plain Starlette routes.

FastAPI's per-route dependency solving costs more than the model here, so these two routes are Starlette
``Route``s that read the raw body, call the shared ``PredictionService`` and answer with orjson. They are
documented in OpenAPI by ``api/openapi.py`` (request schema and examples from each model's manifest).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tabserve.api.body import read_json
from tabserve.api.context import AppContext


async def predict(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    name = request.path_params.get("name") or ctx.settings.default_model
    body = await read_json(request, ctx.settings.max_body_bytes)
    state: dict[str, Any] = request.scope["state"]
    state["route"] = "/models/{name}/predict" if "name" in request.path_params else "/predict"
    level = request.query_params.get("level") if request.scope["query_string"] else None
    result = ctx.service.predict(name, body, request_id=state["request_id"], level=level, info=state)
    started = time.perf_counter()
    payload = orjson.dumps(result)
    state["timings"].serialise += time.perf_counter() - started
    return Response(payload, media_type="application/json")


ROUTES = [
    Route("/predict", predict, methods=["POST"], name="predict_default"),
    Route("/models/{name}/predict", predict, methods=["POST"], name="predict_model"),
]
