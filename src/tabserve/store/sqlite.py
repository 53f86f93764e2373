"""``SqliteStore``: the default prediction log, one SQLite file under the data directory (WAL mode).

One writer (the log's thread) plus readers on their own connections (feedback, export, drift). WAL lets
readers proceed while the writer commits; ``busy_timeout`` absorbs short lock waits between processes.
``synchronous=NORMAL`` (the default here) syncs the WAL at checkpoints instead of at every commit: a commit
survives a crash of the process, and only a power loss or kernel crash can take back the last commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

from tabserve.errors import StoreError
from tabserve.store.batch_queries import BATCHES_DDL_SQLITE, BATCHES_INDEX
from tabserve.store.coverage import COUNTS_DDL, FEEDBACK_TIME_INDEX
from tabserve.store.sql import MAX_CHUNK_ROWS, PREDICTION_COLUMNS, Migration, SqlStore

MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        (
            """CREATE TABLE predictions (
                request_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                time REAL NOT NULL,
                model TEXT NOT NULL,
                model_version TEXT NOT NULL,
                inputs_raw TEXT NOT NULL,
                inputs TEXT NOT NULL,
                prediction_value REAL,
                prediction_label TEXT,
                output TEXT NOT NULL,
                warnings TEXT NOT NULL,
                out_of_distribution INTEGER NOT NULL,
                latency_ms REAL NOT NULL,
                PRIMARY KEY (request_id, idx)
            )""",
            "CREATE INDEX predictions_model_time ON predictions (model, time)",
            "CREATE INDEX predictions_time ON predictions (time)",
            """CREATE TABLE feedback (
                request_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                actual_value REAL,
                actual_label TEXT,
                time REAL NOT NULL,
                PRIMARY KEY (request_id, idx),
                FOREIGN KEY (request_id, idx) REFERENCES predictions (request_id, idx) ON DELETE CASCADE
            )""",
        ),
    ),
    # Every query of the log filters by model (export, drift, feedback by request id, prune per model), so
    # the (model, time) index serves them all; a third index cost each insert ~0.5 µs of CPU (1 row in 10).
    (2, ("DROP INDEX IF EXISTS predictions_time",)),
    # Coverage monitoring: the labelled window reads feedback by time; adaptive conformal counts (store/coverage.py).
    (3, (FEEDBACK_TIME_INDEX, COUNTS_DDL)),
    # Batch requests as one columnar record each (store/columnar.py). Feedback may now be for a row of a batch, so
    # its foreign key to predictions goes: SQLite cannot drop a constraint, so the table is rebuilt as it was
    # without it (same columns, same key, same index; every answer copied). Retention deletes feedback itself.
    (
        4,
        (
            BATCHES_DDL_SQLITE,
            BATCHES_INDEX,
            """CREATE TABLE feedback_v4 (
                request_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                actual_value REAL,
                actual_label TEXT,
                time REAL NOT NULL,
                PRIMARY KEY (request_id, idx)
            )""",
            "INSERT INTO feedback_v4 (request_id, idx, actual_value, actual_label, time) "
            "SELECT request_id, idx, actual_value, actual_label, time FROM feedback",
            "DROP TABLE feedback",
            "ALTER TABLE feedback_v4 RENAME TO feedback",
            FEEDBACK_TIME_INDEX,
        ),
    ),
)


Synchronous = Literal["normal", "full"]
SYNCHRONOUS: tuple[Synchronous, ...] = ("normal", "full")
PAGE_SIZE = 16_384
"""Bytes per page of a new database. A logged row is about 1 KB: 16 KiB pages take 4x fewer WAL frames and
checkpoint copies (one system call each) than SQLite's 4 KiB, ~1 µs less CPU per row."""


class SqliteStore(SqlStore):
    """Prediction log in one SQLite file (created with its folder on first use)."""

    placeholder = "?"
    json_placeholder = "?"
    migrations = MIGRATIONS
    autocommit_inserts = True

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = 5.0,
        cache_kib: int = 512,
        synchronous: str = "normal",
        page_size: int = PAGE_SIZE,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.cache_kib = cache_kib
        """Page cache per connection (SQLite's default is 2,000 KiB). Inserts only touch the right edge of
        the table and of its indexes (time-ordered keys), feedback and drift read a few pages: 512 KiB keeps
        the writer's resident memory ~1.5 MB lower for the same CPU."""
        mode = synchronous.strip().lower()
        if mode not in SYNCHRONOUS:
            raise StoreError(f"SQLite synchronous must be {' or '.join(SYNCHRONOUS)}, not {synchronous!r}")
        self.synchronous: Synchronous = "full" if mode == "full" else "normal"
        """``normal``: no fsync per commit (WAL; a process crash loses nothing); ``full``: also power-safe."""
        self.page_size = page_size
        """For a new database file only (an existing one keeps its own)."""

    @property
    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    @property
    def _data_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.DataError, sqlite3.IntegrityError)

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {self.path}: {exc}") from exc
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA page_size={int(self.page_size)}")  # before WAL: a new, empty file takes it
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA cache_size=-{self.cache_kib}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @contextmanager
    def _transaction(self, conn: Any, *, write: bool, autocommit: bool = False) -> Iterator[Any]:
        cur = conn.cursor()
        if autocommit:  # isolation_level=None: each statement is its own transaction
            try:
                yield cur
            finally:
                cur.close()
            return
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
        finally:
            cur.close()

    def _chunk_rows(self, cur: Any) -> int:
        limit = int(cur.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        rows = MAX_CHUNK_ROWS
        while rows > 1 and rows * len(PREDICTION_COLUMNS.split(",")) > limit:
            rows //= 2
        return rows

    def _lock_migrations(self, cur: Any) -> None:
        """``BEGIN IMMEDIATE`` already holds the database's write lock."""
