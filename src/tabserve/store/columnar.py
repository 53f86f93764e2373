"""``LogBatch``: a batch request's rows logged as one columnar record, still addressed row by row.

A ``{"instances": [...]}`` request (or an Open Inference Protocol batch) is one entry in the log's queue, one row
of the ``prediction_batches`` table and one spill line, instead of one ``LogRow`` per row: its JSON columns are
encoded once per batch, column by column, and the writer binds one statement for the whole request. Every row
keeps its identity ``(request_id, index)``: export, feedback, drift, coverage and retention expand a batch into
exactly the row dicts a ``LogRow`` of that row gives (``expand``; a test keeps them equal).

The three JSON columns:

- ``inputs_raw``: the rows as received. ``{"name": [value per row], ...}`` when every row had the same fields
  (in the first row's order), else the list of rows itself.
- ``inputs``: the normalised inputs, ``{"name": [value per row], ...}`` (``null`` where absent).
- ``answers``: ``{"task": "regression", "prediction": [...], "lower": [...], "upper": [...], "level": L,
  "pattern": P or [P per row], "effective": {P: level} (adaptive levels only), "warnings": [[row, [...]], ...],
  "ood": [rows flagged]}``; a classification batch has ``"prediction": [label per row]`` and ``"output": [the
  served set per row]`` instead of the interval columns. Warnings and flags are sparse: most rows have none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tabserve.errors import StoreError
from tabserve.store.record import EMPTY_LIST_JSON, LogRow, PredictionRecord, dumps_json, loads_json, record_row

BATCH_COLUMNS = "request_id, time, model, model_version, rows, inputs_raw, inputs, answers, latency_ms"


@dataclass(frozen=True, slots=True)
class LogBatch:
    """One batch request's log record: the ``prediction_batches`` row, JSON columns already encoded."""

    request_id: str
    time: float
    model: str
    model_version: str
    rows: int
    inputs_raw: str
    inputs: str
    answers: str
    latency_ms: float

    def params(self) -> tuple[str, float, str, str, int, str, str, str, float]:
        """The values in ``BATCH_COLUMNS`` order."""
        return (
            self.request_id, self.time, self.model, self.model_version, self.rows,
            self.inputs_raw, self.inputs, self.answers, self.latency_ms,
        )  # fmt: skip


LogEntry = LogRow | LogBatch
"""What the log queues, writes and spills: one row, or one batch of rows."""


def entry_rows(entry: LogEntry) -> int:
    return entry.rows if type(entry) is LogBatch else 1


def entry_request_id(entry: LogEntry) -> str:
    return entry.request_id if type(entry) is LogBatch else entry[0]  # type: ignore[index]


def count_rows(entries: Sequence[LogEntry]) -> int:
    return sum(entry.rows if type(entry) is LogBatch else 1 for entry in entries)


_BATCH_LINE = (
    '{"batch":{"request_id":%s,"time":%s,"model":%s,"model_version":%s,"rows":%d,"inputs_raw":%s,"inputs":%s,'
    '"answers":%s,"latency_ms":%s}}\n'
)


def batch_line(batch: LogBatch) -> bytes:
    """The spill line of a batch (with its newline), assembled from its encoded JSON columns."""
    return (
        _BATCH_LINE
        % (
            dumps_json(batch.request_id), dumps_json(batch.time), dumps_json(batch.model),
            dumps_json(batch.model_version), batch.rows, batch.inputs_raw, batch.inputs, batch.answers,
            dumps_json(batch.latency_ms),
        )
    ).encode()  # fmt: skip


