"""Browser-facing hardening of the FastAPI routes: security headers on every response (and a strict Content
Security Policy on HTML, the web page's included), and the local API page at ``/docs`` that replaces FastAPI's
Swagger UI (which loads its script and styles from a CDN).

Installed around the FastAPI app only: the predict fast path (``routes_predict``) answers JSON before it and
pays nothing. A response that sets its own ``content-security-policy`` (a page with its own rules) keeps it.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import FastAPI
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""For HTML answers: scripts, styles, images and fetches from this origin's files only (``/static/*``: no inline
script or style, no ``eval``, no other origin), never framed, no ``<base>``, no form posted by the browser (the
web page's form is sent by its script)."""
ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
HTML_ONLY = [(b"content-security-policy", CSP), (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    """Pure ASGI: adds ``ALWAYS`` to every response, ``HTML_ONLY`` to ``text/html`` ones."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                extra = [h for h in ALWAYS if h[0] not in names]
                media = next((v for n, v in headers if n.lower() == b"content-type"), b"")
                if media.startswith(b"text/html"):
                    extra += [h for h in HTML_ONLY if h[0] not in names]
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _operations(schema: dict[str, Any]) -> str:
    rows = []
    for path, item in sorted(schema.get("paths", {}).items()):
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                summary = html.escape(str(operation.get("summary", "")))
                rows.append(
                    f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                    f"<td>{summary}</td></tr>"
                )
    return "\n".join(rows)


def install_docs(app: FastAPI) -> None:
    """``GET /docs``: every operation of the OpenAPI document on one local page (no script, no CDN; the web page's
    stylesheet)."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        schema = app.openapi()
        title = html.escape(app.title)
        page = (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>{title} API</title>"
            '<link rel="icon" href="/static/icon.svg" type="image/svg+xml">'
            '<link rel="stylesheet" href="/static/web.css"><main class="card">'
            f"<h1>{title} API</h1><p>The full document: <a href=/openapi.json>/openapi.json</a> (OpenAPI "
            f"{html.escape(str(schema.get('openapi', '')))}).</p><table>{_operations(schema)}</table></main></html>"
        )
        return HTMLResponse(page)
