"""Batches logged as one columnar record: the same rows as one record per row, addressed row by row by export,
feedback, drift, coverage, retention and counts, on SQLite and PostgreSQL; spilled and replayed exactly once;
a log written before migration 4 keeps every row and answer."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tabserve.adaptive import AdaptiveLevels
from tabserve.errors import BadRequestError, ConflictError, NotFoundError
from tabserve.features.batch import ColumnRows
from tabserve.observe import log_batch, log_rows
from tabserve.registry import ModelRegistry
from tabserve.service import Outcome, PredictionService
from tabserve.store import CountingObserver, PredictionLog, PredictionRecord
from tabserve.store.columnar import LogBatch, batch_line, batch_log_rows, entry_from_json
from tabserve.store.coverage import served
from tabserve.store.postgres import MIGRATIONS as PG_MIGRATIONS
from tabserve.store.postgres import PostgresStore
from tabserve.store.sql import SqlStore
from tabserve.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from tabserve.store.sqlite import SqliteStore

MODELS = Path(__file__).resolve().parents[1] / "models"
PG_URL = os.environ.get("TABSERVE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


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


def _batch_of(svc: PredictionService, capture: _Capture, model: str, request_id: str, n: int = 5) -> Outcome:
    """A batch with a warned row, a row missing an optional input and an unknown category (mixed patterns)."""
    example = dict(svc.registry.get(model).manifest.example_request)
    if model == "co2":
        odd = {**example, "model_year": 2031}
        partial = {k: v for k, v in example.items() if not k.startswith("fuel_consumption")}
        unknown = {**example, "make": "Zastava"}
    else:
        odd = {**example, "island": "Atlantis"}
        partial = {k: v for k, v in example.items() if k != "sex"}
        unknown = {**example, "bill_length_mm": 80.0}
    rows = [example, odd, partial, unknown, example][:n]
    svc.predict(model, {"instances": rows}, request_id=request_id)
    return capture.outcomes[-1]


def _without_clock(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row without what is measured (time, latency), its JSON columns decoded (a batch whose rows have the same
    fields records them as columns in the first row's field order: the same objects, maybe not the same text)."""
    return (*row[:2], *row[3:5], *(orjson.loads(v) for v in row[5:7]), *row[7:9], *(orjson.loads(v) for v in row[9:11]),
            row[11])  # fmt: skip


@pytest.mark.parametrize("model", ["co2", "penguins"])
def test_batch_record_expands_to_the_rows_logged_one_by_one(
    service: tuple[PredictionService, _Capture], model: str
) -> None:
    svc, capture = service
    outcome = _batch_of(svc, capture, model, f"req-{model}")
    batch = log_batch(outcome)
    assert batch.rows == 5 and batch.request_id == f"req-{model}"
    assert [_without_clock(r) for r in batch_log_rows(batch)] == [_without_clock(r) for r in log_rows(outcome)]


def test_batch_record_keeps_rows_as_received_when_their_fields_differ(
    service: tuple[PredictionService, _Capture],
) -> None:
    svc, capture = service
    example = dict(svc.registry.get("co2").manifest.example_request)
    reordered = dict(reversed(list(example.items())))
    units = {**example, "engine_size_l": {"value": 2500, "unit": "cc"}}
    svc.predict("co2", {"instances": [example, reordered, units]}, request_id="req-same-fields")
    outcome = capture.outcomes[-1]
    batch = log_batch(outcome)
    assert isinstance(orjson.loads(batch.inputs_raw), dict)  # the same fields in every row: recorded as columns
    assert [_without_clock(r) for r in batch_log_rows(batch)] == [_without_clock(r) for r in log_rows(outcome)]
    partial = {k: v for k, v in example.items() if k != "fuel_consumption_city_l_per_100km"}
    svc.predict("co2", {"instances": [example, partial, units]}, request_id="req-other-fields")
    outcome = capture.outcomes[-1]
    batch = log_batch(outcome)
    assert orjson.loads(batch.inputs_raw) == [example, partial, units]  # rows of different fields: the rows
    assert [_without_clock(r) for r in batch_log_rows(batch)] == [_without_clock(r) for r in log_rows(outcome)]
    columns = {name: [example[name]] * 2 for name in example}
    svc.predict_instances("co2", ColumnRows(columns, 2), request_id="req-columns")  # the Open Inference Protocol's
    outcome = capture.outcomes[-1]
    assert [_without_clock(r) for r in batch_log_rows(log_batch(outcome))] == [
        _without_clock(r) for r in log_rows(outcome)
    ]


