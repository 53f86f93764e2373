"""The encoded log row: the request path's rows equal what the record path stored, spill lines round-trip,
multi-row inserts chunk correctly, and request ids are time-ordered (the log's unique key stays append-only)."""

from __future__ import annotations

import re
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tabserve.observability.logging import new_request_id
from tabserve.observe import log_rows
from tabserve.registry import ModelRegistry
from tabserve.service import Outcome, PredictionService
from tabserve.store.record import PredictionRecord, _jsonable, record_line, record_row, row_line, row_record
from tabserve.store.sql import MAX_CHUNK_ROWS
from tabserve.store.sqlite import SqliteStore

MODELS = Path(__file__).resolve().parents[1] / "models"


class _Capture:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def predicted(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


@pytest.fixture(scope="module")
def service() -> tuple[PredictionService, _Capture]:
    registry = ModelRegistry(MODELS, {"co2": None, "penguins": None}, {}, strict_fields=True, warmup=False)
    registry.load_all()
    capture = _Capture()
    return PredictionService(registry, max_batch=100, hooks=capture), capture


def _records_as_before(outcome: Outcome) -> list[PredictionRecord]:
    """What the observer built before rows existed: one PredictionRecord per row (the reference content)."""
    records = []
    if outcome.instance is not None:
        patterns = [outcome.instance.pattern]
    else:
        patterns = outcome.batch.patterns if outcome.batch is not None else []
    rows = zip(outcome.raw, outcome.values(), outcome.answers, patterns, strict=True)
    for index, (raw, values, answer, pattern) in enumerate(rows):
        if "interval" in answer:  # the served interval/set, its level and the row's conformal pattern (coverage)
            output: dict[str, Any] = {"interval": answer["interval"], "pattern": pattern}
        else:
            output = {
                "probabilities": answer["probabilities"],
                "prediction_set": answer["prediction_set"],
                "level": answer["level"],
                "pattern": pattern,
            }
        records.append(
            PredictionRecord(outcome.request_id, index, 0.0, outcome.model.name, outcome.model.version, raw, values,
                             answer["prediction"], output, answer["warnings"], answer["out_of_distribution"], 0.0)
        )  # fmt: skip
    return records


def _without_clock(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row[:2], *row[3:12])  # time and latency are measured, not derived


@pytest.mark.parametrize(
    ("model", "body"),
    [
        ("co2", "example"),
        ("co2", "batch"),
        ("penguins", "example"),
        ("penguins", "batch"),
    ],
)
def test_request_rows_equal_the_records_they_replace_when_encoded(
    service: tuple[PredictionService, _Capture], model: str, body: str
) -> None:
    svc, capture = service
    example = dict(svc.registry.get(model).manifest.example_request)
    if body == "batch":
        odd = {**example, "model_year": 2030} if model == "co2" else {**example, "island": "Atlantis"}  # warnings
        svc.predict(model, {"instances": [example, odd, example]}, request_id="req-batch")
    else:
        svc.predict(model, example, request_id="req-one")
    outcome = capture.outcomes[-1]
    rows = log_rows(outcome)
    expected = [record_row(r) for r in _records_as_before(outcome)]
    assert [_without_clock(r) for r in rows] == [_without_clock(r) for r in expected]
    if body == "batch":
        assert rows[1][10] != "[]"  # the row with a warning carries it
    assert all(r[11] in (0, 1) and type(r[11]) is int and type(r[12]) is float and type(r[2]) is float for r in rows)


def test_request_rows_keep_odd_values_when_plain_json_refuses_them(service: tuple[PredictionService, _Capture]) -> None:
    svc, capture = service
    svc.predict("co2", dict(svc.registry.get("co2").manifest.example_request), request_id="req-odd")
    outcome = capture.outcomes[-1]
    outcome.raw = [{"when": Decimal("1.5"), 3: b"x", "big": 2**80}]
    (row,) = log_rows(outcome)
    assert orjson.loads(row[5]) == {"when": "1.5", "3": "b'x'", "big": str(2**80)}
    assert _without_clock(row) == _without_clock(record_row(_records_as_before(outcome)[0]))


def _record(**changes: Any) -> PredictionRecord:
    base: dict[str, Any] = {
        "request_id": "r1", "index": 0, "time": 1_700_000_000.25, "model": "co2", "model_version": "1.0.0",
        "inputs_raw": {"make": "Kia", "engine_size_l": 0.1 + 0.2}, "inputs": {"make": "KIA", "engine_size_l": 0.3},
        "prediction": 190.123, "output": {"interval": {"level": 0.9, "lower": 1.0, "upper": 2.0}},
        "warnings": [{"field": "make", "code": "unseen_category", "message": "é \u2028 \"quoted\""}],
        "out_of_distribution": True, "latency_ms": 0.75,
    }  # fmt: skip
    base.update(changes)
    return PredictionRecord(**base)


@pytest.mark.parametrize(
    "record",
    [
        _record(),
        _record(prediction="Adelie", output={"probabilities": {"Adelie": 0.9}, "prediction_set": ["Adelie"]}),
        _record(warnings=[], out_of_distribution=False),
        _record(inputs_raw={"when": Decimal("1.5"), 3: b"x", "big": 2**80, "nan": float("nan")}),
        _record(index=2**70),
    ],
)
def test_spill_line_is_the_record_as_json_when_built_from_the_row(record: PredictionRecord) -> None:
    line = row_line(record_row(record))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = orjson.loads(line)
    assert parsed == orjson.loads(_line_as_before(record))
    assert record_line(record) == line
    if record.index < 2**63 and "big" not in record.inputs_raw:
        assert PredictionRecord.from_dict(parsed) == record
        assert row_record(record_row(record)) == record


def _line_as_before(record: PredictionRecord) -> bytes:
    """The spill line as it was written before rows existed (the whole record encoded in one go)."""
    options = orjson.OPT_NON_STR_KEYS
    try:
        return orjson.dumps(record.as_dict(), default=str, option=options)
    except orjson.JSONEncodeError:
        return orjson.dumps(_jsonable(record.as_dict(), 0), default=str, option=options)


def test_write_rows_inserts_every_row_once_when_chunked(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.sqlite")
    rows = [record_row(_record(request_id=f"q{i // 7:05d}", index=i % 7)) for i in range(MAX_CHUNK_ROWS * 3 + 77)]
    store.write_rows(rows[:100])
    store.write_rows(rows)  # the first 100 again: ignored, across chunk boundaries
    assert store.count() == len(rows)
    exported = [(r["request_id"], r["index"]) for r in store.export(None, None, False)]
    assert sorted(exported) == sorted((r[0], r[1]) for r in rows)
    store.close()


def test_sqlite_chunk_fits_the_connections_variable_limit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.sqlite")
    store.migrate()
    conn = store._conn()
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # an old SQLite's much lower limit
    assert store._chunk_rows(conn.cursor()) == 4  # 4 rows x 13 values <= 100
    store.write_rows([record_row(_record(index=i)) for i in range(11)])
    assert store.count() == 11
    store.close()


def test_request_ids_are_32_hex_and_time_ordered_when_generated() -> None:
    first = new_request_id()
    time.sleep(0.002)
    later = [new_request_id() for _ in range(100)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in [first, *later])
    assert all(first < r for r in later)
    assert len(set(later)) == 100
    assert abs(int(first[:12], 16) / 1000 - time.time()) < 5


def test_sqlite_page_cache_is_small_when_connected(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.sqlite")
    assert store._conn().execute("PRAGMA cache_size").fetchone()[0] == -512  # KiB (SQLite's default: 2,000)
    store.close()
