"""Reading a JSON request body safely: content type, size limit (without reading past it), strict JSON."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import Request

from tabserve.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

JSON_TYPES = ("application/json", "application/problem+json")


def _check_content_type(request: Request) -> None:
    raw = request.headers.get("content-type", "")
    media = raw.split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        shown = media or "none"
        raise UnsupportedMediaTypeError(f"content type {shown!r} is not supported; send application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise BadRequestError("Content-Length is not a number") from exc
        if size > limit:
            raise PayloadTooLargeError(f"body of {size} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Strict and fast (orjson); NaN/Infinity literals are parsed (then refused per field with 422)."""
    if not body:
        raise BadRequestError("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        try:
            return json.loads(body)  # accepts NaN / Infinity, which validation then names field by field
        except (ValueError, RecursionError):
            raise BadRequestError(f"malformed JSON: {fast_error}") from None


async def read_json(request: Request, limit: int) -> Any:
    _check_content_type(request)
    return parse_json(await read_body(request, limit))
