"""Reading a JSON request body safely at the ASGI level: content type, size limit (refused before reading past
it), a time limit for a body that arrives in pieces (``BODY_TIMEOUT_S``, 408 beyond: a body sent a byte a second
cannot hold a slot for ever), strict JSON. Used by the predict fast path and the Open Inference Protocol route
alike."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from starlette.types import Receive

from tabserve.errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError, UnsupportedMediaTypeError

JSON_TYPES = frozenset({"application/json", "application/problem+json"})
Headers = list[tuple[bytes, bytes]]
BODY_TIMEOUT_S = 10.0
"""Longest a request body may take to arrive once it comes in several pieces (the usual body, in one piece with
its headers, never arms the timer: its cost, ~4 µs, would be 7 % of a prediction)."""


def body_headers(headers: Headers) -> tuple[str, str | None]:
    """(media type, Content-Length) from raw ASGI headers, in one pass."""
    media, length = "", None
    for key, value in headers:
        if key == b"content-type":
            media = value.decode("latin-1").split(";", 1)[0].strip().lower()
        elif key == b"content-length":
            length = value.decode("latin-1")
    return media, length


def check_json_media(media: str) -> None:
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaTypeError(f"content type {media or 'none'!r} is not supported; send application/json")


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise BadRequestError("Content-Length is not a number") from exc
        if size > limit:
            raise PayloadTooLargeError(f"body of {size} bytes is over the limit of {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLargeError(f"body is over the limit of {limit} bytes")
        return body
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await _rest(receive, body, limit)
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {BODY_TIMEOUT_S:g} s") from None


async def _rest(receive: Receive, body: bytes, limit: int) -> bytes:
    chunks = [body]
    total = len(body)
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequestError("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
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
