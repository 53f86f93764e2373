"""The one prediction path every route shares: validate → encode → run → explain confidence → observe.

``/predict``, ``/models/{name}/predict`` and the Open Inference Protocol's ``infer`` all end up in
``PredictionService.predict``; routes only translate HTTP. Observability (metrics, prediction log, drift,
tracing) is injected through ``ServiceHooks``: nothing here is global.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from tabserve.adaptive import AdaptiveLevels
from tabserve.confidence import BatchAnswers, Confidence
from tabserve.errors import FieldError, PayloadTooLargeError, RequestValidationError
from tabserve.features.fields import InputWarning
from tabserve.features.validation import Batch, Instance
from tabserve.registry import ModelRegistry, ServingModel


@dataclass(slots=True)
class Timings:
    """Seconds spent per stage of one request (reported in logs, metrics and traces)."""

    validate: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    serialise: float = 0.0
    """Building the answer (confidence, warnings) and, added by the route, encoding the JSON response."""
    started_ns: int = 0
    """Wall-clock start of the validate stage (for trace spans)."""

    def stages(self) -> list[tuple[str, float]]:
        return [
            ("validate", self.validate),
            ("preprocess", self.preprocess),
            ("inference", self.inference),
            ("serialise", self.serialise),
        ]


class Outcome:
    """What one predict call produced, for the hooks (log, metrics, drift).

    Normalised inputs are kept as the validator produced them (one ``instance``, or a ``batch``'s columns), and
    a batch's answers as columns (``result``). Per-row objects are built only for a hook that reads them:
    ``answers`` (one dict per row, as ``/predict`` documents them) and ``values()`` on first use, ``raw`` as
    the rows arrived (for a batch sent as columns, a view that builds each row when read). ``rows``,
    ``predictions()`` and ``warning_counts()`` answer from the columns.
    """

    __slots__ = ("_answers", "batch", "instance", "model", "raw", "request_id", "result", "started", "timings")

    def __init__(
        self,
        model: ServingModel,
        request_id: str,
        raw: Sequence[Any],
        answers: list[dict[str, Any]] | None,
        timings: Timings,
        started: float,
        instance: Instance | None = None,
        batch: Batch | None = None,
        result: BatchAnswers | None = None,
    ) -> None:
        self.model = model
        self.request_id = request_id
        self.raw = raw
        self.timings = timings
        self.started = started
        self.instance = instance
        self.batch = batch
        self.result = result
        self._answers = answers

    @property
    def answers(self) -> list[dict[str, Any]]:
        """One answer dict per row (a batch's are built on first use; treat them as read-only)."""
        if self._answers is None:
            self._answers = self.result.dicts() if self.result is not None else []
        return self._answers

    @property
    def rows(self) -> int:
        return self.result.rows if self.result is not None else len(self.answers)

    def predictions(self) -> list[Any]:
        """Every row's prediction: a float (regression) or a class name."""
        if self.result is not None:
            return self.result.predictions()
        return [answer["prediction"] for answer in self.answers]

    def warning_counts(self) -> Mapping[tuple[str, str], int]:
        """(field, code) -> how many rows have that warning (empty, and cheap, when none has any)."""
        if self.result is not None:
            return self.result.warning_counts()
        counts: dict[tuple[str, str], int] = {}  # a plain dict: a Counter costs more than the few warnings here
        for answer in self.answers:
            for warning in answer["warnings"]:
                key = (warning["field"], warning["code"])
                counts[key] = counts.get(key, 0) + 1
        return counts

    def values(self) -> list[dict[str, Any]]:
        if self.instance is not None:
            return [self.instance.values]
        if self.batch is None:
            return []
        columns = self.batch.columns
        names = list(columns)
        return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


@dataclass(slots=True)
class BatchResult:
    """A batch's answer before it is written out: the route renders ``answers`` from its columns."""

    model: ServingModel
    answers: BatchAnswers
    request_id: str

    def model_ref(self) -> dict[str, str]:
        return {"name": self.model.name, "version": self.model.version}

    def document(self) -> dict[str, Any]:
        """The response document ``/predict`` answers a batch with (one dict per row)."""
        return {"predictions": self.answers.dicts(), "model": self.model_ref(), "request_id": self.request_id}


class ServiceHooks(Protocol):
    """Observability injected by ``create_app``: called after every successful prediction."""

    def predicted(self, outcome: Outcome) -> None: ...


class _NoHooks:
    def predicted(self, outcome: Outcome) -> None:  # noqa: ARG002 - the protocol's signature
        return None


def _mark_effective(
    answers: list[dict[str, Any]], patterns: list[str], level: float, effective: Mapping[tuple[float, str], float]
) -> None:
    """Add ``effective_level`` (rounded to 6 places) beside each answer's ``level``: the interval's, or the
    prediction set's."""
    for answer, pattern in zip(answers, patterns, strict=True):
        target = answer.get("interval", answer)
        target["effective_level"] = round(effective.get((level, pattern), level), 6)


def _warning_dicts(warnings: list[InputWarning]) -> list[dict[str, str]]:
    return [w.as_dict() for w in warnings]


class PredictionService:
    def __init__(self, registry: ModelRegistry, *, max_batch: int, hooks: ServiceHooks | None = None) -> None:
        self.registry = registry
        self.max_batch = max_batch
        self.hooks: ServiceHooks = hooks or _NoHooks()
        self.adaptive: AdaptiveLevels | None = None
        """Adaptive conformal levels (``TABSERVE_COVERAGE_ADAPTIVE``); None: the manifest's tables as they are."""

    def predict(
        self,
        name: str,
        body: Any,
        *,
        request_id: str,
        level: str | float | None = None,
        version: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One instance (a JSON object) or ``{"instances": [...]}``; returns the response document.

        ``info`` (optional) receives ``model``, ``rows`` and ``timings`` for the access log."""
        result = self.answer(name, body, request_id=request_id, level=level, version=version, info=info)
        return result.document() if isinstance(result, BatchResult) else result

    def answer(
        self,
        name: str,
        body: Any,
        *,
        request_id: str,
        level: str | float | None = None,
        version: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> dict[str, Any] | BatchResult:
        """``predict``, with a batch's answers left as columns (``BatchResult``) for the route to write out."""
        started = time.perf_counter()
        model, chosen = self._model(name, version, level, info)
        if type(body) is dict and "instances" in body:
            return self._predict_many(model, self._batch_items(body), chosen, request_id, started, info)
        instance, matrix, timings, encoded = self._encode_one(model, body)
        raw = model.runtime.run(matrix)
        timings.inference = time.perf_counter() - encoded
        return self._finish_one(model, body, instance, raw[0], chosen, request_id, started, timings, info)

    async def answer_async(
        self,
        name: str,
        body: Any,
        *,
        request_id: str,
        level: str | float | None = None,
        version: str | None = None,
        info: dict[str, Any] | None = None,
        share: bool = True,
    ) -> dict[str, Any] | BatchResult:
        """``answer`` for the event loop. With ``share`` (other requests are waiting), a single instance's ONNX
        call is shared with the other single instances ready in the same loop turn (``OnnxModel.run_row``,
        one loop turn later); alone, it runs at once. The answer is the same either way."""
        if not share:
            return self.answer(name, body, request_id=request_id, level=level, version=version, info=info)
        started = time.perf_counter()
        model, chosen = self._model(name, version, level, info)
        if type(body) is dict and "instances" in body:
            return self._predict_many(model, self._batch_items(body), chosen, request_id, started, info)
        instance, matrix, timings, _ = self._encode_one(model, body)
        raw, timings.inference = await model.runtime.run_row(matrix)
        return self._finish_one(model, body, instance, raw[0], chosen, request_id, started, timings, info)

    @staticmethod
    def _encode_one(model: ServingModel, body: Any) -> tuple[Instance, npt.NDArray[np.float32], Timings, float]:
        """Validate and encode one instance: the instance, its matrix row, the timings so far (validate,
        preprocess) and when encoding finished (``time.perf_counter``)."""
        wall = time.time_ns()
        t0 = time.perf_counter()
        instance = model.validator.one(body)
        t1 = time.perf_counter()
        matrix = model.runtime.encoder.encode_row(instance.values)
        t2 = time.perf_counter()
        return instance, matrix, Timings(t1 - t0, t2 - t1, 0.0, 0.0, wall), t2

    def _model(
        self, name: str, version: str | None, level: str | float | None, info: dict[str, Any] | None
    ) -> tuple[ServingModel, float]:
        model = self.registry.get(name, version)
        if info is not None:
            info["model"] = model.name  # only a loaded model's name becomes a metric label
        return model, model.confidence.resolve_level(level)

    def _predict_many(
        self,
        model: ServingModel,
        objs: Sequence[Any],
        level: float,
        request_id: str,
        started: float,
        info: dict[str, Any] | None,
    ) -> BatchResult:
        answers, batch, timings = self._run_many(model, objs, level)
        if self.adaptive is not None:
            effective = self.adaptive.confidence(model)[1]
            answers.effective = {p: round(effective.get((level, p), level), 6) for p in set(batch.patterns)}
            _mark_effective(answers.dicts(), batch.patterns, level, effective)
        self.hooks.predicted(Outcome(model, request_id, objs, None, timings, started, batch=batch, result=answers))
        if info is not None:
            info.update(model=model.name, rows=answers.rows, timings=timings)
        return BatchResult(model, answers, request_id)

    def _finish_one(
        self,
        model: ServingModel,
        body: Any,
        instance: Instance,
        output: npt.NDArray[np.float32] | np.float32,
        level: float,
        request_id: str,
        started: float,
        timings: Timings,
        info: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The answer of a single instance, its hooks and access-log info."""
        t3 = time.perf_counter()
        if self.adaptive is None:
            ood = instance.out_of_distribution
            answer = self._answer(model, output, instance.pattern, level, instance.warnings, ood)
        else:
            answer = self._adaptive_answer(self.adaptive, model, output, instance, level)
        timings.serialise = time.perf_counter() - t3
        if info is not None:
            info.update(model=model.name, rows=1, timings=timings)
        self.hooks.predicted(Outcome(model, request_id, (body,), [answer], timings, started, instance=instance))
        answer["model"] = {"name": model.name, "version": model.version}
        answer["request_id"] = request_id
        return answer

    def predict_instances(
        self,
        name: str,
        objs: Sequence[Any],
        *,
        request_id: str,
        level: str | float | None = None,
        version: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> BatchResult:
        """Batch entry for protocol adapters (Open Inference Protocol): instances in (any sequence of rows, e.g.
        ``features.batch.ColumnRows`` for columns), the answers as columns out."""
        started = time.perf_counter()
        model, chosen = self._model(name, version, level, info)
        self._check_size(objs)
        return self._predict_many(model, objs, chosen, request_id, started, info)

    def _batch_items(self, body: dict[str, Any]) -> list[Any]:
        extra = sorted(k for k in body if k != "instances")
        if extra:
            raise RequestValidationError(
                [FieldError(("body", k), f"unknown field {k!r} beside 'instances'", "unknown_field") for k in extra]
            )
        objs = body["instances"]
        if type(objs) is not list:
            raise RequestValidationError(
                [FieldError(("body", "instances"), "instances must be an array of objects", "wrong_type")]
            )
        self._check_size(objs)
        return objs

    def _check_size(self, objs: Sequence[Any]) -> None:
        if not objs:
            raise RequestValidationError(
                [FieldError(("body", "instances"), "instances must not be empty", "empty_batch")]
            )
        if len(objs) > self.max_batch:
            raise PayloadTooLargeError(f"batch of {len(objs)} instances is over the maximum of {self.max_batch}")

    def _run_many(self, model: ServingModel, objs: Sequence[Any], level: float) -> tuple[BatchAnswers, Batch, Timings]:
        wall = time.time_ns()
        t0 = time.perf_counter()
        batch: Batch = model.validator.many(objs)
        t1 = time.perf_counter()
        matrix = model.runtime.encoder.encode_columns(batch.columns, batch.rows, batch.arrays, batch.complete)
        t2 = time.perf_counter()
        raw = model.runtime.run(matrix)
        t3 = time.perf_counter()
        confidence = model.confidence if self.adaptive is None else self.adaptive.confidence(model)[0]
        answers = confidence.batch(raw, batch.patterns, level, batch.out_of_distribution, batch.runs)
        t4 = time.perf_counter()
        return answers, batch, Timings(t1 - t0, t2 - t1, t3 - t2, t4 - t3, wall)

    def _adaptive_answer(
        self,
        adaptive: AdaptiveLevels,
        model: ServingModel,
        output: npt.NDArray[np.float32] | np.float32,
        instance: Instance,
        level: float,
    ) -> dict[str, Any]:
        """``_answer`` with the adaptive tables, marked with the effective level it used."""
        confidence, effective = adaptive.confidence(model)
        answer = self._answer(
            model, output, instance.pattern, level, instance.warnings, instance.out_of_distribution, confidence
        )
        _mark_effective([answer], [instance.pattern], level, effective)
        return answer

    @staticmethod
    def _answer(
        model: ServingModel,
        output: npt.NDArray[np.float32] | np.float32,
        pattern: str,
        level: float,
        warnings: list[InputWarning],
        ood: bool,
        confidence: Confidence | None = None,
    ) -> dict[str, Any]:
        confidence = model.confidence if confidence is None else confidence
        if confidence.task == "regression":
            prediction = confidence.point(float(output))
            return {
                "prediction": prediction,
                "unit": confidence.unit,
                "interval": confidence.regression(prediction, pattern, level),
                "warnings": _warning_dicts(warnings) if warnings else [],
                "out_of_distribution": ood,
            }
        answer = confidence.classification(np.asarray(output), pattern, level)
        answer["warnings"] = _warning_dicts(warnings) if warnings else []
        answer["out_of_distribution"] = ood
        return answer
