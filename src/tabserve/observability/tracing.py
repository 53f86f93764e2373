"""OpenTelemetry spans for a request and its stages, with an own TracerProvider (never the global one).

``Tracing.create(endpoint, service_name)`` exports over OTLP/HTTP when an endpoint is given (the value of
``OTEL_EXPORTER_OTLP_ENDPOINT``, a base URL: ``/v1/traces`` is appended) and is a no-op otherwise: a
disabled ``span()`` returns one shared do-nothing context manager. Tests pass an ``exporter`` (the SDK's
``InMemorySpanExporter``), which is attached with a synchronous processor so spans are visible at once.

The request span continues the caller's trace from the W3C ``traceparent`` header; stage spans nest under
whichever span is current (OpenTelemetry keeps it in a ContextVar, so this works across ``await``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

OTLP_TRACES_PATH = "/v1/traces"


class _NoopSpan(AbstractContextManager[None]):
    """The disabled span: entering and leaving it does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NOOP = _NoopSpan()


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP traces URL for a base endpoint such as ``http://collector:4318``."""
    base = endpoint.rstrip("/")
    return base if base.endswith(OTLP_TRACES_PATH) else base + OTLP_TRACES_PATH


class Tracing:
    """Spans of one app. ``enabled`` is False when nothing would be exported."""

    def __init__(self, provider: TracerProvider | None, service_name: str) -> None:
        self._provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("tabserve") if provider is not None else None
        self._propagator = TraceContextTextMapPropagator()
        self.service_name = service_name

    @classmethod
    def create(cls, endpoint: str | None, service_name: str, exporter: SpanExporter | None = None) -> Tracing:
        """Enabled with ``exporter`` (tests) or an OTLP/HTTP exporter to ``endpoint``; otherwise a no-op."""
        if exporter is None and not endpoint:
            return cls(None, service_name)
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(str(endpoint)))))
        return cls(provider, service_name)

    def span(self, name: str, **attrs: Any) -> AbstractContextManager[Any]:
        """A child of the current span (e.g. a stage: ``validate``, ``inference``); free when disabled."""
        if self._tracer is None:
            return _NOOP
        return self._tracer.start_as_current_span(name, attributes=attrs or None)

    def request_span(self, name: str, traceparent: str | None = None, **attrs: Any) -> AbstractContextManager[Any]:
        """The server span of a request, continuing the caller's trace from ``traceparent`` if valid."""
        if self._tracer is None:
            return _NOOP
        return self._request_span(self._tracer, name, traceparent, attrs)

    @contextmanager
    def _request_span(
        self, tracer: trace.Tracer, name: str, traceparent: str | None, attrs: dict[str, Any]
    ) -> Iterator[trace.Span]:
        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        with tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attrs or None, record_exception=True
        ) as span:
            yield span

    def stage_spans(self, started_ns: int, stages: list[tuple[str, float]]) -> None:
        """Children of the current span for consecutive stages measured by the service: (name, seconds)
        from ``started_ns`` (wall clock). Recorded after the fact, so the hot path pays nothing for them."""
        if self._tracer is None:
            return
        at = started_ns
        for name, seconds in stages:
            end = at + int(seconds * 1e9)
            span = self._tracer.start_span(name, start_time=at)
            span.end(end_time=end)
            at = end

    def current_ids(self) -> tuple[str, str] | None:
        """(trace id, span id) of the current recording span in hex, for log correlation; None if none."""
        if self._tracer is None:
            return None
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    def set_attributes(self, **attrs: Any) -> None:
        """Add attributes to the current span (e.g. ``model``, ``rows``, ``http.status_code``)."""
        if self._tracer is None:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(attrs)

    def shutdown(self) -> None:
        """Flush pending spans and stop the exporter (app shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()
