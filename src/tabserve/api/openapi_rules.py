"""Rules applied to every operation of the OpenAPI document, whoever added the route: the error answers the
service can give (each as problem+json, or ``{"error"}`` on Open Inference Protocol routes) and the content types
it really sends. Generic on purpose: a new route is documented by the same rules without touching this module.

What each rule encodes (the service's own behaviour, checked by schemathesis in tests/test_api_schemathesis.py):

- a request body -> 400 (malformed JSON, bad ``Content-Length``), 413 (over ``max_body_bytes`` or
  ``max_batch``), 415 (not a JSON content type);
- a path parameter -> 404 (no such model or version);
- any parameter or body -> 422 (invalid value; FastAPI's own ``HTTPValidationError`` replaced: the service
  answers problem+json);
- every route except probes and ``/metrics`` -> 429 (rate limit, when on) and 503 (load shedding);
- routes that check a credential -> 401 and 403.
"""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
NEVER_SHED = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message", "code"],
                "properties": {
                    "loc": {"type": "array"},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "code": {"type": "string"},
                },
            },
        },
    },
}
OIP_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "InferenceError",
    "description": "Open Inference Protocol error",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
REASONS = {
    400: "Malformed request (JSON, Content-Length, tensor layout)",
    401: "Missing or wrong credential",
    403: "The credential is not allowed here",
    404: "No such model, version or record",
    408: "The body did not arrive in time",
    413: "Body or batch over the configured limit",
    415: "Unsupported content type (send application/json)",
    422: "Invalid input, one entry per field",
    429: "Rate limited (Retry-After)",
    503: "Overloaded or not ready (Retry-After)",
}


def _error_response(status: int, oip: bool) -> dict[str, Any]:
    if oip:
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceError"}}}
    else:
        content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {"description": REASONS[status], "content": content}


def _statuses(path: str, operation: dict[str, Any], path_parameters: list[Any]) -> set[int]:
    parameters = [*path_parameters, *operation.get("parameters", [])]
    statuses: set[int] = set()
    if operation.get("requestBody"):
        statuses |= {400, 408, 413, 415, 422}
    if any(p.get("in") == "path" for p in parameters):
        statuses.add(404)
    if parameters:
        statuses.add(422)
    credential = any(p.get("in") == "header" and p.get("name") in {"authorization", "x-api-key"} for p in parameters)
    if operation.get("security") or credential:
        statuses |= {401, 403, 404}  # 404: the admin API is disabled (no credential configured)
    if path not in NEVER_SHED:
        statuses |= {429, 503}
    return statuses


def apply_rules(schema: dict[str, Any]) -> dict[str, Any]:
    """Document every operation's error answers (in place; returns ``schema``)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    components["InferenceError"] = OIP_ERROR_SCHEMA
    for path, item in schema.get("paths", {}).items():
        oip = path.startswith("/v2")
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(_statuses(path, operation, item.get("parameters", []))):
                existing = responses.get(str(status))
                if existing is None or "HTTPValidationError" in str(existing.get("content", "")):
                    responses[str(status)] = _error_response(status, oip)
                else:  # declared by the route (e.g. a readiness 503): keep its words, give it the error body
                    existing.setdefault("content", _error_response(status, oip)["content"])
    for name in ("HTTPValidationError", "ValidationError"):
        if name not in str(schema.get("paths", {})):
            components.pop(name, None)
    return schema
