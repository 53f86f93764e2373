"""The request envelope, as one pure ASGI middleware: request id, trace context, admission control,
rate limit, and — after the response — the request metric and the access log line.

Pure ASGI (not ``BaseHTTPMiddleware``): it adds a few microseconds, not a task and a queue per request.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tabserve.api.auth import INVALID, Authenticator, Principal
from tabserve.api.problems import PROBLEM_JSON, problem_document
from tabserve.errors import OverloadedError, PayloadTooLargeError, RateLimitedError, TabserveError, UnauthorizedError
from tabserve.observability.logging import (
    AccessLog,
    bind_request,
    new_request_id,
    reset_request,
    set_trace,
    trace_from_headers,
)
from tabserve.observability.metrics import ServiceMetrics
from tabserve.observability.tracing import Tracing

EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})
"""Probes and scrapes are never refused: an overloaded pod must not be restarted for being busy."""
MAX_REQUEST_ID = 128
BATCH_ALLOWANCE_BYTES = 16_384


_ENQUEUED: contextvars.ContextVar[float] = contextvars.ContextVar("tabserve_enqueued_at")
_ACTIVE: list[Admission] = []
GATED = "tabserve.gated"
"""Scope key set by the parse-time gate: the request holds a slot until ``Admission.release``."""
GATED_AT = "tabserve.gated_at"
"""When the gate accepted the request (``time.perf_counter``)."""
SERVICE_EWMA_ALPHA = 0.05
SAMPLE_CLIP = 3.0
BACKSTOP_FACTOR = 4.0
"""A request accepted at parse time is still refused in the app when it waited more than this many queue bounds
(the estimate was wrong); without the parse-time gate the plain bound applies."""


def active_admission() -> Admission | None:
    """The admission control installed on this process's serving loop (None before start-up)."""
    return _ACTIVE[-1] if _ACTIVE else None