def test_batch_record_carries_effective_levels_when_adaptive(service: tuple[PredictionService, _Capture]) -> None:
    svc, capture = service
    svc.adaptive = AdaptiveLevels(0.005, lambda _model: {})
    try:
        for model in ("co2", "penguins"):
            outcome = _batch_of(svc, capture, model, f"req-adaptive-{model}")
            rows = batch_log_rows(log_batch(outcome))
            assert [_without_clock(r) for r in rows] == [_without_clock(r) for r in log_rows(outcome)]
            assert all(served(r[9]).effective_level is not None for r in rows)  # type: ignore[union-attr]
    finally:
        svc.adaptive = None


def test_batch_spill_line_round_trips(service: tuple[PredictionService, _Capture]) -> None:
    svc, capture = service
    batch = log_batch(_batch_of(svc, capture, "co2", "req-spill"))
    line = batch_line(batch)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert entry_from_json(orjson.loads(line)) == batch


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        sqlite = SqliteStore(tmp_path / "log.sqlite")
        yield sqlite
        sqlite.close()
        return
    pg = PostgresStore(PG_URL, schema=f"t_{uuid.uuid4().hex[:12]}")
    yield pg
    pg.drop_schema()
    pg.close()


def _logged(svc: PredictionService, capture: _Capture, request_id: str, at: float) -> LogBatch:
    batch = log_batch(_batch_of(svc, capture, "co2", request_id))
    return LogBatch(batch.request_id, at, *batch.params()[2:])  # type: ignore[arg-type]


def _single(request_id: str, at: float) -> PredictionRecord:
    return PredictionRecord(
        request_id, 0, at, "co2", "2.0.0", {"make": "Kia"}, {"make": "KIA"}, 190.0,
        {"interval": {"level": 0.9, "lower": 180.0, "upper": 200.0}, "pattern": "111"}, [], False, 0.5,
    )  # fmt: skip


def test_store_addresses_batch_rows_one_by_one(store: SqlStore, service: tuple[PredictionService, _Capture]) -> None:
    svc, capture = service
    t0 = 1_700_000_000.0
    first, second = _logged(svc, capture, "b1", t0 + 1), _logged(svc, capture, "b2", t0 + 3)
    store.write([_single("s0", t0), _single("s1", t0 + 2)])
    store.write_rows([first, second])
    store.write_rows([first])  # a replayed copy: ignored
    assert store.count() == 12 and store.count("co2") == 12 and store.count("penguins") == 0
    exported = list(store.export(None, None, False))
    assert [(r["request_id"], r["index"]) for r in exported] == [
        ("s0", 0), *[("b1", i) for i in range(5)], ("s1", 0), *[("b2", i) for i in range(5)]
    ]  # fmt: skip
    by_key = {(r["request_id"], r["index"]): r for r in exported}
    expected = {(r[0], r[1]): r for r in batch_log_rows(first)}
    for (rid, i), row in expected.items():
        got = by_key[rid, i]
        assert (got["prediction"], got["out_of_distribution"]) == (row[7], bool(row[11]))
        assert got["inputs"] == orjson.loads(row[6]) and got["output"] == orjson.loads(row[9])
        assert got["warnings"] == orjson.loads(row[10]) and got["actual"] is None

    result = store.attach_feedback("b1", 3, 201.5)
    assert result.created and result.index == 3 and result.prediction == expected["b1", 3][7]
    assert not store.attach_feedback("b1", 3, 201.5).created  # idempotent
    with pytest.raises(ConflictError):
        store.attach_feedback("b1", 3, 150.0)
    with pytest.raises(BadRequestError):
        store.attach_feedback("b1", None, 150.0)
    with pytest.raises(NotFoundError):
        store.attach_feedback("b1", 5, 150.0)
    store.attach_feedback("s0", None, 185.0)

    labelled = list(store.export(None, "co2", True))
    assert [(r["request_id"], r["index"], r["actual"]) for r in labelled] == [("s0", 0, 185.0), ("b1", 3, 201.5)]
    assert [r["request_id"] for r in store.export(t0 + 2.5, None, False)] == ["b2"] * 5

    window = store.labelled_window("co2", 0.0, 10)
    assert len(window) == 2
    outputs = {w[2]: w[1] for w in window}
    assert served(outputs[201.5]) == served(expected["b1", 3][9])

    recent = store.recent_inputs("co2", None, 7)
    assert len(recent) == 7
    assert recent[-5:] == [orjson.loads(r[6]) for r in batch_log_rows(second)]

    assert store.prune(t0 + 2.5) == 7  # s0, b1 (5 rows), s1; and b1's feedback with them
    assert store.count() == 5
    assert list(store.export(None, None, True)) == []
    with pytest.raises(NotFoundError):
        store.attach_feedback("b1", 3, 201.5)


