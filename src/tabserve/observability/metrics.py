"""Prometheus metrics of one service instance: ``ServiceMetrics`` owns its registry and every series.

Nothing here is global: ``create_app(settings)`` builds one ``ServiceMetrics`` and passes it down, so
tests never share counters. The hot-path methods look label children up in plain dicts (bound once per
label set, then reused) instead of calling ``.labels()`` per request, and record into an
``ObservationBuffer`` (``pending.py``): a list append or an integer add, applied to prometheus_client in bulk
before every scrape, at shutdown and at most a second later otherwise.

Multiprocess mode (several uvicorn workers): prometheus_client decides at *import time* whether values
live in per-process mmap files (``PROMETHEUS_MULTIPROC_DIR`` set) or in memory. So the parent process
(the CLI, before it spawns workers) calls ``prepare_multiprocess_dir(path)``, which empties the folder
and exports the variable; workers inherit it and import prometheus_client afterwards. A
``ServiceMetrics(multiprocess_dir=path)`` refuses to start if that did not happen. ``render()`` then
merges every worker's files with ``MultiProcessCollector``; gauges use ``livesum`` / ``livemax`` so
that series of dead workers drop out (``render()`` removes the live-gauge files of pids that no longer
exist). Counters and histograms of a dead worker are kept: their totals stay monotonic.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from tabserve.observability.pending import ObservationBuffer, PendingCounter, PendingHistogram
from tabserve.processes import pid_alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Request / stage latency buckets in seconds: 0.1 ms ... 10 s.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Predicted CO2 in g/km (light-duty vehicles: ~90 ... ~600).
REGRESSION_BUCKETS = (100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0, 500.0, 600.0, 800.0)
#: Top class probability of a classifier.
PROBABILITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
#: Rows per request.
ROWS_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000)

_DB_FILE = re.compile(r"^.+_(\d+)\.db$")


class PredictionLogMetrics(Protocol):
    """What the prediction-log store reports (see ``ServiceMetrics.store_metrics()``)."""

    def queue_depth(self, n: int) -> None: ...
    def written(self, n: int) -> None: ...
    def spilled(self, n: int) -> None: ...
    def replayed(self, n: int) -> None: ...
    def spill_failed(self, n: int) -> None: ...


def prepare_multiprocess_dir(path: Path) -> Path:
    """Parent process only, before spawning workers: empty ``path`` and export PROMETHEUS_MULTIPROC_DIR.

    Stale ``*.db`` files from a previous run would otherwise be merged into the new run's totals.
    """
    path = path.resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def _multiprocess_active() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def mark_dead_workers(path: Path) -> list[int]:
    """Remove the live-gauge files of worker pids that no longer exist; returns those pids."""
    dead: set[int] = set()
    for file in path.glob("gauge_live*_*.db"):
        match = _DB_FILE.match(file.name)
        if match and not pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in sorted(dead):
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    return sorted(dead)


class _StoreAdapter:
    """Adapts ``ServiceMetrics`` to the store's ``PredictionLogMetrics`` protocol."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def queue_depth(self, n: int) -> None:
        self._metrics.log_queue_depth(n)

    def written(self, n: int) -> None:
        self._metrics.log_written(n)

    def spilled(self, n: int) -> None:
        self._metrics.log_spilled(n)

    def replayed(self, n: int) -> None:
        self._metrics.log_replayed(n)

    def spill_failed(self, n: int) -> None:
        self._metrics.log_spill_failed(n)


