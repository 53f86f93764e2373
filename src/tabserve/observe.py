"""After every prediction: per-row metrics, the prediction log record(s) and the drift window, in one place.

``PredictionObserver`` implements ``service.ServiceHooks``. It does only cheap, bounded work on the request
path: counters, a deque append, and a non-blocking hand-off of the prediction log's rows (encoded once,
here) to its writer thread.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from tabserve.observability.drift import DriftMonitor
from tabserve.observability.logging import set_model
from tabserve.observability.metrics import ServiceMetrics
from tabserve.service import Outcome
from tabserve.store.record import EMPTY_LIST_JSON, LogRow, dumps_json_careful


class RecordSink(Protocol):
    """The prediction log as the request path sees it: a non-blocking hand-over of encoded rows."""

    def submit_rows(self, rows: list[LogRow]) -> None: ...
    def submit_row(self, row: LogRow) -> None: ...


class PredictionObserver:
    def __init__(self, metrics: ServiceMetrics, drift: DriftMonitor | None, log: RecordSink | None) -> None:
        self.metrics = metrics
        self.drift = drift
        self.log = log

    def predicted(self, outcome: Outcome) -> None:
        model = outcome.model
        name = model.name
        set_model(name, model.version)
        metrics = self.metrics
        metrics.rows(name, outcome.rows)
        if model.confidence.task == "regression":
            metrics.regression_values(name, outcome.predictions())  # a batch's from its columns: no answer dicts
        else:
            answers = outcome.answers
            metrics.class_predictions(
                name,
                Counter(a["prediction"] for a in answers),
                [a["probabilities"][a["prediction"]] for a in answers],
            )
        warned = outcome.warning_counts()
        if warned:
            metrics.warnings(name, warned)
        if self.drift is not None:
            if outcome.batch is not None:
                self.drift.add_columns(name, outcome.batch.columns, outcome.batch.rows)
            elif outcome.instance is not None:
                self.drift.add(name, outcome.instance.values)
        if self.log is not None:
            if outcome.instance is not None:
                self.log.submit_row(log_row(outcome))
            else:
                self.log.submit_rows(log_rows(outcome))


def log_rows(outcome: Outcome) -> list[LogRow]:
    """The prediction log's rows for one predict call, JSON columns encoded here, once.

    Encoding on the request path keeps the queue compact (one tuple of strings per row, no reference to the
    request's objects, which the route still completes after the hooks run) and is cheapest here, while the
    request's objects are still in the CPU's caches: the writer thread encoding them later cost twice as much.
    The writer has nothing to do under the GIL but bind. Plain ``orjson.dumps`` first; only if it refuses a
    value (a non-string key, an integer beyond 64 bits, a Decimal) is the request encoded again the careful way.
    """
    instance = outcome.instance
    if instance is not None and len(outcome.answers) == 1:
        return [log_row(outcome)]
    now = time.time()
    latency_ms = (time.perf_counter() - outcome.started) * 1000.0
    inputs = outcome.values() or [{}] * outcome.rows
    try:
        return _rows(outcome, inputs, now, latency_ms, orjson.dumps)  # no options: the fastest call
    except orjson.JSONEncodeError:  # a value plain JSON refuses (non-string key, huge integer): the careful way
        return _rows(outcome, inputs, now, latency_ms, _dumps_careful)


def log_row(outcome: Outcome) -> LogRow:
    """The only row of a single-instance predict call (``log_rows`` without its list and per-row loop)."""
    now = time.time()
    latency_ms = (time.perf_counter() - outcome.started) * 1000.0
    values = outcome.instance.values if outcome.instance is not None else {}
    try:
        return _one(outcome, values, now, latency_ms, orjson.dumps)
    except orjson.JSONEncodeError:  # a value plain JSON refuses (non-string key, huge integer): the careful way
        return _one(outcome, values, now, latency_ms, _dumps_careful)


def _rows(
    outcome: Outcome, inputs: list[dict[str, Any]], now: float, latency_ms: float, dumps: Callable[[Any], bytes]
) -> list[LogRow]:
    model = outcome.model
    request_id, name, version = outcome.request_id, model.name, model.version
    regression = model.confidence.task == "regression"
    rows: list[LogRow] = []
    append = rows.append
    patterns = outcome.batch.patterns if outcome.batch is not None else [""] * len(outcome.answers)
    for index, (raw, values, answer, pattern) in enumerate(
        zip(outcome.raw, inputs, outcome.answers, patterns, strict=True)
    ):
        prediction = answer["prediction"]
        if regression:  # the same text as dumps({"interval": ..., "pattern": ...}) without building the dict
            output = '{"interval":' + dumps(answer["interval"]).decode() + ',"pattern":"' + pattern + '"}'
        else:
            output = dumps(_served_set(answer, pattern)).decode()
        warnings = answer["warnings"]
        label = type(prediction) is str
        append((
            request_id, index, now, name, version, dumps(raw).decode(), dumps(values).decode(),
            None if label else float(prediction), prediction if label else None,
            output, dumps(warnings).decode() if warnings else EMPTY_LIST_JSON,
            1 if answer["out_of_distribution"] else 0, latency_ms,
        ))  # fmt: skip
    return rows


def _one(
    outcome: Outcome, values: dict[str, Any], now: float, latency_ms: float, dumps: Callable[[Any], bytes]
) -> LogRow:
    """``_rows`` of a single instance (most requests), without its per-row loop: the same row."""
    model = outcome.model
    answer = outcome.answers[0]
    prediction = answer["prediction"]
    pattern = outcome.instance.pattern if outcome.instance is not None else ""
    if model.confidence.task == "regression":  # the pattern is a 0/1 string: nothing to escape
        output = '{"interval":' + dumps(answer["interval"]).decode() + ',"pattern":"' + pattern + '"}'
    else:
        output = dumps(_served_set(answer, pattern)).decode()
    warnings = answer["warnings"]
    label = type(prediction) is str
    return (
        outcome.request_id, 0, now, model.name, model.version, dumps(outcome.raw[0]).decode(), dumps(values).decode(),
        None if label else float(prediction), prediction if label else None,
        output, dumps(warnings).decode() if warnings else EMPTY_LIST_JSON,
        1 if answer["out_of_distribution"] else 0, latency_ms,
    )  # fmt: skip


def _served_set(answer: dict[str, Any], pattern: str) -> dict[str, Any]:
    """A classification row's logged output: what the coverage monitor judges feedback against."""
    served = {
        "probabilities": answer["probabilities"],
        "prediction_set": answer["prediction_set"],
        "level": answer["level"],
        "pattern": pattern,
    }
    effective = answer.get("effective_level")
    if effective is not None:
        served["effective_level"] = effective
    return served


def _dumps_careful(value: Any) -> bytes:
    return dumps_json_careful(value).encode()
