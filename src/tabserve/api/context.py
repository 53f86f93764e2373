"""The per-app objects routes need, built by ``create_app`` and reached through a typed dependency."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from tabserve.api.auth import Authenticator
from tabserve.api.middleware import Admission
from tabserve.config import Settings
from tabserve.observability.coverage import CoverageMonitor
from tabserve.observability.drift import DriftMonitor
from tabserve.observability.logging import AccessLog
from tabserve.observability.metrics import ServiceMetrics
from tabserve.observability.tracing import Tracing
from tabserve.registry import ModelRegistry
from tabserve.service import PredictionService
from tabserve.store.log import PredictionLog
from tabserve.worker_reloads import WorkerReloads


@dataclass(slots=True)
class AppContext:
    settings: Settings
    registry: ModelRegistry
    service: PredictionService
    metrics: ServiceMetrics
    drift: DriftMonitor
    tracing: Tracing
    logger: logging.Logger
    admission: Admission
    access_log: AccessLog
    log: PredictionLog | None = None
    started: bool = False
    coverage: CoverageMonitor | None = None
    """Realised coverage from feedback (None when the prediction log is off)."""
    auth: Authenticator | None = None
    """The API keys and the credential each route needs (``api/auth.py``)."""
    reloads: WorkerReloads | None = None
    """Several workers: the reload orders they share (``worker_reloads.py``); None with one worker."""
    store_readers: set[asyncio.Future[Any]] = field(default_factory=set)
    """Background reads of the prediction log in worker threads (coverage refresh): awaited before the store
    closes at shutdown (a SQLite connection closed under a reading thread crashes the process)."""


async def _context(request: Request) -> AppContext:  # async: FastAPI would run a sync one in a thread
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(_context)]
