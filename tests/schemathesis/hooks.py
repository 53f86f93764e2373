"""Schemathesis hooks for tests/test_api_schemathesis.py: every 4xx carries the service's error body."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


def _header(response: Any, name: str) -> str:
    values = response.headers.get(name, [])
    return (values[0] if isinstance(values, list) and values else str(values or "")).split(";")[0].strip()


@schemathesis.check
def error_body(ctx: Any, response: Any, case: Any) -> None:
    """A 4xx is problem+json (type, title, status = the status code, detail), or ``{"error": str}`` on the
    Open Inference Protocol routes (its specification's error form)."""
    if not 400 <= response.status_code < 500 or case.method.upper() == "HEAD":
        return
    body = json.loads(response.content)
    if case.path.startswith("/v2") and response.status_code != 405:  # 405: the router's, problem+json
        if _header(response, "content-type") != "application/json" or not isinstance(body.get("error"), str):
            raise AssertionError(f"{response.status_code} on {case.path} without an {{'error'}} body")
        return
    if _header(response, "content-type") != "application/problem+json":
        raise AssertionError(f"{response.status_code} on {case.path} is not application/problem+json")
    missing = {"type", "title", "status", "detail"} - set(body)
    if missing or body["status"] != response.status_code:
        raise AssertionError(f"problem+json body lacks {sorted(missing)} or its status differs: {body}")
