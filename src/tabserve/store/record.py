"""One logged prediction (``PredictionRecord``) and its lossless JSON form, used by the spill file.

A record is one row of one request: ``(request_id, index)`` is its identity everywhere (the unique key in
both databases, the de-duplication key of spill replay, the address of feedback).
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


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> str:
    return str(value)


def dumps_json(value: Any) -> str:
    """Compact JSON text for a JSON column. Never raises for odd values: NaN/inf become null, non-string
    keys become strings, and any other non-JSON value (Decimal, bytes, ...) its ``str()``: the log must
    not lose a record because a caller put something unusual in it."""
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


def record_line(record: PredictionRecord) -> bytes:
    """One JSONL line (with its newline) for the spill file."""
    data = record.as_dict()
    try:
        return orjson.dumps(data, default=_fallback, option=_JSON_OPTIONS) + b"\n"
    except orjson.JSONEncodeError:
        return orjson.dumps(_jsonable(data, 0), default=_fallback, option=_JSON_OPTIONS) + b"\n"


def split_value(value: float | str | None) -> tuple[float | None, str | None]:
    """A prediction/actual as the two database columns ``(value, label)``: numbers vs class labels."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return None, value
    return float(value), None


def join_value(number: float | None, label: str | None) -> float | str | None:
    return label if label is not None else number
