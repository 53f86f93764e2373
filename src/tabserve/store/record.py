"""One logged prediction: ``PredictionRecord`` (typed, for callers and tests) and ``LogRow`` (what the log
queues, writes and spills), plus their lossless JSON forms.

A record is one row of one request: ``(request_id, index)`` is its identity everywhere (the unique key in
both databases, the de-duplication key of spill replay, the address of feedback).

``LogRow`` is the database row itself, in ``PREDICTION_COLUMNS`` order, with the JSON columns already
encoded: the request path encodes each value once (``orjson``), the writer thread binds the strings as they
are, and a spill line is assembled from the same strings without encoding anything again. It is compact
(one tuple and a few strings, about 1 KB for a co2 row) and holds no reference to the request's objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tabserve.errors import StoreError


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """What the serving path hands to the log for every predicted row."""

    request_id: str
    index: int
    """Row index within the request (0 for a single instance)."""
    time: float
    """Unix seconds, UTC."""
    model: str
    model_version: str
    inputs_raw: dict[str, Any]
    """The row as received (JSON-able)."""
    inputs: dict[str, Any]
    """Normalised: canonical units and spellings, ``None`` when absent."""
    prediction: float | str
    """CO2 g/km, or the species."""
    output: dict[str, Any]
    """``{"interval": {...}}`` or ``{"probabilities": {...}, "prediction_set": [...]}``."""
    warnings: list[dict[str, Any]]
    out_of_distribution: bool
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "index": self.index,
            "time": self.time,
            "model": self.model,
            "model_version": self.model_version,
            "inputs_raw": self.inputs_raw,
            "inputs": self.inputs,
            "prediction": self.prediction,
            "output": self.output,
            "warnings": self.warnings,
            "out_of_distribution": self.out_of_distribution,
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictionRecord:
        try:
            prediction = data["prediction"]
            if not isinstance(prediction, str):
                prediction = float(prediction)
            return cls(
                request_id=str(data["request_id"]),
                index=int(data["index"]),
                time=float(data["time"]),
                model=str(data["model"]),
                model_version=str(data["model_version"]),
                inputs_raw=dict(data["inputs_raw"]),
                inputs=dict(data["inputs"]),
                prediction=prediction,
                output=dict(data["output"]),
                warnings=list(data["warnings"]),
                out_of_distribution=bool(data["out_of_distribution"]),
                latency_ms=float(data["latency_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"not a prediction record: {exc}") from exc


LogRow = tuple[str, int, float, str, str, str, str, float | None, str | None, str, str, int, float]
"""``(request_id, idx, time, model, model_version, inputs_raw, inputs, prediction_value, prediction_label,
output, warnings, out_of_distribution, latency_ms)``: the JSON columns as compact JSON text,
``out_of_distribution`` as 0/1 (the SQLite driver binds an ``int`` directly, a ``bool`` through its adapter
lookup)."""

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
EMPTY_LIST_JSON = "[]"


def _fallback(value: Any) -> str:
    return str(value)


def dumps_json(value: Any) -> str:
    """Compact JSON text for a JSON column. Never raises for odd values: NaN/inf become null, non-string
    keys become strings, and any other non-JSON value (Decimal, bytes, ...) its ``str()``: the log must
    not lose a record because a caller put something unusual in it."""
    try:
        return orjson.dumps(value, default=_fallback).decode()  # string keys, the usual case: no key conversion
    except orjson.JSONEncodeError:
        return dumps_json_careful(value)


def dumps_json_careful(value: Any) -> str:
    """``dumps_json`` for values the plain encoding refused: non-string keys, integers beyond 64 bits, ..."""
    try:
        return orjson.dumps(value, default=_fallback, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits, nested too deep
        return orjson.dumps(_jsonable(value, 0), default=_fallback, option=_JSON_OPTIONS).decode()


def _jsonable(value: Any, depth: int) -> Any:
    """A JSON-safe copy: oversized integers and anything exotic become strings (slow path, rare)."""
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if depth > 100:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def loads_json(text: str | bytes | None) -> Any:
    return None if text is None else orjson.loads(text)


def record_row(record: PredictionRecord) -> LogRow:
    """The database row of ``record`` (JSON columns encoded)."""
    value, label = split_value(record.prediction)
    warnings = dumps_json(record.warnings) if record.warnings else EMPTY_LIST_JSON
    return (
        record.request_id, record.index, record.time, record.model, record.model_version,
        dumps_json(record.inputs_raw), dumps_json(record.inputs), value, label, dumps_json(record.output),
        warnings, 1 if record.out_of_distribution else 0, float(record.latency_ms),
    )  # fmt: skip


def row_record(row: LogRow) -> PredictionRecord:
    """The record back from its row (decodes the JSON columns; replay and tests, not the hot path)."""
    return PredictionRecord(
        request_id=row[0], index=row[1], time=row[2], model=row[3], model_version=row[4],
        inputs_raw=loads_json(row[5]), inputs=loads_json(row[6]), prediction=join_value(row[7], row[8]),  # type: ignore[arg-type]
        output=loads_json(row[9]), warnings=loads_json(row[10]), out_of_distribution=bool(row[11]), latency_ms=row[12],
    )  # fmt: skip


_LINE = (
    '{"request_id":%s,"index":%s,"time":%s,"model":%s,"model_version":%s,"inputs_raw":%s,"inputs":%s,'
    '"prediction":%s,"output":%s,"warnings":%s,"out_of_distribution":%s,"latency_ms":%s}\n'
)


def row_line(row: LogRow) -> bytes:
    """One JSONL line (with its newline) for the spill file: ``PredictionRecord.as_dict()`` as JSON, assembled
    from the row's already-encoded JSON columns (nothing is encoded twice)."""
    rid, idx, at, model, version, raw, inputs, value, label, output, warnings, ood, latency = row
    line = _LINE % (
        dumps_json(rid), dumps_json(idx), dumps_json(at), dumps_json(model), dumps_json(version), raw, inputs,
        dumps_json(join_value(value, label)), output, warnings, "true" if ood else "false", dumps_json(latency),
    )  # fmt: skip
    return line.encode()


def record_line(record: PredictionRecord) -> bytes:
    """One JSONL line (with its newline) for the spill file."""
    return row_line(record_row(record))


def split_value(value: float | str | None) -> tuple[float | None, str | None]:
    """A prediction/actual as the two database columns ``(value, label)``: numbers vs class labels."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return None, value
    return float(value), None


def join_value(number: float | None, label: str | None) -> float | str | None:
    return label if label is not None else number
