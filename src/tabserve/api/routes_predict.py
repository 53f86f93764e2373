"""``POST /predict`` and ``POST /models/{name}/predict``: the hot path, answered below the framework.

Starlette routing, request/response objects and FastAPI's layers cost more than the model here, so these two
routes are served by a small ASGI layer in front of the FastAPI app: it reads the raw body, calls the same
``PredictionService`` as every other route, and answers with orjson; errors are the same problem+json.
Everything else falls through to FastAPI. The routes are documented in OpenAPI by ``api/openapi.py``.

A single instance shares its ONNX call with the other single instances ready in the same loop turn when other
requests are outstanding (``Admission.outstanding``, counted when uvicorn parsed their headers, under ``tabserve
serve``); alone, or under a server without that count, it runs at once, so a lone client does not wait a loop
turn for company that is not coming.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from tabserve.api.body import body_headers, check_json_media, parse_json, read_body
from tabserve.api.middleware import active_admission
from tabserve.api.problems import PROBLEM_JSON, problem_document
from tabserve.errors import RequestValidationError, TabserveError
from tabserve.service import PredictionService

JSON_HEADERS = [(b"content-type", b"application/json")]
PROBLEM_HEADERS = [(b"content-type", PROBLEM_JSON.encode())]
log = logging.getLogger(__name__)


def predict_target(path: str, default_model: str) -> tuple[str, str] | None:
    """(model name, route template) when ``path`` is a predict route, else None."""
    if path == "/predict":
        return default_model, "/predict"
    if path.startswith("/models/") and path.endswith("/predict"):
        name = path[8:-8]
        if name and "/" not in name:
            return name, "/models/{name}/predict"
    return None


class PredictFastPath:
    def __init__(self, app: ASGIApp, *, service: PredictionService, default_model: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.default_model = default_model
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = predict_target(scope["path"], self.default_model) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        name, state["route"] = target
        try:
            if scope["method"] != "POST":
                await self._problem(send, 405, "Method not allowed", "method-not-allowed", "use POST", scope, [])
                return
            payload = await self._predict(name, await self._body(scope, receive), scope, state)
        except TabserveError as exc:
            errors = exc.errors if isinstance(exc, RequestValidationError) else None
            headers = [(b"retry-after", str(exc.retry_after_s).encode())] if hasattr(exc, "retry_after_s") else []
            await self._problem(send, exc.status, exc.title, exc.slug, exc.detail, scope, headers, errors)
            return
        except Exception:  # a bug: log it, answer problem+json, keep serving
            log.exception("unexpected error in %s", scope["path"])
            await self._problem(
                send, 500, "Internal error", "internal-error", "an unexpected error occurred", scope, []
            )
            return
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": payload})

    async def _body(self, scope: Scope, receive: Receive) -> Any:
        media, declared = body_headers(scope["headers"])
        check_json_media(media)
        return parse_json(await read_body(receive, declared, self.max_body_bytes))

    async def _predict(self, name: str, body: Any, scope: Scope, state: dict[str, Any]) -> bytes:
        query = scope["query_string"]
        level = dict(parse_qsl(query.decode("latin-1"))).get("level") if query else None
        admission = active_admission()
        share = admission is not None and admission.outstanding > 1  # counted at parse time (0 without the gate)
        result = await self.service.predict_async(
            name, body, request_id=state["request_id"], level=level, info=state, share=share
        )
        started = time.perf_counter()
        payload = orjson.dumps(result)
        state["timings"].serialise += time.perf_counter() - started
        return payload

    @staticmethod
    async def _problem(
        send: Send,
        status: int,
        title: str,
        slug: str,
        detail: str,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        errors: Any = None,
    ) -> None:
        body = problem_document(status, title, detail, slug, errors, scope["path"])
        body["request_id"] = scope.get("state", {}).get("request_id", "")
        if status == 405:
            headers = [*headers, (b"allow", b"POST")]
        await send({"type": "http.response.start", "status": status, "headers": [*PROBLEM_HEADERS, *headers]})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})
