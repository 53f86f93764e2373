"""Errors as RFC 9457 problem+json: one mapping from the exception tree to responses, used by every route."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tabserve.errors import (
    FieldError,
    OverloadedError,
    RateLimitedError,
    RequestValidationError,
    TabserveError,
    UnauthorizedError,
)

PROBLEM_TYPE_BASE = "https://tabserve.dev/problems/"
PROBLEM_JSON = "application/problem+json"


def problem_document(
    status: int, title: str, detail: str, slug: str, errors: list[FieldError] | None = None, instance: str = ""
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body["errors"] = [e.as_dict() for e in errors] if errors else []
    return body


def error_response(exc: TabserveError, *, instance: str = "", request_id: str = "") -> Response:
    errors = exc.errors if isinstance(exc, RequestValidationError) else None
    body = problem_document(exc.status, exc.title, exc.detail, exc.slug, errors, instance)
    if request_id:
        body["request_id"] = request_id
    headers: dict[str, str] = {}
    if isinstance(exc, OverloadedError | RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = exc.challenge
    return Response(orjson.dumps(body), status_code=exc.status, media_type=PROBLEM_JSON, headers=headers)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


async def tabserve_error_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, TabserveError):  # pragma: no cover - registered for TabserveError only
        raise exc
    return error_response(exc, instance=request.url.path, request_id=_request_id(request))


async def fastapi_validation_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's own body/query validation (e.g. /feedback) in the same problem+json shape."""
    if not isinstance(exc, FastAPIValidationError):  # pragma: no cover
        raise exc
    errors = [
        FieldError(tuple(err.get("loc", ())), str(err.get("msg", "invalid")), str(err.get("type", "invalid")))
        for err in exc.errors()
    ]
    if not errors:
        errors = [FieldError(("body",), "invalid request", "invalid")]
    return error_response(RequestValidationError(errors), instance=request.url.path, request_id=_request_id(request))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 and friends, as problem+json too."""
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    body = problem_document(exc.status_code, title, str(exc.detail), slug, None, request.url.path)
    headers = dict(exc.headers) if exc.headers else {}
    return Response(orjson.dumps(body), status_code=exc.status_code, media_type=PROBLEM_JSON, headers=headers)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    """Last resort: a bug. Logged by the caller's middleware; the client gets problem+json, never a traceback."""
    body = problem_document(500, "Internal error", "an unexpected error occurred; it has been logged", "internal-error")
    body["request_id"] = _request_id(request)
    del exc
    return Response(orjson.dumps(body), status_code=500, media_type=PROBLEM_JSON)