class ServiceMetrics:
    """Every Prometheus series of the service, in an own ``CollectorRegistry``.

    Label values must come from bounded sets: route *templates* (``/models/{name}/predict``), loaded
    model names, manifest feature names, warning codes, class names. Never a raw path or user value.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir.resolve() if multiprocess_dir is not None else None
        if self.multiprocess_dir is not None:
            configured = os.environ.get(MULTIPROC_ENV)
            if not _multiprocess_active() or configured is None or Path(configured).resolve() != self.multiprocess_dir:
                raise RuntimeError(
                    f"multiprocess metrics need {MULTIPROC_ENV}={self.multiprocess_dir} in the environment before "
                    "prometheus_client is imported (call prepare_multiprocess_dir() in the parent before spawning "
                    "workers)"
                )
            if not self.multiprocess_dir.is_dir():
                raise RuntimeError(f"{MULTIPROC_ENV} {self.multiprocess_dir} is not a directory")
        self._multiprocess = self.multiprocess_dir is not None
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._requests = Counter(
            "tabserve_requests_total", "HTTP requests by route template, model and status.",
            ["route", "model", "status"], registry=reg,
        )  # fmt: skip
        self._latency = Histogram(
            "tabserve_request_duration_seconds", "Request latency (server side, whole request).",
            ["route", "model"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self._stage = Histogram(
            "tabserve_stage_duration_seconds", "Time per request stage: validate, preprocess, inference, serialise.",
            ["stage", "model"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self._rows = Counter("tabserve_predicted_rows_total", "Instances scored.", ["model"], registry=reg)
        self._batch_rows = Histogram(
            "tabserve_request_batch_rows", "Instances per prediction request.", ["model"],
            buckets=ROWS_BUCKETS, registry=reg,
        )  # fmt: skip
        self._in_flight = Gauge(
            "tabserve_in_flight_requests", "Requests being processed now.", registry=reg, multiprocess_mode="livesum"
        )
        self._warnings = Counter(
            "tabserve_input_warnings_total", "Input warnings by feature and code.",
            ["model", "feature", "code"], registry=reg,
        )  # fmt: skip
        self._ood = Counter(
            "tabserve_out_of_distribution_total", "Inputs outside the training range, by feature.",
            ["model", "feature"], registry=reg,
        )  # fmt: skip
        self._regression = Histogram(
            "tabserve_prediction_g_per_km", "Predicted value of regression models (CO2, g/km).", ["model"],
            buckets=REGRESSION_BUCKETS, registry=reg,
        )  # fmt: skip
        self._classes = Counter(
            "tabserve_class_predictions_total", "Predicted (top) class of classifiers.", ["model", "class"],
            registry=reg,
        )  # fmt: skip
        self._top_probability = Histogram(
            "tabserve_top_class_probability_ratio", "Probability of the predicted class.", ["model"],
            buckets=PROBABILITY_BUCKETS, registry=reg,
        )  # fmt: skip
        self._model_info = Gauge(
            "tabserve_model_info", "Loaded model versions (value 1; 0 in multiprocess mode once replaced).",
            ["model", "version", "sha256", "degraded"], registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        self._rejected = Counter(
            "tabserve_rejected_requests_total", "Requests refused by admission control (overload, rate_limit).",
            ["reason"], registry=reg,
        )  # fmt: skip
        self._log_queue = Gauge(
            "tabserve_prediction_log_queue_rows", "Prediction-log rows waiting to be written.", registry=reg,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self._log_written = Counter(
            "tabserve_prediction_log_written_rows_total", "Prediction-log rows written.", registry=reg
        )
        self._log_spilled = Counter(
            "tabserve_prediction_log_spilled_rows_total", "Rows spilled to local files (store down).", registry=reg
        )
        self._log_replayed = Counter(
            "tabserve_prediction_log_replayed_rows_total", "Spilled rows replayed into the store.", registry=reg
        )
        self._log_spill_failed = Counter(
            "tabserve_prediction_log_lost_rows_total", "Rows that could be neither written nor spilled.", registry=reg
        )
        self._drift = Gauge(
            "tabserve_drift_psi_score", "Population stability index of a feature over the drift window.",
            ["model", "feature"], registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        # Bound children: label tuple -> child. Filled on first use, reused afterwards.
        self._buffer = ObservationBuffer()
        # +1 / -1 per request, applied with the rest (the sum is exact at every scrape of this worker)
        self._in_flight_pending = self._buffer.counter(self._in_flight)
        self._request_children: dict[tuple[str, str, int], tuple[PendingCounter, PendingHistogram]] = {}
        self._stage_children: dict[tuple[str, str], PendingHistogram] = {}
        self._model_children: dict[
            str, tuple[PendingCounter, PendingHistogram, PendingHistogram, PendingHistogram]
        ] = {}
        self._class_children: dict[tuple[str, str], PendingCounter] = {}
        self._warning_children: dict[tuple[str, str, str], PendingCounter] = {}
        self._ood_children: dict[tuple[str, str], PendingCounter] = {}
        self._rejected_children: dict[str, PendingCounter] = {}
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._store = _StoreAdapter(self)

    # --- requests -------------------------------------------------------------------------------
    def request(self, route: str, model: str, status: int, seconds: float) -> None:
        """One finished request: counter by route/model/status, latency histogram by route/model."""
        key = (route, model, status)
        children = self._request_children.get(key)
        if children is None:
            buffer = self._buffer
            children = self._request_children[key] = (
                buffer.counter(self._requests.labels(route, model, str(status))),
                buffer.histogram(self._latency.labels(route, model)),
            )
        children[0].n += 1
        children[1].values.append(seconds)
        self._buffer.recorded()

    def stage(self, stage: str, model: str, seconds: float) -> None:
        """Duration of one stage (validate / preprocess / inference / serialise) of one request."""
        key = (stage, model)
        child = self._stage_children.get(key)
        if child is None:
            child = self._stage_children[key] = self._buffer.histogram(self._stage.labels(stage, model))
        child.values.append(seconds)

    def _model(self, model: str) -> tuple[PendingCounter, PendingHistogram, PendingHistogram, PendingHistogram]:
        buffer = self._buffer
        children = self._model_children[model] = (
            buffer.counter(self._rows.labels(model)),
            buffer.histogram(self._batch_rows.labels(model)),
            buffer.histogram(self._regression.labels(model)),
            buffer.histogram(self._top_probability.labels(model)),
        )
        return children

    def rows(self, model: str, n: int) -> None:
        """``n`` instances scored by one request."""
        children = self._model_children.get(model) or self._model(model)
        children[0].n += n
        children[1].values.append(n)

    def in_flight_inc(self) -> None:
        self._in_flight_pending.n += 1
        self._buffer.recorded()  # a worker busy with long requests still publishes within the flush interval

    def in_flight_dec(self) -> None:
        self._in_flight_pending.n -= 1

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Counts the enclosed block as an in-flight request."""
        self._in_flight.inc()
        try:
            yield
        finally:
            self._in_flight.dec()

    def rejected(self, reason: str) -> None:
        """Admission control refused a request: ``overload`` (503) or ``rate_limit`` (429)."""
        child = self._rejected_children.get(reason)
        if child is None:
            child = self._rejected_children[reason] = self._buffer.counter(self._rejected.labels(reason))
        child.n += 1

    # --- inputs and outputs ---------------------------------------------------------------------
    def regression_values(self, model: str, values: Sequence[float]) -> None:
        """A request's predictions of a regression model."""
        children = self._model_children.get(model) or self._model(model)
        children[2].values += values

    def warnings(self, model: str, counts: Mapping[tuple[str, str], int]) -> None:
        """``counts[(feature, code)]`` warnings of one request; out_of_distribution ones counted there too."""
        buffer = self._buffer
        for (feature, code), n in counts.items():
            key = (model, feature, code)
            child = self._warning_children.get(key)
            if child is None:
                child = self._warning_children[key] = buffer.counter(self._warnings.labels(model, feature, code))
            child.n += n
            if code == "out_of_distribution":
                ood_key = (model, feature)
                ood = self._ood_children.get(ood_key)
                if ood is None:
                    ood = self._ood_children[ood_key] = buffer.counter(self._ood.labels(model, feature))
                ood.n += n

    def class_predictions(self, model: str, counts: Mapping[str, int], top_probabilities: Sequence[float]) -> None:
        """A request's predicted classes (counted per class) and top-class probabilities."""
        for cls, n in counts.items():
            key = (model, cls)
            child = self._class_children.get(key)
            if child is None:
                child = self._class_children[key] = self._buffer.counter(self._classes.labels(model, cls))
            child.n += n
        children = self._model_children.get(model) or self._model(model)
        children[3].values += top_probabilities

    # --- models, drift --------------------------------------------------------------------------
    def model_info(self, name: str, version: str, sha256: str, degraded: bool) -> None:
        """Info-style series (value 1) for the version of ``name`` now served; replaces the previous one."""
        labels = (name, version, sha256, "true" if degraded else "false")
        old = self._info_labels.get(name)
        if old is not None and old != labels:
            if self._multiprocess:
                # prometheus_client cannot remove series in multiprocess mode: the old one reads 0.
                self._model_info.labels(*old).set(0)
            else:
                self._model_info.remove(*old)
        self._model_info.labels(*labels).set(1)
        self._info_labels[name] = labels

    def model_removed(self, name: str) -> None:
        """``name`` is no longer served (unloaded on reload)."""
        old = self._info_labels.pop(name, None)
        if old is None:
            return
        if self._multiprocess:
            self._model_info.labels(*old).set(0)
        else:
            self._model_info.remove(*old)

    def drift(self, model: str, feature: str, psi: float) -> None:
        self._drift.labels(model, feature).set(psi)

    # --- prediction log -------------------------------------------------------------------------
    def log_queue_depth(self, n: int) -> None:
        self._log_queue.set(n)

    def log_written(self, n: int) -> None:
        self._log_written.inc(n)

    def log_spilled(self, n: int) -> None:
        self._log_spilled.inc(n)

    def log_replayed(self, n: int) -> None:
        self._log_replayed.inc(n)

    def log_spill_failed(self, n: int) -> None:
        self._log_spill_failed.inc(n)

    def store_metrics(self) -> PredictionLogMetrics:
        """The object to hand to the prediction-log store."""
        return self._store

    # --- exposition -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Apply the buffered hot-path observations now (``render`` does; so does shutdown)."""
        self._buffer.flush()

    def close(self) -> None:
        """Shutdown: apply what is buffered and stop the flush timer."""
        self._buffer.close()

    def render(self) -> tuple[bytes, str]:
        """The text exposition (body, content type); merges all workers in multiprocess mode."""
        self._buffer.flush()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        mark_dead_workers(self.multiprocess_dir)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST
