"""PredictionStore semantics, identical on the real SQLite and the real PostgreSQL (own schema per test)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabserve.errors import BadRequestError, ConflictError, NotFoundError, StoreError
from tabserve.store import PredictionRecord, PredictionStore, open_store
from tabserve.store.postgres import PostgresStore
from tabserve.store.retention import prune
from tabserve.store.sqlite import SqliteStore

PG_URL = os.environ.get("TABSERVE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_700_000_000.0


def record(
    request_id: str, index: int = 0, *, t: float = T0, model: str = "co2", pred: float | str = 200.0
) -> PredictionRecord:
    return PredictionRecord(
        request_id=request_id,
        index=index,
        time=t,
        model=model,
        model_version="1.0.0",
        inputs_raw={"engine_size_l": {"value": 2500, "unit": "cc"}, "make": "toyota"},
        inputs={"engine_size_l": 2.5, "make": "TOYOTA", "model_year": None},
        prediction=pred,
        output={"interval": {"0.9": {"lower": 180.0, "upper": 220.0}}},
        warnings=[{"code": "unseen-category", "field": "make"}],
        out_of_distribution=False,
        latency_ms=1.25,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PredictionStore]:
    if request.param == "sqlite":
        sqlite = SqliteStore(tmp_path / "log.sqlite")
        yield sqlite
        sqlite.close()
        return
    pg = PostgresStore(PG_URL, schema=f"t_{uuid.uuid4().hex[:12]}")
    yield pg
    pg.drop_schema()
    pg.close()


def test_migrate_is_idempotent_when_run_twice(store: PredictionStore) -> None:
    store.migrate()
    store.write([record("a")])
    store.migrate()
    assert isinstance(store, SqliteStore | PostgresStore)
    assert store.schema_version() == 4
    assert store.count() == 1


def test_write_ignores_duplicates_when_same_request_and_index(store: PredictionStore) -> None:
    store.write([record("a", 0), record("a", 1)])
    store.write([record("a", 0, pred=999.0), record("b", 0)])
    assert store.count() == 3
    rows = {(r["request_id"], r["index"]): r for r in store.export(None, None, False)}
    assert rows[("a", 0)]["prediction"] == 200.0  # first write wins; the replayed copy is ignored


def test_export_round_trips_every_field_when_written(store: PredictionStore) -> None:
    original = record("a", 3, pred="Gentoo", model="penguins")
    store.write([original])
    (row,) = store.export(None, None, False)
    expected = original.as_dict() | {"actual": None, "feedback_time": None}
    assert row == expected


def test_feedback_attaches_and_repeats_idempotently_when_same_answer(store: PredictionStore) -> None:
    store.write([record("a")])
    first = store.attach_feedback("a", 0, 210.0)
    again = store.attach_feedback("a", None, 210.0)
    assert (first.created, again.created) == (True, False)
    assert first.prediction == 200.0
    (row,) = store.export(None, "co2", True)
    assert row["actual"] == 210.0
    assert row["feedback_time"] is not None


def test_feedback_conflicts_when_second_answer_differs(store: PredictionStore) -> None:
    store.write([record("a")])
    store.attach_feedback("a", 0, 210.0)
    with pytest.raises(ConflictError):
        store.attach_feedback("a", 0, 211.0)
    with pytest.raises(BadRequestError, match="is a regression: actual must be a number"):
        store.attach_feedback("a", 0, "210.0")  # a label for a regression's row: the wrong kind, before any conflict


def test_feedback_not_found_when_unknown_id_or_index(store: PredictionStore) -> None:
    store.write([record("a", 0), record("a", 1)])
    with pytest.raises(NotFoundError):
        store.attach_feedback("zzz", 0, 1.0)
    with pytest.raises(NotFoundError):
        store.attach_feedback("a", 2, 1.0)


def test_feedback_needs_index_when_request_has_several_rows(store: PredictionStore) -> None:
    store.write([record("a", 0), record("a", 1)])
    with pytest.raises(BadRequestError):
        store.attach_feedback("a", None, 1.0)
    assert store.attach_feedback("a", 1, 1.0).index == 1


def test_feedback_rejects_nan_when_numeric(store: PredictionStore) -> None:
    store.write([record("a")])
    with pytest.raises(BadRequestError):
        store.attach_feedback("a", 0, float("nan"))


def test_export_filters_when_since_model_and_labelled_only(store: PredictionStore) -> None:
    store.write(
        [record("old", t=T0 - 100), record("new", t=T0 + 100), record("p", t=T0 + 50, model="penguins", pred="Adelie")]
    )
    store.attach_feedback("old", 0, 1.0)
    assert [r["request_id"] for r in store.export(None, None, False)] == ["old", "p", "new"]
    assert [r["request_id"] for r in store.export(T0, None, False)] == ["p", "new"]
    assert [r["request_id"] for r in store.export(None, "co2", False)] == ["old", "new"]
    assert [r["request_id"] for r in store.export(None, "co2", True)] == ["old"]


def test_recent_inputs_returns_newest_rows_oldest_first_when_limited(store: PredictionStore) -> None:
    store.write([record(f"r{i}", t=T0 + i) for i in range(10)])
    recent = store.recent_inputs("co2", None, 3)
    assert recent == [record("x").inputs] * 3
    assert store.recent_inputs("co2", T0 + 8, 100) == [record("x").inputs] * 2
    assert store.recent_inputs("penguins", None, 3) == []


def test_prune_deletes_rows_and_feedback_when_older_than_cutoff(store: PredictionStore) -> None:
    now = time.time()
    store.write([record("old", t=now - 40 * 86_400), record("new", t=now - 86_400)])
    store.attach_feedback("old", 0, 1.0)
    store.attach_feedback("new", 0, 2.0)
    assert prune(store, 30, now=now) == 1
    assert [r["request_id"] for r in store.export(None, None, True)] == ["new"]
    store.write([record("old", t=now - 40 * 86_400)])  # same id again: its old feedback must be gone
    assert [r["actual"] for r in store.export(None, None, False)] == [None, 2.0]
    assert store.count("co2") == 2


def test_prune_deletes_old_rows_of_every_model_when_several(store: PredictionStore) -> None:
    now = time.time()
    old, new = now - 40 * 86_400, now - 86_400
    store.write([
        record("a", t=old), record("b", t=new), record("c", t=old, model="penguins", pred="Adelie"),
        record("d", t=new, model="penguins", pred="Gentoo"), record("e", t=old, model="zz"),
    ])  # fmt: skip
    store.attach_feedback("c", 0, "Adelie")
    assert prune(store, 30, now=now) == 3
    assert sorted(r["request_id"] for r in store.export(None, None, False)) == ["b", "d"]
    assert (store.count("co2"), store.count("penguins"), store.count("zz")) == (1, 1, 0)
    assert prune(store, 30, now=now) == 0


def test_prune_rejects_non_positive_days_when_called() -> None:
    with pytest.raises(ValueError, match="days"):
        prune(SqliteStore(Path("/nonexistent/never-opened.sqlite")), 0)


def test_count_filters_when_model_given(store: PredictionStore) -> None:
    store.write([record("a"), record("b", model="penguins", pred="Adelie")])
    assert (store.count(), store.count("co2"), store.count("penguins"), store.count("nope")) == (2, 1, 1, 0)


def test_open_store_picks_backend_when_given_url(tmp_path: Path) -> None:
    default = open_store("", tmp_path)
    named = open_store("sqlite:///sub/x.sqlite", tmp_path)
    absolute = open_store(f"sqlite:///{tmp_path}/abs.sqlite", Path("elsewhere"))
    pg = open_store(PG_URL, tmp_path)
    assert isinstance(default, SqliteStore)
    assert default.path == tmp_path / "predictions.sqlite"
    assert isinstance(named, SqliteStore)
    assert named.path == tmp_path / "sub" / "x.sqlite"
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == tmp_path / "abs.sqlite"
    assert isinstance(pg, PostgresStore)
    with pytest.raises(StoreError, match="scheme"):
        open_store("mysql://x", tmp_path)


def test_sqlite_store_raises_store_error_when_file_unusable(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "dir.sqlite").write([record("a")])


def test_postgres_store_raises_store_error_when_unreachable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=1)
    with pytest.raises(StoreError, match="cannot connect"):
        store.write([record("a")])
