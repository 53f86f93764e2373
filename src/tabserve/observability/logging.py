"""Structured logs: one JSON object per line (Cloud Logging fields) or a human-readable line; request context.

``configure_logging`` builds the app's own logger (never the root logger, ``propagate=False``), so two
apps or two tests never share handlers. Request-scoped fields (request id, model, trace) travel in a
``ContextVar`` that the API layer binds once per request (``bind_request``) and every record picks up.
The trace header parsers (W3C ``traceparent``, Google ``X-Cloud-Trace-Context``) live here too.

Never log request bodies, headers or secrets: records carry only the fields named below.
``AccessLog`` writes the per-request line without the ``findCaller`` stack walk of ``Logger.info``;
it can be switched off (setting ``TABSERVE_ACCESS_LOG``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import sys
import time
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import orjson

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]+))?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A trace id (32 lower-case hex), the caller's span id (16 hex, or None) and the sampled flag."""

    trace_id: str
    span_id: str | None
    sampled: bool


def parse_traceparent(header: str | None) -> TraceContext | None:
    """W3C Trace Context ``traceparent``: ``00-<trace-id>-<parent-id>-<flags>``; None when invalid."""
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def parse_cloud_trace_context(header: str | None) -> TraceContext | None:
    """Google ``X-Cloud-Trace-Context``: ``TRACE_ID/SPAN_ID;o=1`` (span id decimal, converted to 16 hex)."""
    if not header:
        return None
    match = _CLOUD_TRACE.match(header.strip())
    if match is None:
        return None
    trace_id, span, options = match.groups()
    trace_id = trace_id.lower()
    if trace_id == _ZERO_TRACE:
        return None
    span_id: str | None = None
    if span is not None:
        number = int(span)
        if 0 < number < 2**64:
            span_id = f"{number:016x}"
    return TraceContext(trace_id, span_id, options is not None and int(options) & 1 == 1)


def trace_from_headers(traceparent: str | None, cloud_trace: str | None) -> TraceContext | None:
    """The request's trace: ``traceparent`` wins over ``X-Cloud-Trace-Context``."""
    return parse_traceparent(traceparent) or parse_cloud_trace_context(cloud_trace)


def new_request_id() -> str:
    """A fresh request id when the client sent none: 32 hex digits, time-ordered like a UUIDv7 or a ULID
    (12 digits of Unix milliseconds, then 80 random bits: unique without coordination).

    Time order matters to the prediction log: its unique key ``(request_id, idx)`` is a B-tree, and keys that
    grow insert at its right edge; purely random keys land on a random leaf each, which made every SQLite
    commit rewrite one index page per row (2-4x the CPU of the insert, growing with the table).

    The random part comes from ``random``'s generator (seeded from the OS, reseeded in a forked child), not one
    ``os.urandom`` system call per request: ids need uniqueness, not secrecy."""
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


@dataclass(slots=True)
class RequestContext:
    """Fields every log record of one request carries. ``model``/``model_version`` are set once known."""

    request_id: str
    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool = False
    model: str | None = None
    model_version: str | None = None


_CONTEXT: ContextVar[RequestContext | None] = ContextVar("tabserve_request_context", default=None)


def bind_request(request_id: str, trace: TraceContext | None = None) -> Token[RequestContext | None]:
    """Start a request's log context; pass the returned token to ``reset_request`` at the end."""
    if trace is None:
        return _CONTEXT.set(RequestContext(request_id))
    return _CONTEXT.set(RequestContext(request_id, trace.trace_id, trace.span_id, trace.sampled))


def reset_request(token: Token[RequestContext | None]) -> None:
    _CONTEXT.reset(token)


def set_model(model: str, version: str) -> None:
    """Record which model version serves the current request (no-op outside a request)."""
    ctx = _CONTEXT.get()
    if ctx is not None:
        ctx.model = model
        ctx.model_version = version


def set_trace(trace_id: str, span_id: str) -> None:
    """Log under the server's own span (tracing on): its trace id (the caller's, when one was sent) and span."""
    ctx = _CONTEXT.get()
    if ctx is not None:
        ctx.trace_id = trace_id
        ctx.span_id = span_id


