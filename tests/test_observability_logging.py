"""Structured logs: Cloud Logging JSON fields, request context, trace header parsers, handler hygiene."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from tabserve.observability.logging import (
    SPAN_FIELD,
    TRACE_FIELD,
    AccessLog,
    TraceContext,
    bind_request,
    close_logging,
    configure_logging,
    log_fields,
    parse_cloud_trace_context,
    parse_traceparent,
    reset_request,
    set_model,
    trace_from_headers,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_traceparent_parses_valid_header() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01") == TraceContext(TRACE, SPAN, True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == TraceContext(TRACE, SPAN, False)
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-future") == TraceContext(TRACE, SPAN, True)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"00-{'0' * 32}-{SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-01-extra",
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"00-{TRACE[:-1]}-{SPAN}-01",
        "garbage",
    ],
)
def test_traceparent_rejected_when_invalid(header: str | None) -> None:
    assert parse_traceparent(header) is None


def test_cloud_trace_context_converts_decimal_span_to_hex() -> None:
    assert parse_cloud_trace_context(f"{TRACE.upper()}/1;o=1") == TraceContext(TRACE, "0000000000000001", True)
    assert parse_cloud_trace_context(f"{TRACE}/{2**64 - 1};o=0") == TraceContext(TRACE, "f" * 16, False)
    assert parse_cloud_trace_context(TRACE) == TraceContext(TRACE, None, False)
    assert parse_cloud_trace_context(f"{TRACE}/{2**64}") == TraceContext(TRACE, None, False)


@pytest.mark.parametrize("header", [None, "", "xyz/1;o=1", f"{'0' * 32}/1", f"{TRACE}/abc"])
def test_cloud_trace_context_rejected_when_invalid(header: str | None) -> None:
    assert parse_cloud_trace_context(header) is None


def test_traceparent_wins_over_cloud_header() -> None:
    other = "a" * 32
    assert trace_from_headers(f"00-{TRACE}-{SPAN}-01", f"{other}/5;o=1") == TraceContext(TRACE, SPAN, True)
    assert trace_from_headers("broken", f"{other}/5;o=1") == TraceContext(other, "0000000000000005", True)


def test_json_line_carries_cloud_logging_fields_when_request_bound() -> None:
    stream = io.StringIO()
    logger = configure_logging("json", "INFO", "my-proj", stream=stream)
    token = bind_request("req-1", TraceContext(TRACE, SPAN, True))
    try:
        set_model("co2", "1.0.0")
        access = AccessLog(logger)
        access("POST", "/predict", 200, 0.42, rows=3, preprocess_ms=0.05, inference_ms=0.1)
        access.flush()  # JSON access lines are written in blocks
    finally:
        reset_request(token)
    logger.warning("after the request")
    first, second = _lines(stream)
    assert first["severity"] == "INFO"
    assert first["message"] == "request"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(first["time"]))
    assert first[TRACE_FIELD] == f"projects/my-proj/traces/{TRACE}"
    assert first[SPAN_FIELD] == SPAN
    assert first["request_id"] == "req-1"
    assert (first["model"], first["model_version"]) == ("co2", "1.0.0")
    assert (first["status"], first["latency_ms"], first["rows"]) == (200, 0.42, 3)
    assert (first["preprocess_ms"], first["inference_ms"]) == (0.05, 0.1)
    assert second["severity"] == "WARNING"
    assert "request_id" not in second
    assert TRACE_FIELD not in second
    close_logging(logger)


def test_json_trace_field_is_bare_without_project() -> None:
    stream = io.StringIO()
    logger = configure_logging("json", "INFO", None, stream=stream)
    token = bind_request("req-2", TraceContext(TRACE, None, False))
    logger.info("hello")
    reset_request(token)
    (line,) = _lines(stream)
    assert line[TRACE_FIELD] == TRACE
    assert SPAN_FIELD not in line
    close_logging(logger)


def test_access_log_writes_nothing_when_disabled() -> None:
    stream = io.StringIO()
    logger = configure_logging("json", "INFO", None, stream=stream)
    access = AccessLog(logger, enabled=False)
    access("GET", "/health", 200, 0.01)
    assert stream.getvalue() == ""
    assert not access.enabled
    close_logging(logger)


def test_level_filters_below_threshold() -> None:
    stream = io.StringIO()
    logger = configure_logging("json", "warning", None, stream=stream)
    logger.info("hidden")
    access = AccessLog(logger)
    access("GET", "/health", 200, 0.01)
    access.flush()
    log_fields(logger, logging.ERROR, "store down", spilled=4)
    (line,) = _lines(stream)
    assert (line["message"], line["severity"], line["spilled"]) == ("store down", "ERROR", 4)
    close_logging(logger)


def test_text_format_is_human_readable_with_context() -> None:
    stream = io.StringIO()
    logger = configure_logging("text", "INFO", None, stream=stream)
    token = bind_request("req-3")
    set_model("penguins", "1.0.0")
    access = AccessLog(logger)
    access("POST", "/models/penguins/predict", 200, 1.5, rows=1)
    access.flush()
    reset_request(token)
    text = stream.getvalue()
    assert "INFO" in text
    assert "request_id=req-3" in text
    assert "model=penguins@1.0.0" in text
    assert "status=200" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    close_logging(logger)


def test_loggers_are_per_app_and_leave_root_untouched() -> None:
    root_handlers = list(logging.getLogger().handlers)
    first = configure_logging("json", "INFO", None, stream=io.StringIO())
    second = configure_logging("json", "INFO", None, stream=io.StringIO())
    assert first.name != second.name
    assert not first.propagate
    assert len(first.handlers) == 1
    close_logging(first)
    close_logging(second)
    assert first.handlers == []
    assert logging.getLogger().handlers == root_handlers


def test_configure_logging_rejected_when_format_unknown() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("yaml", "INFO", None)  # type: ignore[arg-type]


def test_exception_is_logged_as_field() -> None:
    stream = io.StringIO()
    logger = configure_logging("json", "INFO", None, stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    (line,) = _lines(stream)
    assert line["severity"] == "ERROR"
    assert "RuntimeError: boom" in str(line["exception"])
    close_logging(logger)


def test_json_access_lines_are_buffered_until_flushed_or_due() -> None:
    stream = io.StringIO()
    logger = configure_logging("json", "INFO", None, stream=stream)
    access = AccessLog(logger, flush_interval_s=3600)
    access("GET", "/health", 200, 0.01)
    assert stream.getvalue() == ""
    access.flush()
    assert json.loads(stream.getvalue())["route"] == "/health"
    access.max_buffer = 1
    access("GET", "/ready", 200, 0.01)  # over the buffer size: written at once
    assert json.loads(stream.getvalue().splitlines()[-1])["route"] == "/ready"
