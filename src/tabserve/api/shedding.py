"""Load shedding at the HTTP protocol: a refused request never becomes an asyncio task.

``tabserve serve`` runs uvicorn with ``SheddingProtocol``, uvicorn's httptools protocol with one change: when a
request's headers are parsed, the worker's ``Admission.gate`` decides (requests accepted and not answered,
their projected queue wait). Refused: a complete ``503`` problem+json with ``Retry-After`` and
``X-Request-Id`` is written on the spot (the connection stays open for the next request). Accepted: exactly
uvicorn's path, plus a done-callback that releases the slot.

Why here: the event loop is one thread, and under overload the latency of everything is the time it takes to
cycle through all outstanding requests. Refused in the app, a request costs a task, the ASGI layers, the request
envelope (metrics, access-log line) and a turn in the queue: 67-73 µs of server CPU per 503, socket read and
write included, measured with every request refused; refused here, 36 µs (the parse and one ``write``), so the
worker cycles through refused clients twice as fast and keeps the rest for the requests it admitted. The
request's body, if still arriving, is read and dropped by the parser as usual. Refusals here get no access-log
line (the app logs one warning per interval with their count); they are counted in
``tabserve_rejected_requests_total`` and ``tabserve_requests_total`` (status 503). Probes and ``/metrics`` are
never refused; nothing else in the protocol changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from tabserve.api.middleware import EXEMPT_PATHS, MAX_REQUEST_ID, active_admission
from tabserve.api.problems import PROBLEM_JSON, problem_document
from tabserve.errors import OverloadedError
from tabserve.observability.logging import new_request_id

RETRY_AFTER_S = OverloadedError("").retry_after_s
_PROBLEM_HEADERS = (
    b"content-type: " + PROBLEM_JSON.encode() + b"\r\nretry-after: " + str(RETRY_AFTER_S).encode() + b"\r\n"
)
_OIP_HEADERS = b"content-type: application/json\r\nretry-after: " + str(RETRY_AFTER_S).encode() + b"\r\n"


def _size_and_id(headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes | None]:
    """Content-Length (0 when absent or invalid) and the client's X-Request-Id when usable."""
    size, rid = 0, None
    for name, value in headers:
        if name == b"content-length":
            if value.isdigit():
                size = int(value)
        elif name == b"x-request-id" and 0 < len(value) <= MAX_REQUEST_ID and value.isascii():
            text = value.decode("ascii")
            if text.isprintable():
                rid = value
    return size, rid


def refusal(
    path: str, method: str, detail: str, request_id: bytes, *, keep_alive: bool = True, extra_headers: bytes = b""
) -> bytes:
    """The whole 503 response, status line to body: problem+json (``{"error"}`` on Open Inference Protocol
    routes, as their other errors), ``Retry-After``, ``X-Request-Id``; ``extra_headers`` are complete lines."""
    if path.startswith("/v2/"):
        document: dict[str, Any] = {"error": detail}
        headers = _OIP_HEADERS
    else:
        exc = OverloadedError(detail)
        document = problem_document(exc.status, exc.title, detail, exc.slug)
        document["request_id"] = request_id.decode("ascii")
        headers = _PROBLEM_HEADERS
    body = orjson.dumps(document)
    head = [
        STATUS_LINE[503],
        extra_headers,
        headers,
        b"content-length: ",
        str(len(body)).encode(),
        b"\r\nx-request-id: ",
        request_id,
        b"\r\n",
    ]
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    if method != "HEAD":
        head.append(body)
    return b"".join(head)


class SheddingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with admission decided at parse time (see the module docstring)."""

    _running: Any = None
    """The scope of the gated request this connection is answering (one at a time: pipelined requests wait)."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        admission = active_admission()
        scope: Any = cycle.scope
        path: str = scope["path"]
        if admission is None or path in EXEMPT_PATHS:
            super()._start_asgi_task(cycle, app)
            return
        parsed = time.perf_counter()
        size, rid = _size_and_id(scope["headers"])
        detail = admission.gate(scope, size)
        if detail is not None:
            self._refuse(cycle, path, detail, rid)
            admission.refused(time.perf_counter() - parsed)
            return
        # A Task made here, not by loop.create_task: the admission's task factory stamps every task's start for
        # the in-app backstop, and a gated request carries its own stamp (GATED_AT) already.
        if self.config.reset_contextvars:
            task = asyncio.Task(cycle.run_asgi(app), loop=self.loop, context=contextvars.Context())
        else:
            task = asyncio.Task(cycle.run_asgi(app), loop=self.loop)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: admission.release(scope))
        self.tasks.add(task)
        self._running = scope

    def on_response_complete(self) -> None:
        """Free the finished request's slot *before* uvicorn starts the next pipelined request on this
        connection (it does so from here, inside the response's last ``send``, before the app's envelope
        gets to release the slot): otherwise that request would be gated against its own predecessor."""
        scope, self._running = self._running, None
        admission = active_admission()
        if scope is not None and admission is not None:
            admission.release(scope)
        super().on_response_complete()

    def _refuse(self, cycle: RequestResponseCycle, path: str, detail: str, rid: bytes | None) -> None:
        """Answer the request now, as a finished response: the parser drops the rest of its body, and the
        connection goes on with the next request (or closes, if the client asked for that)."""
        request_id = rid or new_request_id().encode("ascii")
        # Date (and Server, if enabled), as on every other response
        default = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        # A client that sent "Expect: 100-continue" and gets this final answer instead does not send its body,
        # while the parser still waits for Content-Length bytes: the next request would be read as that body.
        # Close the connection after the refusal instead.
        keep_alive = cycle.keep_alive and not cycle.waiting_for_100_continue
        data = refusal(path, cycle.scope["method"], detail, request_id, keep_alive=keep_alive, extra_headers=default)
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.keep_alive = keep_alive
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()
