"""``create_app(settings)``: builds every per-app object, wires routes, and owns start-up and shutdown.

Nothing happens at import. The lifespan verifies, loads and warms the models (off the event loop), starts the
prediction log writer, and on shutdown flushes the log within the grace period.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tabserve import __version__
from tabserve.adaptive import AdaptiveLevels
from tabserve.api import problems
from tabserve.api.auth import Authenticator, check_production
from tabserve.api.context import AppContext
from tabserve.api.middleware import Admission, RateLimiter, RequestEnvelope
from tabserve.api.openapi import install_openapi
from tabserve.api.routes_admin import router as admin_router
from tabserve.api.routes_health import router as health_router
from tabserve.api.routes_models import router as models_router
from tabserve.api.routes_oip import router as oip_router
from tabserve.api.routes_predict import PredictFastPath
from tabserve.api.routes_web import router as web_router
from tabserve.api.security_headers import SecurityHeaders, install_docs
from tabserve.config import Settings
from tabserve.errors import TabserveError
from tabserve.memory import release_startup_memory
from tabserve.observability.coverage import CoverageGauges, CoverageMonitor, CoverageRule
from tabserve.observability.drift import DriftMonitor
from tabserve.observability.logging import AccessLog, configure_logging, log_fields
from tabserve.observability.metrics import ServiceMetrics
from tabserve.observability.tracing import Tracing
from tabserve.observe import PredictionObserver
from tabserve.registry import ModelRegistry, ModelState
from tabserve.service import PredictionService
from tabserve.store.base import open_store
from tabserve.store.log import PredictionLog
from tabserve.worker_reloads import POLL_S, WorkerReloads

SPILL_FILE = "prediction-log.spill.jsonl"


def _registry_listener(ctx_holder: list[AppContext]) -> object:
    def on_change(state: ModelState) -> None:
        if not ctx_holder:
            return
        ctx = ctx_holder[0]
        model = state.serving
        if model is not None:
            ctx.metrics.model_info(model.name, model.version, model.onnx_sha256, model.degraded)
            ctx.drift.register(model.name, model.manifest)
        level = 30 if state.error else 20
        message = f"model {state.name}: {state.status}" + (f" ({state.error})" if state.error else "")
        log_fields(ctx.logger, level, message, model=state.name, model_version=state.version, status=state.status)

    return on_change


def create_app(
    settings: Settings | None = None, *, metrics: ServiceMetrics | None = None, tracing: Tracing | None = None
) -> ServiceApp:
    """A fully isolated app: its own registry, metrics registry, logger, tracer, drift windows and log."""
    settings = settings or Settings()
    check_production(settings)
    auth = Authenticator.from_settings(settings)
    holder: list[AppContext] = []
    registry = ModelRegistry(
        settings.models_dir,
        settings.model_versions(),
        settings.fallback_versions(),
        strict_fields=settings.strict_fields,
        warmup=settings.warmup,
        listener=_registry_listener(holder),  # type: ignore[arg-type]
    )
    metrics = metrics or ServiceMetrics(settings.prometheus_multiproc_dir)
    drift = DriftMonitor(settings.drift_window, observer=metrics.drift)
    logger = configure_logging(settings.log_format, settings.log_level, settings.google_cloud_project or None)
    tracing = tracing or Tracing.create(settings.otlp_endpoint or None, "tabserve")
    log: PredictionLog | None = None
    if settings.prediction_log:
        store = open_store(settings.store_url.get_secret_value(), settings.data_dir)
        log = PredictionLog(
            store,
            spill_path=settings.data_dir / SPILL_FILE,
            queue_size=settings.log_queue_size,
            observer=metrics.store_metrics(),
            journal=settings.log_journal,
        )
    service = PredictionService(registry, max_batch=settings.max_batch, hooks=PredictionObserver(metrics, drift, log))
    admission = Admission(settings.max_in_flight, settings.max_queue_ms / 1000.0, _count_refusal(metrics))
    access_log = AccessLog(logger, settings.access_log)
    ctx = AppContext(settings, registry, service, metrics, drift, tracing, logger, admission, access_log, log)
    ctx.auth = auth
    if settings.workers > 1:
        ctx.reloads = WorkerReloads(settings.data_dir)
    if log is not None:
        ctx.coverage = _coverage_monitor(settings, log, metrics)
        service.adaptive = ctx.coverage.adaptive
    holder.append(ctx)

    app = FastAPI(
        telemetry={"tracing": False, "metrics": False, "logs": False},  # tabserve's own tracing is injected
        title="tabserve",
        version=__version__,
        description="Predictions with honest confidence for tabular models (ONNX + JSON manifests).",
        lifespan=_lifespan,
        docs_url=None,  # Swagger UI loads from a CDN: the local page of security_headers.install_docs instead
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_exception_handler(TabserveError, problems.tabserve_error_handler)
    app.add_exception_handler(FastAPIValidationError, problems.fastapi_validation_handler)
    app.add_exception_handler(StarletteHTTPException, problems.http_error_handler)
    app.add_exception_handler(Exception, problems.unexpected_error_handler)
    for router in (health_router, models_router, admin_router, oip_router, web_router):
        app.include_router(router)
    install_openapi(app)
    install_docs(app)
    app.add_middleware(SecurityHeaders)
    fast = PredictFastPath(
        app, service=service, default_model=settings.default_model, max_body_bytes=settings.max_body_bytes
    )
    envelope = RequestEnvelope(
        fast,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        access_log=access_log,
        tracing=tracing,
        admission=admission,
        limiter=RateLimiter(settings.rate_limit, settings.rate_limit_burst) if settings.rate_limit else None,
        auth=auth,
    )
    return ServiceApp(app, envelope)


def _coverage_monitor(settings: Settings, log: PredictionLog, metrics: ServiceMetrics) -> CoverageMonitor:
    """The coverage monitor over the prediction log, with adaptive levels when the setting asks for them."""
    store = log.backend
    adaptive = None
    if settings.coverage_adaptive:
        adaptive = AdaptiveLevels(settings.coverage_adaptive_gamma, store.adaptive_counts)
    return CoverageMonitor(
        store.labelled_window,
        window=settings.coverage_window,
        max_age_s=settings.coverage_max_age_s,
        max_rows=settings.coverage_max_rows,
        refresh_s=settings.coverage_refresh_s,
        rule=CoverageRule(tolerance=settings.coverage_tolerance, min_samples=settings.coverage_min_samples),
        gauges=CoverageGauges(metrics.registry),
        adaptive=adaptive,
        latest_feedback=store.latest_feedback_time,
    )


def _count_refusal(metrics: ServiceMetrics) -> Callable[[float], None]:
    """A request refused at parse time counts as a rejection and as a 503 request (the error-budget alerts read
    ``tabserve_requests_total``), labelled ``unmatched`` as any request refused before routing."""

    def refused(seconds: float) -> None:
        metrics.rejected("overload")
        metrics.request("unmatched", "", 503, seconds)

    return refused


class ServiceApp:
    """The ASGI app that is served: the request envelope and the predict fast path in front of FastAPI.

    Outside FastAPI's own middleware on purpose: the envelope (request id, admission, metrics, access log)
    covers every route once, and the two predict routes skip the framework's layers entirely.
    """

    def __init__(self, api: FastAPI, handler: ASGIApp) -> None:
        self.api = api
        self.state = api.state
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handler(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    ctx: AppContext = app.state.ctx
    loop = asyncio.get_running_loop()
    if ctx.log is not None:
        await asyncio.to_thread(ctx.log.backend.migrate)
        ctx.log.start()
    if not ctx.registry.ready:  # `tabserve serve` with one worker loads before binding the port
        await asyncio.to_thread(ctx.registry.load_all)
    failures = ctx.registry.failures()
    if failures:
        detail = "; ".join(f"{name}: {error}" for name, error in failures.items())
        log_fields(ctx.logger, 50, f"cannot serve: {detail}", status="failed")
        await _close(ctx)
        raise TabserveError(f"cannot serve: {detail}")
    follower = None
    if ctx.reloads is not None:
        try:  # started after a reload: serve what it ordered
            await _apply_reload_orders(ctx, ctx.reloads, at_start=True)
        except ORDERS_UNREADABLE as exc:  # the configured versions serve; the follower tries again
            log_fields(ctx.logger, 40, f"reload orders not read: {exc}", status="failed")
        follower = asyncio.create_task(_follow_reload_orders(ctx, ctx.reloads))
    ctx.admission.install(loop)
    flusher = asyncio.create_task(_flush_access_log(ctx))
    with suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_all(ctx)))
    ctx.started = True
    # Everything allocated so far (models, sessions, the app) lives as long as the app: move it out of the
    # collector's generations, so a full collection under load scans only request garbage. Without this, gen-2
    # collections over the start-up heap were the admitted requests' p99 at 10x overload (46-60 ms vs 30-39 ms).
    gc.freeze()
    # What start-up freed (the models' conversion sessions) goes back to the system, and the library pages only
    # start-up ran leave the resident set (they come back from the page cache if touched): about 25 MB per worker.
    trimmed, dropped_kb = release_startup_memory(
        drop_file_pages=ctx.settings.release_startup_memory,
        mmap_threshold=ctx.settings.malloc_mmap_threshold_kb * 1024,
    )
    log_fields(
        ctx.logger,
        20,
        "ready",
        models={n: s.version for n, s in ctx.registry.states().items()},
        heap_trimmed=trimmed,
        file_pages_dropped_kb=dropped_kb,
    )
    try:
        yield
    finally:
        with suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)
        flusher.cancel()
        if follower is not None:
            follower.cancel()
        ctx.admission.uninstall()
        gc.unfreeze()
        await _close(ctx, close_store=await _settle_store_readers(ctx))


async def _settle_store_readers(ctx: AppContext) -> bool:
    """Wait (a bounded time) for background reads of the log; True when none is left running."""
    readers = set(ctx.store_readers)
    if readers:
        _, pending = await asyncio.wait(readers, timeout=max(1.0, ctx.settings.shutdown_grace_s * 0.25))
        for job in readers - pending:
            if not job.cancelled():
                job.exception()  # retrieved: a failed refresh at shutdown is not worth a warning
        if pending:
            log_fields(ctx.logger, 30, "a coverage read is still running at shutdown: the store is left open")
            return False
    return True


async def _apply_reload_orders(ctx: AppContext, reloads: WorkerReloads, *, at_start: bool = False) -> None:
    """The reloads another worker was asked for (``worker_reloads.py``), applied here and acknowledged."""
    orders = reloads.pending()
    if not orders:
        return
    errors: dict[str, str] = {}
    for order in orders:
        try:
            await asyncio.to_thread(ctx.registry.reload, order.model, order.wanted(at_start))
        except TabserveError as exc:  # the registry listener logs it; the old version keeps serving here
            errors[order.model] = exc.detail
    reloads.applied_up_to(orders[-1].seq, errors)


ORDERS_UNREADABLE = (OSError, ValueError, KeyError, TypeError)
"""What a damaged or half-readable ``reloads.json`` raises: logged, never fatal to a worker."""


async def _follow_reload_orders(ctx: AppContext, reloads: WorkerReloads) -> None:
    while True:
        await asyncio.sleep(POLL_S)
        try:
            await _apply_reload_orders(ctx, reloads)
        except ORDERS_UNREADABLE as exc:  # an unreadable orders file: said, and tried again
            log_fields(ctx.logger, 40, f"reload orders not read: {exc}", status="failed")


async def _reload_all(ctx: AppContext) -> None:
    for name in ctx.registry.names() + ctx.registry.new_on_disk():
        try:
            await asyncio.to_thread(ctx.registry.reload, name, ctx.settings.model_versions().get(name))
        except TabserveError:
            continue  # reported by the registry listener; the old version keeps serving


DRIFT_EXPORT_INTERVAL_S = 30.0
SHED_REPORT_INTERVAL_S = 10.0
COVERAGE_MIN_INTERVAL_S = 1.0


async def _flush_access_log(ctx: AppContext) -> None:
    """Buffered access-log lines reach stdout at most this late, even when traffic stops; every
    ``SHED_REPORT_INTERVAL_S`` one warning counts the requests refused at parse time (they have no access-log
    line); and every ``DRIFT_EXPORT_INTERVAL_S`` the drift of each model's window is computed (gauges)."""
    loop = asyncio.get_running_loop()
    next_drift = loop.time() + DRIFT_EXPORT_INTERVAL_S
    next_shed_report = loop.time() + SHED_REPORT_INTERVAL_S
    next_coverage = loop.time()
    while True:
        await asyncio.sleep(ctx.access_log.flush_interval_s)
        ctx.access_log.flush()
        if loop.time() >= next_shed_report:
            next_shed_report = loop.time() + SHED_REPORT_INTERVAL_S
            shed = ctx.admission.take_shed()
            if shed:  # refused at parse time: one line per interval instead of one per request
                log_fields(ctx.logger, 30, f"overloaded: refused {shed} requests with 503", shed=shed)
        if loop.time() >= next_drift:
            next_drift = loop.time() + DRIFT_EXPORT_INTERVAL_S
            for name in ctx.drift.models():
                try:
                    ctx.drift.report(name, detail=False)
                except Exception:  # never let monitoring stop the flusher
                    ctx.logger.exception("drift export failed for %s", name)
        if ctx.coverage is not None and loop.time() >= next_coverage:
            next_coverage = loop.time() + max(ctx.settings.coverage_refresh_s, COVERAGE_MIN_INTERVAL_S)
            await _refresh_coverage(ctx, ctx.coverage)


