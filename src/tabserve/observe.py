"""After every prediction: per-row metrics, the prediction log record(s) and the drift window, in one place.

``PredictionObserver`` implements ``service.ServiceHooks``. It does only cheap, bounded work on the request
path: counters, a deque append, and a non-blocking hand-off of the prediction log's rows (encoded once,
here) to its writer thread. A batch is handed over as one columnar record (``store.columnar.LogBatch``): its
columns are encoded once each, not once per row.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from itertools import compress
from typing import Any, Protocol

import orjson

from tabserve.confidence import BatchAnswers, row_warning_dicts
from tabserve.features.batch import listed
from tabserve.observability.drift import DriftMonitor
from tabserve.observability.logging import set_model
from tabserve.observability.metrics import ServiceMetrics
from tabserve.service import Outcome
from tabserve.store.columnar import LogBatch
from tabserve.store.record import EMPTY_LIST_JSON, LogRow, dumps_json_careful


class RecordSink(Protocol):
    """The prediction log as the request path sees it: a non-blocking hand-over of encoded rows."""

    def submit_rows(self, rows: list[LogRow]) -> None: ...
    def submit_row(self, row: LogRow) -> None: ...
    def submit_batch(self, batch: LogBatch) -> None: ...


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
            elif outcome.batch is not None and outcome.result is not None:
                self.log.submit_batch(log_batch(outcome))
            else:
                self.log.submit_rows(log_rows(outcome))


def log_batch(outcome: Outcome) -> LogBatch:
    """A batch's one columnar log record (``store.columnar``), its JSON columns encoded here, once per column.

    The same content as ``log_rows`` (a test expands one and compares it with the other), at a fraction of the
    cost: no JSON object per row, one queue entry, one statement for the writer.
    """
    now = time.time()
    latency_ms = (time.perf_counter() - outcome.started) * 1000.0
    try:
        return _batch(outcome, now, latency_ms, orjson.dumps)
    except orjson.JSONEncodeError:  # a value plain JSON refuses (non-string key, huge integer): the careful way
        return _batch(outcome, now, latency_ms, _dumps_careful)


def _batch(outcome: Outcome, now: float, latency_ms: float, dumps: Callable[[Any], bytes]) -> LogBatch:
    batch, result, model = outcome.batch, outcome.result, outcome.model
    if batch is None or result is None:
        raise ValueError("a batch outcome carries its validated batch and its answers")
    raw = batch.raw if batch.raw is not None else list(outcome.raw)
    inputs = {name: column if type(column) is list else listed(column) for name, column in batch.columns.items()}
    return LogBatch(
        outcome.request_id, now, model.name, model.version, result.rows,
        dumps(raw).decode(), dumps(inputs).decode(), dumps(_answers_document(result, batch.patterns)).decode(),
        latency_ms,
    )  # fmt: skip


def _answers_document(result: BatchAnswers, patterns: list[str]) -> dict[str, Any]:
    """A batch's answers as ``store.columnar`` records them (columns; warnings and flags sparse)."""
    document: dict[str, Any]
    if result.interval is not None:
        prediction, lower, upper = result.interval
        document = {
            "task": "regression",
            "prediction": prediction.tolist(),
            "lower": lower.tolist(),
            "upper": upper.tolist(),
            "level": result.level,
        }
    else:
        classified = result.classified or []
        effective = result.effective
        document = {
            "task": "classification",
            "prediction": [answer["prediction"] for answer in classified],
            "output": [
                _served_set(answer, pattern, None if effective is None else effective.get(pattern))
                for answer, pattern in zip(classified, patterns, strict=True)
            ],
        }
    first = patterns[0] if patterns else ""
    document["pattern"] = first if patterns.count(first) == len(patterns) else patterns
    if result.effective is not None:
        document["effective"] = result.effective
    document["warnings"] = [[i, w] for i, w in sorted(row_warning_dicts(result.runs).items())]
    document["ood"] = list(compress(range(result.rows), result.out_of_distribution))
    return document


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


def _served_set(answer: dict[str, Any], pattern: str, effective: float | None = None) -> dict[str, Any]:
    """A classification row's logged output: what the coverage monitor judges feedback against."""
    served = {
        "probabilities": answer["probabilities"],
        "prediction_set": answer["prediction_set"],
        "level": answer["level"],
        "pattern": pattern,
    }
    if effective is None:
        effective = answer.get("effective_level")
    if effective is not None:
        served["effective_level"] = effective
    return served


def _dumps_careful(value: Any) -> bytes:
    return dumps_json_careful(value).encode()
