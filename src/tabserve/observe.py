"""After every prediction: per-row metrics, the prediction log record(s) and the drift window, in one place.

``PredictionObserver`` implements ``service.ServiceHooks``. It does only cheap, bounded work on the request
path: counters, a deque append, and a non-blocking hand-off to the prediction log's writer thread.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Protocol

from tabserve.observability.drift import DriftMonitor
from tabserve.observability.logging import set_model
from tabserve.observability.metrics import ServiceMetrics
from tabserve.service import Outcome
from tabserve.store.record import PredictionRecord


class RecordSink(Protocol):
    """The prediction log as the request path sees it: a non-blocking submit."""

    def submit(self, records: list[PredictionRecord]) -> None: ...


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
        metrics.rows(name, len(outcome.answers))
        answers = outcome.answers
        if model.confidence.task == "regression":
            metrics.regression_values(name, [a["prediction"] for a in answers])
        else:
            metrics.class_predictions(
                name,
                Counter(a["prediction"] for a in answers),
                [a["probabilities"][a["prediction"]] for a in answers],
            )
        warned = Counter((w["field"], w["code"]) for a in answers if a["warnings"] for w in a["warnings"])
        if warned:
            metrics.warnings(name, warned)
        if self.drift is not None:
            if outcome.batch is not None:
                self.drift.add_columns(name, outcome.batch.columns, outcome.batch.rows)
            elif outcome.instance is not None:
                self.drift.add(name, outcome.instance.values)
        if self.log is not None:
            self.log.submit(self._records(outcome))

    @staticmethod
    def _records(outcome: Outcome) -> list[PredictionRecord]:
        now = time.time()
        latency_ms = (time.perf_counter() - outcome.started) * 1000.0
        model = outcome.model
        records = []
        for index, (raw, values, answer) in enumerate(zip(outcome.raw, outcome.values(), outcome.answers, strict=True)):
            output: dict[str, Any]
            if "interval" in answer:
                output = {"interval": answer["interval"]}
            else:
                output = {"probabilities": answer["probabilities"], "prediction_set": answer["prediction_set"]}
            records.append(
                PredictionRecord(
                    request_id=outcome.request_id,
                    index=index,
                    time=now,
                    model=model.name,
                    model_version=model.version,
                    inputs_raw=raw,
                    inputs=values,
                    prediction=answer["prediction"],
                    output=output,
                    warnings=answer["warnings"],
                    out_of_distribution=answer["out_of_distribution"],
                    latency_ms=latency_ms,
                )
            )
        return records