async def _refresh_coverage(ctx: AppContext, coverage: CoverageMonitor) -> None:
    """Every model's coverage report (gauges, adaptive levels) from the shared log, off the event loop."""
    for name, state in ctx.registry.states().items():
        if state.serving is None:
            continue
        job = asyncio.ensure_future(
            asyncio.to_thread(coverage.report, name, state.serving.manifest.conformal.pattern_names)
        )
        ctx.store_readers.add(job)
        job.add_done_callback(ctx.store_readers.discard)
        try:
            await asyncio.shield(job)  # cancelling the flusher must not orphan the read: shutdown awaits it
        except asyncio.CancelledError:
            raise
        except Exception:  # never let monitoring stop the flusher (a store outage is logged by the log writer)
            ctx.logger.warning("coverage refresh failed for %s", name, exc_info=True)


async def _close(ctx: AppContext, *, close_store: bool = True) -> None:
    ctx.access_log.flush()
    shed = ctx.admission.take_shed()
    if shed:
        log_fields(ctx.logger, 30, f"overloaded: refused {shed} requests with 503", shed=shed)
    if ctx.log is not None:
        clean = await asyncio.to_thread(ctx.log.close, max(1.0, ctx.settings.shutdown_grace_s * 0.5))
        level = 20 if clean else 40
        log_fields(ctx.logger, level, "prediction log flushed" if clean else "prediction log flush incomplete")
        if close_store:
            ctx.log.backend.close()
    ctx.metrics.close()  # buffered observations reach prometheus_client (multiprocess: the shared files)
    ctx.tracing.shutdown()