class _Clock:
    """RFC 3339 UTC timestamps with microseconds; the per-second prefix is formatted once."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1_000_000):06d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record with the Cloud Logging special fields."""

    def __init__(self, project: str | None) -> None:
        super().__init__()
        self._trace_prefix = f"projects/{project}/traces/" if project else None
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(
            _SEVERITY.get(record.levelno, "DEFAULT"),
            record.getMessage(),
            record.created,
            record.name,
            getattr(record, "fields", None),
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, option=orjson.OPT_NON_STR_KEYS).decode()

    def entry(
        self, severity: str, message: str, created: float, logger: str, fields: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The JSON object of one line: Cloud Logging fields, the request context, then ``fields``."""
        entry: dict[str, Any] = {
            "severity": severity,
            "message": message,
            "time": self._clock.format(created),
            "logger": logger,
        }
        ctx = _CONTEXT.get()
        if ctx is not None:
            entry["request_id"] = ctx.request_id
            if ctx.model is not None:
                entry["model"] = ctx.model
                entry["model_version"] = ctx.model_version
            if ctx.trace_id is not None:
                entry[TRACE_FIELD] = (
                    self._trace_prefix + ctx.trace_id if self._trace_prefix is not None else ctx.trace_id
                )
                if ctx.span_id is not None:
                    entry[SPAN_FIELD] = ctx.span_id
                entry[SAMPLED_FIELD] = ctx.sampled
        if fields:
            entry.update(fields)
        return entry


class TextFormatter(logging.Formatter):
    """``12:00:00.123 INFO    message  request_id=... model=co2 status=200 latency_ms=0.42`` for local use."""

    def __init__(self) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{created}.{int(record.msecs):03d} {record.levelname:<7} {record.getMessage()}"]
        ctx = _CONTEXT.get()
        if ctx is not None:
            parts.append(f"request_id={ctx.request_id}")
            if ctx.model is not None:
                parts.append(f"model={ctx.model}@{ctx.model_version}")
            if ctx.trace_id is not None:
                parts.append(f"trace={ctx.trace_id}")
        fields = getattr(record, "fields", None)
        if fields:
            parts.extend(f"{k}={v}" for k, v in fields.items())
        text = "  ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(
    fmt: Literal["json", "text"],
    level: str,
    project: str | None,
    *,
    stream: TextIO | None = None,
    name: str | None = None,
) -> logging.Logger:
    """The app's logger: own handler on ``stream`` (default stdout), no propagation to the root logger.

    ``name`` defaults to a fresh ``tabserve.app.<id>`` so that every app (and every test) gets its own.
    Calling it again with the same name replaces the handler. ``close_logging`` detaches it.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    logger = logging.getLogger(name or f"tabserve.app.{uuid.uuid4().hex[:12]}")
    close_logging(logger)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(project) if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def close_logging(logger: logging.Logger) -> None:
    """Remove (and close) the handlers ``configure_logging`` attached."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


class AccessLog:
    """One INFO line per finished request. Switchable, and cheap: in JSON format the lines are built with
    orjson and written in blocks (at most ``flush_interval_s`` late, flushed at shutdown) instead of one
    ``logging`` record, lock and flush per request, which cost more than the model."""

    def __init__(
        self, logger: logging.Logger, enabled: bool = True, *, flush_interval_s: float = 0.25, max_buffer: int = 65536
    ) -> None:
        self._logger = logger
        self._enabled = enabled
        handler = next((h for h in logger.handlers if isinstance(h, logging.StreamHandler)), None)
        formatter = handler.formatter if handler is not None else None
        self._handler = handler
        self._json = formatter if isinstance(formatter, JsonFormatter) else None
        self._buffer: list[bytes] = []
        self._size = 0
        self._last_flush = time.monotonic()
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __call__(
        self,
        method: str,
        route: str,
        status: int,
        latency_ms: float,
        *,
        rows: int | None = None,
        preprocess_ms: float | None = None,
        inference_ms: float | None = None,
    ) -> None:
        if not self._enabled or not self._logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {"method": method, "route": route, "status": status, "latency_ms": latency_ms}
        if rows is not None:
            fields["rows"] = rows
        if preprocess_ms is not None:
            fields["preprocess_ms"] = preprocess_ms
        if inference_ms is not None:
            fields["inference_ms"] = inference_ms
        if self._json is None:
            record = logging.LogRecord(self._logger.name, logging.INFO, "", 0, "request", None, None)
            record.fields = fields
            self._logger.handle(record)
            return
        line = orjson.dumps(self._json.entry("INFO", "request", time.time(), self._logger.name, fields))
        self._buffer.append(line)
        self._size += len(line) + 1
        if self._size >= self.max_buffer or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines (called when due, by a periodic timer, and at shutdown)."""
        self._last_flush = time.monotonic()
        if not self._buffer or self._handler is None:
            return
        text = b"\n".join(self._buffer).decode() + "\n"
        self._buffer.clear()
        self._size = 0
        with self._handler.lock or contextlib.nullcontext():
            self._handler.stream.write(text)
            self._handler.flush()


def log_fields(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with extra structured fields (e.g. ``status``, ``rows``)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields}, stacklevel=2)