class Admission:
    """Refuses work a worker cannot do in time, at once, instead of queueing without bound.

    Two bounds. ``limit``: requests this worker has taken on and not answered yet (0 = none); under ``tabserve
    serve`` that counts them from the moment they are parsed (queued or in the app, as Cloud Run counts an
    instance's concurrency), under another server from when they reach the app. ``max_queue_s``: how long a
    request may wait for the event loop before its handler starts (0 = none).

    Under ``tabserve serve`` both are decided when uvicorn has parsed a request's headers, *before* it becomes an
    asyncio task (``tabserve.api.shedding``). ``gate`` projects a new request's wait as the requests accepted and
    not answered × ``service_s``: an EWMA of the time between consecutive answers while requests were waiting,
    i.e. how often this worker, as loaded right now (refusals included), finishes an admitted request; whatever
    the handlers do (run to completion, or await a shared ONNX call). An answer with nobody waiting gives its
    own time from parse to answer instead (so the estimate also falls while the worker is lightly loaded).
    Samples are clipped to 3× the estimate, so one stall of a descheduled process does not make the worker
    refuse work it has time for, and to ``max_queue_s``, so one slow answer (a hot reload, say) can never make
    the gate refuse a request that has a single one ahead of it — which would leave the estimate stuck, as
    only answers move it. A refused
    request costs a parse and one write, not a task, the ASGI stack and a turn in the queue, so a worker at 10×
    its capacity spends its time on the requests it admitted.

    ``admit``, in the app, is the backstop and the only check when the app runs under another server: it
    measures the actual wait since the task was created (``install`` puts a task factory on the loop that
    stamps each task; CoDel-style, the requests that already waited too long are the ones refused).
    """

    def __init__(self, limit: int, max_queue_s: float, on_refused: Callable[[float], None] | None = None) -> None:
        self.limit = limit
        self.max_queue_s = max_queue_s
        self.on_refused = on_refused
        self.in_flight = 0
        """Requests admitted into the app and not finished."""
        self.outstanding = 0
        """Requests accepted at parse time and not finished (queued or in the app); 0 without the gate."""
        self.service_s = 0.0
        """Time between two answers of this worker while requests wait (0 until measured)."""
        self._last_answer = 0.0
        self._backlog = False
        self.shed = 0
        """Requests refused at parse time since ``take_shed`` was last called."""

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called at start-up, on the serving loop; makes this the process's ``active_admission()``."""
        previous = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
            context = kwargs.pop("context", None) or contextvars.copy_context()
            context.run(_ENQUEUED.set, time.perf_counter())
            if previous is not None:
                return previous(loop, coro, context=context, **kwargs)  # type: ignore[call-arg]
            return asyncio.Task(coro, loop=loop, context=context, **kwargs)

        loop.set_task_factory(factory)
        _ACTIVE.append(self)

    def uninstall(self) -> None:
        """At shutdown: parse-time decisions no longer come here."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def queue_bound(self, body_bytes: int) -> float:
        """The wait allowed to a request: ``max_queue_s`` per started 16 KiB of body, so 1,000-row batches
        queued behind each other are not shed while single predictions keep their tight bound."""
        return self.max_queue_s * (1 + body_bytes // BATCH_ALLOWANCE_BYTES)

    def verdict(self, body_bytes: int = 0) -> str | None:
        """What ``gate`` would decide now, without taking a slot: None (accepted) or why it is refused. The
        protocol asks this before it builds anything for a request (a refusal then costs no scope, cycle or
        task); only refused requests pay for the formatted reason."""
        ahead = self.outstanding
        if self.limit and ahead >= self.limit:
            return f"{self.limit} requests already in flight on this worker; retry shortly"
        if self.max_queue_s and ahead > 0:
            projected = ahead * self.service_s
            if projected > self.max_queue_s * (1 + body_bytes // BATCH_ALLOWANCE_BYTES):  # queue_bound, inlined
                return f"{ahead} requests ahead (~{projected * 1000:.0f} ms of work); retry shortly"
        return None

    def gate(self, scope: MutableMapping[str, Any], body_bytes: int = 0) -> str | None:
        """At parse time (no handler runs meanwhile): None if the request is accepted, which marks its ``scope``
        (``GATED``) and holds a slot until ``release``; otherwise why it is refused (``verdict``)."""
        refused = self.verdict(body_bytes)
        if refused is not None:
            return refused
        self.outstanding += 1
        scope[GATED] = True
        scope[GATED_AT] = time.perf_counter()
        return None

    def release(self, scope: MutableMapping[str, Any]) -> None:
        """A request accepted by ``gate`` is finished. The protocol calls this as soon as the response is
        complete (before the connection's next pipelined request is gated; a task's done-callback would run one
        loop turn later, after the next requests were parsed and counted against slots already free), and again
        when the task ends, which covers a task that never completed a response. Popping ``GATED`` makes the
        second call a no-op."""
        if scope.pop(GATED, False):
            gated_at: float = scope.pop(GATED_AT, 0.0)
            self.outstanding -= 1
            now = time.perf_counter()
            # requests waiting at the previous answer: the worker was busy since; else this request had the
            # worker to itself from parse to answer
            since = self._last_answer if self._backlog else gated_at
            sample = now - since if since else 0.0
            if sample > 0.0:
                if self.max_queue_s:
                    sample = min(sample, self.max_queue_s)
                self.service_s = self._ewma(self.service_s, sample)
            self._last_answer = now
            self._backlog = self.outstanding > 0

    def refused(self, seconds: float) -> None:
        """A request was refused at parse time; ``seconds`` since its headers were parsed."""
        self.shed += 1
        if self.on_refused is not None:
            self.on_refused(seconds)

    def take_shed(self) -> int:
        """Requests refused at parse time since the last call (for a periodic log line)."""
        shed, self.shed = self.shed, 0
        return shed

    @staticmethod
    def _ewma(estimate: float, sample: float) -> float:
        if estimate == 0.0:
            return sample
        return estimate + SERVICE_EWMA_ALPHA * (min(sample, SAMPLE_CLIP * estimate) - estimate)

    def admit(self, now: float, body_bytes: int = 0, gated_at: float | None = None) -> None:
        """In the app, before any work: refuse (OverloadedError) or let through. ``gated_at``: when the request
        passed the parse-time gate (its wait counts from there; the task factory's stamp otherwise)."""
        if self.limit and self.in_flight >= self.limit:
            raise OverloadedError(f"{self.limit} requests already in flight on this worker; retry shortly")
        if self.max_queue_s:
            waited = now - (_ENQUEUED.get(now) if gated_at is None else gated_at)
            bound = self.queue_bound(body_bytes) * (1.0 if gated_at is None else BACKSTOP_FACTOR)
            if waited > bound:
                raise OverloadedError(f"the request waited {waited * 1000:.0f} ms for this worker; retry shortly")


class RateLimiter:
    """Token bucket per authenticated key (its name) or client address; LRU-bounded number of buckets."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, now: float) -> None:
        tokens, stamp = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise RateLimitedError(f"rate limit of {self.rate:g} requests/s exceeded", retry_after_s=retry)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


def _decoded(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _clean_request_id(value: str | None) -> str:
    if value and len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable():
        return value
    return new_request_id()


class RequestEnvelope:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        access_log: AccessLog,
        tracing: Tracing,
        admission: Admission,
        limiter: RateLimiter | None,
        max_body_bytes: int,
        auth: Authenticator | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.access_log = access_log
        self.tracing = tracing
        self.admission = admission
        self.limiter = limiter
        self.auth = auth or Authenticator([])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        named = dict(headers)  # one pass (a repeated header: its last value)
        request_id = _clean_request_id(_decoded(named.get(b"x-request-id")))
        traceparent = _decoded(named.get(b"traceparent"))
        trace = trace_from_headers(traceparent, _decoded(named.get(b"x-cloud-trace-context")))
        token = bind_request(request_id, trace)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode("latin-1"))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        path: str = scope["path"]
        admission = self.admission
        try:
            if path not in EXEMPT_PATHS:
                try:
                    size = self._declared_size(named.get(b"content-length"))
                    self.admission.admit(started, size, scope.get(GATED_AT))
                    principal = self.auth.identify(
                        _decoded(named.get(b"authorization")), _decoded(named.get(b"x-api-key"))
                    )
                    if self.limiter is not None:
                        self.limiter.check(self._client_key(scope, principal), time.monotonic())
                    self.auth.authorize(scope["method"], path, principal)
                except TabserveError as exc:
                    if isinstance(exc, OverloadedError | RateLimitedError):
                        self.metrics.rejected("overload" if isinstance(exc, OverloadedError) else "rate_limit")
                    await self._refuse(exc, request_id, send_with_id, oip=path.startswith("/v2/"))
                    return
            self.metrics.in_flight_inc()
            admission.in_flight += 1
            try:
                if self.tracing.enabled:
                    await self._traced(scope, receive, send_with_id, traceparent, request_id, state)
                else:
                    await self.app(scope, receive, send_with_id)
            finally:
                admission.in_flight -= 1
                self.metrics.in_flight_dec()
        finally:
            elapsed = time.perf_counter() - started
            template = state.get("route") or getattr(scope.get("route"), "path", None) or "unmatched"
            model = state.get("model", "")
            metrics = self.metrics
            metrics.request(template, model, status, elapsed)
            timings = state.get("timings")
            if timings is not None:
                metrics.stage("validate", model, timings.validate)
                metrics.stage("preprocess", model, timings.preprocess)
                metrics.stage("inference", model, timings.inference)
                metrics.stage("serialise", model, timings.serialise)
            if self.access_log.enabled:
                self.access_log(
                    scope["method"],
                    template,
                    status,
                    round(elapsed * 1000.0, 3),
                    rows=state.get("rows"),
                    preprocess_ms=round((timings.validate + timings.preprocess) * 1000.0, 3) if timings else None,
                    inference_ms=round(timings.inference * 1000.0, 3) if timings else None,
                )
            reset_request(token)

    async def _traced(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        traceparent: str | None,
        request_id: str,
        state: dict[str, Any],
    ) -> None:
        """The request span (continuing the caller's trace), its stage spans, and log correlation."""
        tracing = self.tracing
        with tracing.request_span(f"{scope['method']} {scope['path']}", traceparent, request_id=request_id):
            ids = tracing.current_ids()
            if ids is not None:
                set_trace(*ids)
            await self.app(scope, receive, send)
            timings = state.get("timings")
            if timings is not None:
                tracing.set_attributes(model=state.get("model", ""), rows=state.get("rows", 0))
                tracing.stage_spans(timings.started_ns, timings.stages())

    def _declared_size(self, declared: bytes | None) -> int:
        """Content-Length (0 when absent); a body over the limit is refused before anything reads it."""
        if declared is None or not declared.isdigit():
            return 0
        size = int(declared)
        if size > self.max_body_bytes:
            raise PayloadTooLargeError(f"body of {size} bytes is over the limit of {self.max_body_bytes} bytes")
        return size

    @staticmethod
    def _client_key(scope: Scope, principal: Principal | None) -> str:
        """The rate limit's bucket: a valid key's name, else the address (random keys buy no fresh bucket)."""
        if principal is not None and principal is not INVALID:
            return "key:" + principal.name
        client = scope.get("client")
        return "addr:" + (client[0] if client else "unknown")

    @staticmethod
    async def _refuse(exc: TabserveError, request_id: str, send: Send, *, oip: bool) -> None:
        """Answer before the app runs: problem+json, or ``{"error"}`` on Open Inference Protocol routes."""
        if oip:
            body: dict[str, Any] = {"error": exc.detail}
            headers = [(b"content-type", b"application/json")]
        else:
            body = problem_document(exc.status, exc.title, exc.detail, exc.slug)
            body["request_id"] = request_id
            headers = [(b"content-type", PROBLEM_JSON.encode())]
        retry = getattr(exc, "retry_after_s", None)
        if retry is not None:
            headers.append((b"retry-after", str(retry).encode()))
        if isinstance(exc, UnauthorizedError):
            headers.append((b"www-authenticate", exc.challenge.encode()))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})
