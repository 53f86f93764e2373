"""SQLite specifics of the prediction log: page size and durability settings, the store URL's option, and
the migration of a database created by an earlier version (schema 1, with an index on time)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tabserve.errors import StoreError
from tabserve.store import PredictionRecord, open_store
from tabserve.store.record import record_row
from tabserve.store.sqlite import MIGRATIONS, SqliteStore


def record(request_id: str, *, t: float = 1_700_000_000.0, model: str = "co2") -> PredictionRecord:
    return PredictionRecord(
        request_id, 0, t, model, "1.0.0", {"make": "kia"}, {"make": "KIA"}, 190.0,
        {"interval": {"level": 0.9, "lower": 180.0, "upper": 200.0}}, [], False, 0.5,
    )  # fmt: skip


def pragma(store: SqliteStore, name: str) -> int:
    return int(store._conn().execute(f"PRAGMA {name}").fetchone()[0])


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'predictions'")
        return {row[0] for row in rows}


def test_new_database_has_16k_pages_and_no_fsync_per_commit_when_default(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.sqlite")
    store.write([record("a")])
    assert pragma(store, "page_size") == 16_384
    assert pragma(store, "synchronous") == 1  # NORMAL
    assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_synchronous_full_when_store_url_asks(tmp_path: Path) -> None:
    store = open_store("sqlite:///log.sqlite?synchronous=FULL", tmp_path)
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "log.sqlite"
    store.write([record("a")])
    assert pragma(store, "synchronous") == 2  # FULL
    store.close()
    default = open_store("sqlite:///log.sqlite", tmp_path)
    assert isinstance(default, SqliteStore)
    assert default.synchronous == "normal"


@pytest.mark.parametrize("url", ["sqlite:///log.sqlite?synchronous=off", "sqlite:///log.sqlite?journal=delete"])
def test_store_url_refuses_unknown_sqlite_options_when_given(tmp_path: Path, url: str) -> None:
    with pytest.raises(StoreError, match="synchronous"):
        open_store(url, tmp_path)


def test_existing_database_migrates_when_created_by_schema_1(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # what the first version created: 4 KiB pages, an index on time
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        for statement in MIGRATIONS[0][1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
    assert MIGRATIONS[0][0] == 1
    assert "predictions_time" in indexes(path)
    before = SqliteStore(path)
    before.migrations = MIGRATIONS[:1]  # the old code wrote a row
    before.write([record("old", t=1_600_000_000.0)])
    before.close()

    store = SqliteStore(path)
    store.write([record("new")])
    assert store.schema_version() == 4
    assert indexes(path) == {"sqlite_autoindex_predictions_1", "predictions_model_time"}
    assert pragma(store, "page_size") == 4096  # an existing file keeps its pages
    assert [r["request_id"] for r in store.export(None, "co2", False)] == ["old", "new"]
    assert store.prune(1_650_000_000.0) == 1
    assert store.count() == 1
    store.close()


def test_queries_use_the_model_time_index_when_filtering(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.sqlite")
    store.migrate()
    conn = store._conn()

    def plan(sql: str, *params: object) -> str:
        return " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    assert "predictions_model_time" in plan("SELECT inputs FROM predictions WHERE model = ? AND time >= ?", "c", 0)
    assert "predictions_model_time" in plan("DELETE FROM predictions WHERE model = ? AND time < ?", "c", 0)
    assert "SCAN" not in plan("SELECT idx FROM predictions WHERE request_id = ? ORDER BY idx", "r")
    store.close()


@pytest.mark.parametrize(
    ("rows", "inserts"), [(1, [1]), (500, [512]), (512, [512]), (513, [512, 1]), (700, [512, 256])]
)
def test_a_batch_is_one_autocommit_statement_per_512_rows_when_written(
    tmp_path: Path, rows: int, inserts: list[int]
) -> None:
    store = SqliteStore(tmp_path / "log.sqlite")
    store.migrate()
    statements: list[str] = []
    store._conn().set_trace_callback(statements.append)
    batch = [record_row(record(f"r{i:04d}")) for i in range(rows)]
    store.write_rows(batch)
    store.write_rows(batch[:3])  # again: ignored
    assert not [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")]
    sizes = [s.count("'1.0.0'") for s in statements if s.startswith("INSERT")]  # the trace has the values
    assert sizes == [*inserts, 4 if rows >= 3 else 1]  # 3 rows padded to 4
    assert store.count() == rows
    assert sorted(r["request_id"] for r in store.export(None, "co2", False)) == [f"r{i:04d}" for i in range(rows)]
    store.close()
