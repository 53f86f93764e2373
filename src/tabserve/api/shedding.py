"""Load shedding at the HTTP protocol: a refused request never becomes a scope, a cycle or an asyncio task.

``tabserve serve`` runs uvicorn with ``SheddingProtocol``, uvicorn's httptools protocol with admission decided
when a request's headers are parsed: the worker's ``Admission`` looks at the requests accepted and not answered
and their projected queue wait. Refused: a complete ``503`` problem+json with ``Retry-After`` and
``X-Request-Id`` is written on the spot (the connection stays open for the next request). Accepted: exactly
uvicorn's path, plus a done-callback that releases the slot. One more change, for every request: the keep-alive
timer is not cancelled and re-armed per response (one timer per connection checks how long it has been idle).

Why here: the event loop is one thread, and under overload the latency of everything is the time it takes to
cycle through all outstanding requests. Refused in the app, a request costs a task, the ASGI layers, the request
envelope (metrics, access-log line) and a turn in the queue: 67-73 µs of server CPU per 503, socket read and
write included, measured with every request refused. Refused here, it costs the parse and one ``write``: the
decision is taken in ``on_headers_complete``, before uvicorn builds the request's scope and
``RequestResponseCycle`` (with its ``asyncio.Event``), and the answer is a byte template with only the reason
and the request id spliced in (``Refusals``). In-process (the protocol fed from memory, no sockets) that is
5.9 µs of CPU per refusal, against 12.4 µs when the refusal was made from uvicorn's cycle; in the overload
bench, socket read and write included, about 25 µs. A worker at 10× the load it sustains cycles through its
refused clients faster and keeps the rest for the requests it admitted.

The body of a refused request, if still arriving, is read and dropped by the parser. A request pipelined behind
one still being answered is decided when uvicorn starts it (the same answer, made from its cycle). Refusals get
no access-log line (the app logs one warning per interval with their count); they are counted in
``tabserve_rejected_requests_total`` and ``tabserve_requests_total`` (status 503). Probes and ``/metrics`` are
never refused; upgrades (WebSocket) and everything else go through uvicorn unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import urllib.parse
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from tabserve.api.middleware import EXEMPT_PATHS, MAX_REQUEST_ID, active_admission
from tabserve.api.problems import PROBLEM_JSON, problem_document
from tabserve.errors import OverloadedError
from tabserve.observability.logging import new_request_id

RETRY_AFTER_S = OverloadedError("").retry_after_s
_DETAIL_MARK, _RID_MARK = "@@tabserve-detail@@", "@@tabserve-request-id@@"
MAX_CACHED = 1024
LINGER_MAX_BYTES = 128 * 1024 * 1024
"""Lingering close: body bytes read and dropped, at most, after an answer given before the body was read (413,
503) on a connection the client asked to close (``Connection: close``, as Python's urllib sends). Closing with
unread data makes the kernel send a reset, and the client sees that instead of the answer."""
LINGER_MAX_S = 10.0
"""... and for at most this many seconds (a client that sends slower is then disconnected)."""
"""Entries kept per cache (routes per URL, escaped reasons): a flood of distinct URLs cannot grow them."""
MAX_HEAD_BYTES = 64 * 1024
"""Bytes a request's head (request line and headers) may take as it arrives; beyond, ``431`` and the connection
is closed (httptools buffers a header until it is complete: without a bound, one header could fill memory)."""
MAX_HEADERS = 100
"""Header fields a request may have; beyond, ``431`` and the connection is closed."""


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


def _json_text(text: str) -> bytes:
    """``text`` as the inside of a JSON string (escaped, without the quotes)."""
    return orjson.dumps(text)[1:-1]


class Refusals:
    """The 503's bytes from templates: per route kind (problem+json, or ``{"error"}`` on Open Inference Protocol
    routes, as their other errors) the fixed header lines and the body around the reason and the request id,
    made once; the status line and uvicorn's default headers (``Date``, changed once a second) are re-joined
    only when uvicorn replaces its list. Byte for byte what ``orjson.dumps`` of the documents gives."""

    def __init__(self) -> None:
        exc = OverloadedError(_DETAIL_MARK)
        problem = problem_document(exc.status, exc.title, _DETAIL_MARK, exc.slug)
        problem["request_id"] = _RID_MARK
        body = orjson.dumps(problem)
        before, rest = body.split(_DETAIL_MARK.encode())
        between, after = rest.split(_RID_MARK.encode())
        self._problem = (before, between, after)
        before, after = orjson.dumps({"error": _DETAIL_MARK}).split(_DETAIL_MARK.encode())
        self._oip = (before, after)
        retry = b"\r\nretry-after: " + str(RETRY_AFTER_S).encode() + b"\r\ncontent-length: "
        self._problem_head = b"content-type: " + PROBLEM_JSON.encode() + retry
        self._oip_head = b"content-type: application/json" + retry
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._status = STATUS_LINE[503]
        self._details: dict[str, bytes] = {}

    def _status_and_defaults(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        if default_headers is not self._defaults:
            self._defaults = default_headers
            self._status = STATUS_LINE[503] + b"".join(
                name + b": " + value + b"\r\n" for name, value in default_headers
            )
        return self._status

    def render(
        self,
        default_headers: list[tuple[bytes, bytes]],
        detail: str,
        request_id: bytes,
        *,
        oip: bool,
        head: bool,
        keep_alive: bool,
    ) -> bytes:
        """The whole response, status line to body; ``request_id`` is printable ASCII (echoed as is in the
        header, escaped in the JSON body). HEAD: the headers of the same answer, no body."""
        status = self._status_and_defaults(default_headers)
        escaped = self._details.get(detail)
        if escaped is None:
            escaped = _json_text(detail)
            if len(self._details) >= MAX_CACHED:
                self._details.clear()
            self._details[detail] = escaped
        if oip:
            before, after = self._oip
            body = before + escaped + after
            fixed = self._oip_head
        else:
            before, between, after = self._problem
            rid = request_id if b'"' not in request_id and b"\\" not in request_id else _json_text(request_id.decode())
            body = b"".join((before, escaped, between, rid, after))
            fixed = self._problem_head
        tail = b"\r\n\r\n" if keep_alive else b"\r\nconnection: close\r\n\r\n"
        parts = [status, fixed, str(len(body)).encode(), b"\r\nx-request-id: ", request_id, tail]
        if not head:
            parts.append(body)
        return b"".join(parts)


REFUSALS = Refusals()


class LingeringTransport:
    """What a request that asked to close its connection sees as its transport: ``close`` becomes a lingering
    close when the request's body is still arriving (``SheddingProtocol.linger``); everything else is the
    transport's. Only such requests get one: a keep-alive connection reads the rest of the body as usual."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: SheddingProtocol, transport: Any) -> None:
        self._protocol = protocol
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.linger()


class SheddingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with admission decided at parse time (see the module docstring)."""

    _running: Any = None
    """The scope of the gated request this connection is answering (one at a time: pipelined requests wait)."""
    _dropping = False
    """The request being parsed was refused at parse time: its body is read and dropped."""
    _routes: dict[bytes, tuple[bool, bool]] | None = None
    """Per request target seen on this connection: (never refused, Open Inference Protocol route)."""

    _lingering: int | None = None
    """Body bytes dropped since a lingering close began (None: not lingering)."""
    _linger_timer: Any = None

    _idle_since: float | None = None
    """Loop time at which this connection last became idle (its response written, nothing pipelined); None
    while it is receiving or answering a request."""

    _head_bytes: int | None = 0
    """Bytes received while the current request's head is incomplete (None between heads)."""
    _too_many_headers = False

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head bounded: a head still incomplete after ``MAX_HEAD_BYTES`` is refused (the
        parser holds at most that plus one read of it)."""
        counting = self._head_bytes is not None
        super().data_received(data)
        if counting and self._head_bytes is not None and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head(f"the request line and headers are over {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADERS:
            self._too_many_headers = True
            raise httptools.HttpParserCallbackError("too many header fields")
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse; a 431 when ``on_header`` stopped the parse."""
        if self._too_many_headers:
            self._refuse_head(f"the request has over {MAX_HEADERS} header fields")
            return
        super().send_400_response(msg)

    def _refuse_head(self, detail: str) -> None:
        """431 problem+json, then close (the rest of the head is not read)."""
        body = orjson.dumps(problem_document(431, "Request header fields too large", detail, "headers-too-large"))
        head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: %b\r\ncontent-length: %d\r\n"
        self.transport.write(head % (PROBLEM_JSON.encode(), len(body)) + b"connection: close\r\n\r\n" + body)
        self._head_bytes = None
        self.transport.close()

    def on_message_begin(self) -> None:
        """uvicorn's per-request state, except the scope: ``_scope`` builds it once the request is admitted."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._dropping = False
        self._head_bytes = 0

    def _scope(self) -> None:
        """uvicorn's ``on_message_begin`` for a request that goes on through uvicorn: its scope, with the URL
        and headers parsed so far."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_headers_complete(self) -> None:
        """Refuse here, before uvicorn builds the cycle, when the worker would refuse the request; otherwise (or
        if the connection is still answering an earlier request, or the request asks for an upgrade) uvicorn's
        own handling, and the gate then takes the slot in ``_start_asgi_task``."""
        self._head_bytes = None
        admission = active_admission()
        cycle = self.cycle
        if admission is None or (cycle is not None and not cycle.response_complete) or self.parser.should_upgrade():
            self._scope()
            super().on_headers_complete()
            return
        parsed = time.perf_counter()
        route = self._route(self.url)
        size, rid = _size_and_id(self.headers)
        detail = None if route is None or route[0] else admission.verdict(size)
        if route is None or detail is None:
            self._scope()
            super().on_headers_complete()
            return
        parser = self.parser
        # uvicorn's keep-alive rule; and a client that sent "Expect: 100-continue" and gets this final answer
        # instead does not send its body while the parser still waits for Content-Length bytes: the next
        # request would be read as that body. Close the connection after the refusal instead.
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive() and not self.expect_100_continue
        data = REFUSALS.render(
            self.server_state.default_headers,
            detail,
            rid or new_request_id().encode("ascii"),
            oip=route[1],
            head=parser.get_method() == b"HEAD",
            keep_alive=keep_alive,
        )
        self._dropping = True
        self.transport.write(data)
        if not keep_alive:
            self.linger()
        self.on_response_complete()
        admission.refused(time.perf_counter() - parsed)

    def _route(self, url: bytes) -> tuple[bool, bool] | None:
        """(never refused, Open Inference Protocol route) for a request target, from its path as uvicorn puts it
        in the scope; None when uvicorn's own parse of the URL fails (it then answers 400 as usual)."""
        routes = self._routes
        if routes is None:
            routes = self._routes = {}
        route = routes.get(url)
        if route is None:
            try:
                path = httptools.parse_url(url).path.decode("ascii")
            except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
                return None
            if "%" in path:
                path = urllib.parse.unquote(path)
            path = self.root_path + path
            route = (path in EXEMPT_PATHS, path.startswith("/v2/"))
            if len(routes) < MAX_CACHED:
                routes[url] = route
        return route

    def on_body(self, body: bytes) -> None:
        if self._lingering is not None:
            self._lingering += len(body)
            if self._lingering > LINGER_MAX_BYTES:
                self._end_linger()
        elif not self._dropping:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._lingering is not None:
            self._end_linger()  # the whole body is read: the answer is safe, close now
        elif not self._dropping:
            super().on_message_complete()

    def linger(self) -> None:
        """Close the connection, reading and dropping what remains of the request's body first (at most
        ``LINGER_MAX_BYTES`` and ``LINGER_MAX_S``) so the answer already written is not lost to a reset."""
        cycle = self.cycle
        if self._lingering is not None or self.transport.is_closing():
            return
        body_done = (cycle is None or not cycle.more_body) and not self._dropping
        # a client that sent "Expect: 100-continue" and got a final answer instead sends no body: close now
        no_body_coming = (
            self.expect_100_continue if self._dropping else cycle is not None and cycle.waiting_for_100_continue
        )
        if body_done or no_body_coming:
            self.transport.close()
            return
        self._lingering = 0
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_MAX_S, self._end_linger)

    def _end_linger(self) -> None:
        timer, self._linger_timer = self._linger_timer, None
        if timer is not None:
            timer.cancel()
        self.transport.close()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if not cycle.keep_alive:  # the client asked to close: answering before its body is read must linger
            cycle.transport = LingeringTransport(self, self.transport)  # type: ignore[assignment]
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
        """uvicorn's, with two changes. The finished request's slot is freed *before* the next pipelined request
        on this connection is started (uvicorn does so from here, inside the response's last ``send``, before
        the app's envelope gets to release the slot): otherwise that request would be gated against its own
        predecessor. And the keep-alive timer is not cancelled and re-armed per response (a ``call_later`` and
        a ``cancel`` per request, refusals included): the connection notes when it became idle, one timer runs
        and, when it fires, closes the connection if it has been idle for ``timeout_keep_alive`` since, or
        waits for the rest of that time."""
        scope, self._running = self._running, None
        if scope is not None:
            admission = active_admission()
            if admission is not None:
                admission.release(scope)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            self._idle_since = None
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self.loop.time()
            if self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn calls this when data arrives: the connection is busy until its response is written (the
        timer, if running, finds that and stops)."""
        self._idle_since = None

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # busy: armed again when its response is complete
        remaining = idle_since + self.timeout_keep_alive - self.loop.time()
        if remaining > 0:
            self.timeout_keep_alive_task = self.loop.call_later(remaining, self.timeout_keep_alive_handler)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        timer, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
        if timer is not None:
            timer.cancel()

    def _refuse(self, cycle: RequestResponseCycle, path: str, detail: str, rid: bytes | None) -> None:
        """A pipelined request refused when uvicorn starts it: answered now, as a finished response (the parser
        drops the rest of its body, the connection goes on with the next request or closes if asked to)."""
        keep_alive = cycle.keep_alive and not cycle.waiting_for_100_continue  # see on_headers_complete
        data = REFUSALS.render(
            self.server_state.default_headers,
            detail,
            rid or new_request_id().encode("ascii"),
            oip=path.startswith("/v2/"),
            head=cycle.scope["method"] == "HEAD",
            keep_alive=keep_alive,
        )
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.keep_alive = keep_alive
        self.transport.write(data)
        if not keep_alive:
            self.linger()
        self.on_response_complete()
