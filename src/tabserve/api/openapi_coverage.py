"""OpenAPI of the coverage report (``GET /models/{name}/coverage`` and the drift route's ``coverage`` section):
the response schema of ``observability.coverage.CoverageMonitor.compute``."""

from __future__ import annotations

from typing import Any

_NUMBER = {"type": "number"}
_PAIR = {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}

COVERAGE_CELL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One model version, level and input pattern over the window.",
    "required": [
        "version",
        "level",
        "pattern",
        "pattern_name",
        "samples",
        "covered",
        "coverage",
        "wilson",
        "band",
        "status",
        "adaptive_samples",
        "effective_level",
    ],
    "properties": {
        "version": {"type": "string"},
        "level": {**_NUMBER, "description": "The requested (nominal) level of the served answers"},
        "pattern": {"type": "string", "description": "Conformal pattern key (one 0/1 per pattern input)"},
        "pattern_name": {"type": "string"},
        "samples": {"type": "integer", "minimum": 0, "description": "Answers with feedback in the window"},
        "covered": {"type": "integer", "minimum": 0, "description": "Of those, true value inside the interval/set"},
        "coverage": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "wilson": {**_PAIR, "description": "Wilson score interval of the coverage at the rule's z"},
        "band": {**_PAIR, "description": "level - tolerance, level + tolerance"},
        "status": {"type": "string", "enum": ["ok", "under", "over", "too_few"]},
        "adaptive_samples": {"type": "integer", "minimum": 0, "description": "Samples served at an adaptive level"},
        "effective_level": {**_NUMBER, "description": "Level served now (the nominal one without adaptive levels)"},
    },
}
COVERAGE_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Coverage report",
    "required": ["model", "computed_at", "window", "rule", "alerting", "cells"],
    "properties": {
        "model": {"type": "string"},
        "computed_at": {**_NUMBER, "description": "Unix seconds"},
        "window": {
            "type": "object",
            "required": ["rows_per_cell", "max_age_s", "since", "rows_read", "truncated"],
            "properties": {
                "rows_per_cell": {"type": "integer"},
                "max_age_s": _NUMBER,
                "since": {**_NUMBER, "description": "Feedback received from this time (unix s) counts"},
                "rows_read": {"type": "integer"},
                "truncated": {"type": "boolean"},
            },
        },
        "rule": {
            "type": "object",
            "required": ["tolerance", "z", "min_samples", "adaptive", "gamma"],
            "properties": {
                "tolerance": _NUMBER,
                "z": _NUMBER,
                "min_samples": {"type": "integer"},
                "adaptive": {"type": "boolean"},
                "gamma": {"type": ["number", "null"]},
            },
        },
        "alerting": {"type": "boolean", "description": "Some cell is under or over its band"},
        "cells": {"type": "array", "items": COVERAGE_CELL_SCHEMA},
    },
}
_PROBLEM = {"content": {"application/problem+json": {"schema": {"type": "object"}}}}


def document_coverage(paths: dict[str, Any]) -> None:
    """Give the coverage route its response schemas (FastAPI only knows it returns a ``Response``)."""
    operation = paths.get("/models/{name}/coverage", {}).get("get")
    if operation is None:
        return
    operation["responses"] = {
        "200": {
            "description": "Realised coverage per model version, level and input pattern",
            "content": {"application/json": {"schema": COVERAGE_REPORT_SCHEMA}},
        },
        "404": {"description": "No such model", **_PROBLEM},
        "503": {"description": "Prediction log disabled or its store unreachable", **_PROBLEM},
    }