def _old_store(kind: str, tmp_path: Path, schema: str) -> SqlStore:
    """A store that knows only migrations 1-3: a log written by the release before columnar batches."""
    if kind == "sqlite":
        old_sqlite = SqliteStore(tmp_path / "old.sqlite")
        old_sqlite.migrations = SQLITE_MIGRATIONS[:3]
        return old_sqlite
    old_pg = PostgresStore(PG_URL, schema=schema)
    old_pg.migrations = PG_MIGRATIONS[:2]
    return old_pg


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_4_keeps_an_existing_log_and_its_answers(
    kind: str, tmp_path: Path, service: tuple[PredictionService, _Capture]
) -> None:
    svc, capture = service
    schema = f"t_{uuid.uuid4().hex[:12]}"
    old = _old_store(kind, tmp_path, schema)
    old.write([_single(f"s{i}", 1_700_000_000.0 + i) for i in range(3)])
    old.attach_feedback("s1", 0, 199.0)
    assert old.schema_version() == 3
    old.close()
    new: SqlStore = SqliteStore(tmp_path / "old.sqlite") if kind == "sqlite" else PostgresStore(PG_URL, schema=schema)
    try:
        new.migrate()
        assert new.schema_version() == 4
        rows = list(new.export(None, None, False))
        assert [(r["request_id"], r["actual"]) for r in rows] == [("s0", None), ("s1", 199.0), ("s2", None)]
        assert not new.attach_feedback("s1", 0, 199.0).created  # the answer moved with the table
        new.write_rows([_logged(svc, capture, "b9", time.time())])
        assert new.attach_feedback("b9", 2, 210.0).created  # a batch row takes feedback (no foreign key left)
        assert new.count() == 8
    finally:
        if isinstance(new, PostgresStore):
            new.drop_schema()
        new.close()


def test_sqlite_feedback_has_no_foreign_key_after_migration_4(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.sqlite")
    store.migrate()
    store.close()
    with sqlite3.connect(tmp_path / "log.sqlite") as conn:
        assert conn.execute("PRAGMA foreign_key_list(feedback)").fetchall() == []
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(feedback)").fetchall()}
    assert "feedback_time" in indexes


def _sqlite_log(tmp_path: Path) -> tuple[SqliteStore, PredictionLog, CountingObserver]:
    """A migrated SQLite store and a (not yet started) log in front of it, spilling to ``tmp_path``."""
    store = SqliteStore(tmp_path / "log.sqlite", busy_timeout_s=0.05)
    store.migrate()
    observer = CountingObserver()
    log = PredictionLog(
        store, spill_path=tmp_path / "spill.jsonl", observer=observer, batch_size=8, flush_interval_s=0.02,
        retry_delays_s=(0.01,), probe_max_s=0.1,
    )  # fmt: skip
    return store, log, observer


def test_log_spills_a_batch_and_replays_it_exactly_once(
    tmp_path: Path, service: tuple[PredictionService, _Capture]
) -> None:
    svc, capture = service
    store, log, observer = _sqlite_log(tmp_path)
    log.start()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # every write fails "database is locked": the batches are spilled
    try:
        for i in range(4):
            log.submit_batch(_logged(svc, capture, f"spilled{i}", 1_700_000_000.0 + i))
        assert log.flush(10)
        assert observer.total_spilled == 20 and store.count() == 0
        assert log.spill.pending == 20
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.submit_batch(_logged(svc, capture, "after", 1_700_000_010.0))
    assert log.flush(10)
    deadline = time.monotonic() + 10
    while log.spill.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.flush(10)
    assert [r["request_id"] for r in store.export(None, None, False)] == [
        *[f"spilled{i}" for i in range(4) for _ in range(5)], *["after"] * 5
    ]  # fmt: skip
    assert observer.total_replayed == observer.total_spilled >= 20  # "after" may queue behind the spill: in order
    assert observer.total_written + observer.total_spilled == 25
    assert log.close(5)
    store.close()


def test_a_journaled_batch_is_recovered_exactly_once(
    tmp_path: Path, service: tuple[PredictionService, _Capture]
) -> None:
    """A batch a SIGKILLed worker had queued (``store.journal``) is stored by the next process in its slot."""
    svc, capture = service
    store, log, _ = _sqlite_log(tmp_path)
    stored, queued = (_logged(svc, capture, name, 1_700_000_000.0 + i) for i, name in enumerate(["stored", "queued"]))
    store.write_rows([stored])
    (tmp_path / "spill.journal.3.jsonl").write_bytes(batch_line(stored) + batch_line(queued))
    log.start()
    deadline = time.monotonic() + 10
    while store.count() < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.close(5)
    assert [r["request_id"] for r in store.export(None, None, False)] == ["stored"] * 5 + ["queued"] * 5
    assert not list(tmp_path.glob("*.journal.*"))
    store.close()