def entry_from_json(data: Mapping[str, Any]) -> LogEntry:
    """A spill line's entry: a batch (``{"batch": {...}}``) or a row (``PredictionRecord.as_dict()``)."""
    if not isinstance(data, Mapping):
        raise StoreError("not a prediction record: a spill line must be a JSON object")
    batch = data.get("batch")
    if batch is None:
        return record_row(PredictionRecord.from_dict(data))
    try:
        return LogBatch(
            request_id=str(batch["request_id"]),
            time=float(batch["time"]),
            model=str(batch["model"]),
            model_version=str(batch["model_version"]),
            rows=int(batch["rows"]),
            inputs_raw=dumps_json(batch["inputs_raw"]),
            inputs=dumps_json(batch["inputs"]),
            answers=dumps_json(batch["answers"]),
            latency_ms=float(batch["latency_ms"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"not a logged batch: {exc}") from exc


def _decoded(value: Any) -> Any:
    return loads_json(value) if isinstance(value, str | bytes) else value


class BatchAnswersView:
    """A logged batch's ``answers`` decoded, read row by row (feedback, coverage, export)."""

    __slots__ = ("_effective", "_flagged", "_patterns", "_warnings", "data")

    def __init__(self, answers: Any) -> None:
        data = _decoded(answers)
        if not isinstance(data, dict):
            raise StoreError("a logged batch's answers are not a JSON object")
        self.data: dict[str, Any] = data
        self._warnings: dict[int, list[Any]] = {int(row): list(w) for row, w in data.get("warnings", ())}
        self._flagged = frozenset(int(i) for i in data.get("ood", ()))
        pattern = data.get("pattern", "")
        self._patterns: str | list[str] = pattern if isinstance(pattern, str) else [str(p) for p in pattern]
        self._effective: dict[str, float] | None = data.get("effective")

    def pattern(self, i: int) -> str:
        return self._patterns if isinstance(self._patterns, str) else self._patterns[i]

    def prediction(self, i: int) -> float | str:
        value = self.data["prediction"][i]
        return value if isinstance(value, str) else float(value)

    def output(self, i: int) -> dict[str, Any]:
        """The row's ``output`` column as a ``LogRow`` of that row holds it (what coverage judges)."""
        data = self.data
        if data.get("task") == "classification":
            served: dict[str, Any] = data["output"][i]
            return served
        interval: dict[str, Any] = {"level": data["level"], "lower": data["lower"][i], "upper": data["upper"][i]}
        pattern = self.pattern(i)
        if self._effective is not None and pattern in self._effective:
            interval["effective_level"] = self._effective[pattern]
        return {"interval": interval, "pattern": pattern}

    def warnings(self, i: int) -> list[Any]:
        return self._warnings.get(i, [])

    def out_of_distribution(self, i: int) -> bool:
        return i in self._flagged


def raw_rows(inputs_raw: Any, rows: int) -> list[Any]:
    """The rows as received, from a batch's ``inputs_raw`` (columns or the list of rows)."""
    data = _decoded(inputs_raw)
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise StoreError("a logged batch's inputs_raw is neither columns nor rows")
    if not data:
        return [{} for _ in range(rows)]
    names = list(data)
    return [dict(zip(names, values, strict=True)) for values in zip(*data.values(), strict=True)]


def column_rows(inputs: Any, rows: int) -> list[dict[str, Any]]:
    """The normalised input dict of every row, from a batch's ``inputs`` columns."""
    data = _decoded(inputs)
    if not isinstance(data, dict):
        raise StoreError("a logged batch's inputs are not columns")
    if not data:
        return [{} for _ in range(rows)]
    names = list(data)
    return [dict(zip(names, values, strict=True)) for values in zip(*data.values(), strict=True)]


def expand(
    request_id: str,
    time: float,
    model: str,
    model_version: str,
    rows: int,
    inputs_raw: Any,
    inputs: Any,
    answers: Any,
    latency_ms: float,
) -> list[dict[str, Any]]:
    """Every row of a logged batch as ``PredictionRecord.as_dict()`` (what ``export`` yields per row)."""
    raw = raw_rows(inputs_raw, rows)
    values = column_rows(inputs, rows)
    view = BatchAnswersView(answers)
    if len(raw) != rows or len(values) != rows:
        raise StoreError(f"logged batch {request_id!r} holds {len(raw)}/{len(values)} rows, not {rows}")
    return [
        {
            "request_id": request_id,
            "index": i,
            "time": float(time),
            "model": model,
            "model_version": model_version,
            "inputs_raw": raw[i],
            "inputs": values[i],
            "prediction": view.prediction(i),
            "output": view.output(i),
            "warnings": view.warnings(i),
            "out_of_distribution": view.out_of_distribution(i),
            "latency_ms": float(latency_ms),
        }
        for i in range(rows)
    ]


def batch_log_rows(batch: LogBatch) -> list[LogRow]:
    """The ``LogRow`` of every row of ``batch`` (what the row-per-row log stored; tests and tools)."""
    out: list[LogRow] = []
    for row in expand(*batch.params()):
        prediction = row["prediction"]
        label = isinstance(prediction, str)
        warnings = row["warnings"]
        out.append((
            row["request_id"], row["index"], row["time"], row["model"], row["model_version"],
            dumps_json(row["inputs_raw"]), dumps_json(row["inputs"]),
            None if label else float(prediction), prediction if label else None,
            orjson.dumps(row["output"]).decode(), dumps_json(warnings) if warnings else EMPTY_LIST_JSON,
            1 if row["out_of_distribution"] else 0, row["latency_ms"],
        ))  # fmt: skip
    return out
