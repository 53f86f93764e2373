"""The web page: ``GET /`` (try a model), ``GET /operations`` (watch the service), ``GET /models/{name}/card``
(the model card with its plots) and their static files, plus ``GET /operations/summary``, the JSON the
operations page polls.

Thin on purpose: the page itself is static package data (``api/static``: plain HTML, CSS and JavaScript, no
build step, nothing from another origin) and talks to the same JSON routes as any client (``/models``,
``/models/{name}``, ``/models/{name}/predict``); the summary is ``observability/summary.py`` over the text
``/metrics`` serves; the card is ``web_card.py``. The HTML routes are left out of the OpenAPI document (they are
pages, not API); the summary is in it. The summary needs the admin scope once an admin credential is
configured (``auth.route_scope``), as the other operations views do; the pages themselves hold no data.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from tabserve.api.context import ContextDep
from tabserve.api.web_card import card_html, plot
from tabserve.errors import NotFoundError
from tabserve.observability.summary import operations_summary

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
PAGES = {"/": "index.html", "/operations": "ops.html"}
SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "time",
        "models",
        "requests",
        "rejected",
        "in_flight",
        "latency_seconds",
        "predictions",
        "drift_psi",
        "drift_window",
        "out_of_distribution",
        "coverage",
        "coverage_min_samples",
    ],
    "properties": {
        "time": {"type": "number", "description": "Unix time of the reading"},
        "models": {"type": "array", "items": {"type": "object"}},
        "requests": {
            "type": "object",
            "required": ["total", "by_status", "prediction_total", "prediction_by_status", "prediction_by_model"],
            "description": "tabserve_requests_total since start: all routes, and the prediction routes alone",
        },
        "rejected": {"type": "object", "additionalProperties": {"type": "number"}},
        "in_flight": {"type": "number"},
        "latency_seconds": {
            "type": "object",
            "required": ["buckets", "count", "sum", "p50", "p95", "p99"],
            "description": "Prediction routes' latency histogram since start and its quantiles (null when empty)",
        },
        "predictions": {"type": "object", "description": "Per model: predicted values' histogram or class counts"},
        "drift_psi": {"type": "object", "description": "Per model and feature: PSI of the drift window"},
        "drift_window": {
            "type": "object",
            "description": "Per model: rows in this worker's drift window, rows needed for a verdict, overall status",
        },
        "out_of_distribution": {"type": "object"},
        "coverage": {"type": "array", "items": {"type": "object"}, "description": "Realised coverage cells"},
        "coverage_min_samples": {
            "type": ["integer", "null"],
            "description": "Samples a cell needs before its coverage is judged (null: no prediction log)",
        },
    },
}

PLOT_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
}
"""A plot opened on its own (an SVG is a document too) runs nothing and loads nothing."""

router = APIRouter(tags=["operations"])


@lru_cache(maxsize=64)
def _static(name: str) -> tuple[bytes, str, str]:
    """(bytes, media type, ETag) of a file of ``api/static`` (read once; the package does not change)."""
    path = STATIC_DIR / name
    media = STATIC_TYPES.get(path.suffix)
    if media is None or path.name != name or not path.is_file():
        raise NotFoundError(f"no static file {name!r}")
    data = path.read_bytes()
    return data, media, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _file_response(request: Request, name: str) -> Response:
    data, media, etag = _static(name)
    headers = {"etag": etag, "cache-control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media, headers=headers)


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    return _file_response(request, PAGES["/"])


@router.get("/operations", include_in_schema=False)
async def operations_page(request: Request) -> Response:
    return _file_response(request, PAGES["/operations"])


@router.get("/static/{file}", include_in_schema=False)
async def static_file(file: str, request: Request) -> Response:
    if file.endswith(".html"):
        raise NotFoundError(f"no static file {file!r}")
    return _file_response(request, file)


@router.get("/models/{name}/card", include_in_schema=False)
async def model_card(name: str, ctx: ContextDep) -> HTMLResponse:
    return HTMLResponse(card_html(ctx.registry.get(name)))


@router.get("/models/{name}/card/{file}", include_in_schema=False)
async def model_card_plot(name: str, file: str, ctx: ContextDep) -> Response:
    data, media = plot(ctx.registry.get(name), file)
    return Response(data, media_type=media, headers=PLOT_HEADERS)


@router.get(
    "/operations/summary",
    summary="What /metrics reads now, reduced for the operations page (admin scope once configured)",
    responses={200: {"description": "The summary", "content": {"application/json": {"schema": SUMMARY_SCHEMA}}}},
    response_class=Response,
)
async def summary(ctx: ContextDep) -> Response:
    windows: dict[str, dict[str, Any]] = {}
    for name in ctx.drift.models():  # the PSI gauges as of now (otherwise set every 30 s by the flusher)
        report = ctx.drift.report(name, detail=False)
        windows[name] = {"rows": report["n"], "min_rows": report["min_rows"], "status": report["status"]}
    body, _ = ctx.metrics.render()
    summary = operations_summary(body.decode("utf-8"), drift_windows=windows)
    summary["coverage_min_samples"] = ctx.coverage.rule.min_samples if ctx.coverage is not None else None
    return Response(orjson.dumps(summary), media_type="application/json")
