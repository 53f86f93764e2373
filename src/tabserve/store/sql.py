"""``SqlStore``: the prediction-log logic shared by SQLite and PostgreSQL (one schema, one set of queries).

Backends supply connections, the placeholder style, the migrations and which exceptions mean "the
database failed"; everything else (insert-or-ignore, feedback rules, export join, retention) lives here so
both behave identically (a batch request, logged as one columnar record in ``prediction_batches``, is read row by
row by ``store.batch_queries``). Each thread gets its own connection; a connection that failed is dropped and the
next call reconnects. Migrations run lazily on first use, so a database that is down at start-up only
delays the log (the writer spills meanwhile) instead of preventing the service from starting.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from itertools import chain
from typing import Any

from tabserve.errors import StoreError
from tabserve.store.batch_queries import BatchQueries
from tabserve.store.columnar import LogBatch, LogEntry
from tabserve.store.coverage import CoverageQueries
from tabserve.store.feedback import FeedbackQueries
from tabserve.store.record import LogRow, PredictionRecord, join_value, loads_json, record_row

log = logging.getLogger("tabserve.store")


class RecordRejectedError(StoreError):
    """The database is reachable but refuses these values (e.g. a NUL character for PostgreSQL)."""


Migration = tuple[int, tuple[str, ...]]
MAX_CHUNK_ROWS = 512
"""Rows per INSERT statement (512 x 13 values; SQLite allows 32,766): a batch of the log is one statement.
The driver keeps each prepared size with its last bound values (SQLite copies bound text, ~0.5 MB here)."""

PREDICTION_COLUMNS = _COLUMNS = (
    "request_id, idx, time, model, model_version, inputs_raw, inputs, prediction_value, prediction_label, "
    "output, warnings, out_of_distribution, latency_ms"
)
_SELECT = (
    "SELECT p.request_id, p.idx, p.time, p.model, p.model_version, p.inputs_raw, p.inputs, p.prediction_value, "
    "p.prediction_label, p.output, p.warnings, p.out_of_distribution, p.latency_ms, f.actual_value, "
    "f.actual_label, f.time FROM predictions p LEFT JOIN feedback f ON f.request_id = p.request_id AND f.idx = p.idx"
)

_MODELS = (
    "WITH RECURSIVE m(model) AS (SELECT MIN(model) FROM predictions UNION ALL "
    "SELECT (SELECT MIN(model) FROM predictions WHERE model > m.model) FROM m WHERE m.model IS NOT NULL) "
    "SELECT model FROM m WHERE model IS NOT NULL"
)
"""The distinct models, one index seek each (a loose index scan; both databases)."""


def _json(value: Any) -> Any:
    return loads_json(value) if isinstance(value, str | bytes) else value


def _row_dict(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "request_id": row[0],
        "index": int(row[1]),
        "time": float(row[2]),
        "model": row[3],
        "model_version": row[4],
        "inputs_raw": _json(row[5]),
        "inputs": _json(row[6]),
        "prediction": join_value(row[7], row[8]),
        "output": _json(row[9]),
        "warnings": _json(row[10]),
        "out_of_distribution": bool(row[11]),
        "latency_ms": float(row[12]),
        "actual": join_value(row[13], row[14]),
        "feedback_time": None if row[15] is None else float(row[15]),
    }


def _export_key(row: dict[str, Any]) -> tuple[float, str, int]:
    return row["time"], row["request_id"], row["index"]


def _rows_of(cur: Any) -> Iterator[dict[str, Any]]:
    while True:
        batch = cur.fetchmany(1000)
        if not batch:
            return
        for row in batch:
            yield _row_dict(row)


class SqlStore(BatchQueries, CoverageQueries, FeedbackQueries, ABC):
    """Shared implementation of ``PredictionStore``; see ``SqliteStore`` and ``PostgresStore``."""

    placeholder: str = "?"
    json_placeholder: str = "?"
    migrations: tuple[Migration, ...] = ()
    autocommit_inserts: bool = False
    """``write_rows`` lets each INSERT statement commit on its own instead of opening a transaction: the
    unique key makes a batch's partial write harmless (its retry skips what is there), and SQLite spends
    less CPU on one statement than on BEGIN + INSERT + COMMIT."""
    schema_version_ddl: str = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL)"

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._migrated = False
        self._closed = False
        self._insert_sql: dict[int, str] = {}

    # -- backend hooks -------------------------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any:
        """A new DB-API connection (raises the backend's error when the database is unreachable)."""

    @abstractmethod
    def _transaction(self, conn: Any, *, write: bool, autocommit: bool = False) -> AbstractContextManager[Any]:
        """A context manager yielding a cursor inside one transaction (commit on success, rollback on error);
        with ``autocommit`` the backend may let each statement commit on its own instead."""

    @abstractmethod
    def _lock_migrations(self, cur: Any) -> None:
        """Serialise concurrent ``migrate()`` calls (several workers starting at once)."""

    @property
    @abstractmethod
    def _errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean the database failed (turned into ``StoreError``)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, without secrets (for logs)."""

    @property
    def _data_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean this data can never be written (turned into ``RecordRejectedError``)."""
        return ()

    def _stream_cursor(self, conn: Any, name: str = "tabserve_export") -> Any:  # noqa: ARG002 - for backends
        return conn.cursor()

    # -- connection management -----------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text.replace("?J", self.json_placeholder).replace("?", self.placeholder)

    def _conn(self) -> Any:
        if self._closed:
            raise StoreError(f"prediction store {self.describe()} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except self._errors as exc:
                raise StoreError(f"cannot connect to the prediction store {self.describe()}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is None:
            return
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            conn.close()
        except self._errors:
            log.debug("closing a failed store connection failed too", exc_info=True)

    def _run(self, what: str, fn: Any, *, write: bool, autocommit: bool = False) -> Any:
        """Run ``fn(cursor)`` in a transaction on this thread's connection (``autocommit``: each statement on
        its own, where the backend allows it); DB failures -> StoreError."""
        if not self._migrated and what != "migrate":
            self.migrate()
        conn = self._conn()
        try:
            with self._transaction(conn, write=write, autocommit=autocommit) as cur:
                return fn(cur)
        except (OverflowError, ValueError, TypeError) as exc:  # a value the driver cannot even bind
            raise RecordRejectedError(f"prediction store {self.describe()}: {what} cannot bind a value: {exc}") from exc
        except self._data_errors as exc:
            # the database is fine, the data is not: retrying would fail forever (the log isolates the record)
            self._drop()
            raise RecordRejectedError(f"prediction store {self.describe()}: {what} rejected the data: {exc}") from exc
        except self._errors as exc:
            self._drop()
            raise StoreError(f"prediction store {self.describe()}: {what} failed: {exc}") from exc

    # -- PredictionStore -----------------------------------------------------------------------------------
    def migrate(self) -> None:
        def apply(cur: Any) -> None:
            self._lock_migrations(cur)
            cur.execute(self.schema_version_ddl)
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            current = int(cur.fetchone()[0])
            for version, statements in self.migrations:
                if version <= current:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute(
                    self._sql("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"), (version, time.time())
                )
                log.info("prediction store %s: applied migration %d", self.describe(), version)

        self._run("migrate", apply, write=True)
        self._migrated = True

    def schema_version(self) -> int:
        def read(cur: Any) -> int:
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            return int(cur.fetchone()[0])

        return int(self._run("schema_version", read, write=False))

    def write(self, records: Sequence[PredictionRecord]) -> None:
        self.write_rows([record_row(r) for r in records])

    def write_rows(self, rows: Sequence[LogEntry]) -> None:
        """``write`` for rows already encoded, and batches (what ``PredictionLog`` hands over): one transaction,
        or one statement per chunk of rows and per batch (``autocommit_inserts``)."""
        if rows:
            self._run("write", lambda cur: self._insert(cur, rows), write=True, autocommit=self.autocommit_inserts)

    def _insert(self, cur: Any, entries: Sequence[LogEntry]) -> None:
        batches = [e for e in entries if type(e) is LogBatch]
        if not batches:
            self._insert_rows(cur, entries)  # type: ignore[arg-type]  # rows only
            return
        rows: list[LogRow] = [e for e in entries if type(e) is not LogBatch]  # type: ignore[misc]
        if rows:
            self._insert_rows(cur, rows)
        self._insert_batches(cur, batches)

    def _insert_rows(self, cur: Any, rows: Sequence[LogRow]) -> None:
        """Insert-or-ignore ``rows`` (in ``PREDICTION_COLUMNS`` order).

        Many rows per statement (``VALUES (...), (...), ...``), in chunks of ``_chunk_rows``. A shorter last
        chunk is padded to the next power of two with repeats of its last row, which the unique key ignores:
        so a batch is one statement, whatever its length, and only a few sizes are ever prepared (the driver
        caches them). ``executemany`` would release and retake the GIL around every row's step: the writer
        thread would then wait for the event loop once per row. Here it does so once per chunk, and binds
        every value of a chunk in one C call.
        """
        chunk = self._chunk_rows(cur)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            size = chunk
            while size // 2 >= len(part):
                size //= 2
            params = list(chain.from_iterable(part))
            if size > len(part):
                params += part[-1] * (size - len(part))
            cur.execute(self._values_sql(size), params)

    def _chunk_rows(self, cur: Any) -> int:  # noqa: ARG002 - backends may ask the connection
        return MAX_CHUNK_ROWS

    def _values_sql(self, rows: int) -> str:
        sql = self._insert_sql.get(rows)
        if sql is None:
            one = "(?, ?, ?, ?, ?, ?J, ?J, ?, ?, ?J, ?J, ?, ?)"
            sql = self._insert_sql[rows] = self._sql(
                f"INSERT INTO predictions ({_COLUMNS}) VALUES {', '.join([one] * rows)} "  # noqa: S608 - constants and placeholders only; values are parameters
                "ON CONFLICT (request_id, idx) DO NOTHING"
            )
        return sql

    def export(self, since: float | None, model: str | None, labelled_only: bool) -> Iterator[dict[str, Any]]:
        where, params = self._filters(since, model)
        batch_where, _ = self._filters(since, model, "b")
        if labelled_only:
            where.append("f.request_id IS NOT NULL")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY p.time, p.request_id, p.idx"
        if not self._migrated:
            self.migrate()
        conn = self._connect_stream()
        try:
            cur = self._stream_cursor(conn)
            cur.execute(self._sql(sql), params)
            batches = self._stream_cursor(conn, "tabserve_export_batches")
            rows = self._export_batches(conn, batches, batch_where, params, labelled_only)
            yield from heapq.merge(_rows_of(cur), rows, key=_export_key)
            cur.close()
            batches.close()
        except self._errors as exc:
            raise StoreError(f"prediction store {self.describe()}: export failed: {exc}") from exc
        finally:
            try:
                conn.close()
            except self._errors:
                log.debug("closing the export connection failed", exc_info=True)

    def _connect_stream(self) -> Any:
        """A private connection for a streaming read (a generator may outlive a thread-local transaction)."""
        try:
            return self._connect()
        except self._errors as exc:
            raise StoreError(f"cannot connect to the prediction store {self.describe()}: {exc}") from exc

    def _filters(self, since: float | None, model: str | None, alias: str = "p") -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append(f"{alias}.time >= ?")
            params.append(float(since))
        if model is not None:
            where.append(f"{alias}.model = ?")
            params.append(model)
        return where, params

    def recent_inputs(self, model: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        where, params = self._filters(since, model)
        batch_where, _ = self._filters(since, model, "b")
        condition = " AND ".join(where)  # fixed fragments with placeholders only: values are parameters
        sql = self._sql(f"SELECT p.time, p.inputs FROM predictions p WHERE {condition} ORDER BY p.time DESC LIMIT ?")  # noqa: S608 - fixed fragments (see above), values are parameters
        wanted = max(0, int(limit))

        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute(sql, (*params, wanted))
            newest = [(float(row[0]), _json(row[1])) for row in cur.fetchall()]
            newest += self._recent_batch_inputs(cur, batch_where, params, wanted)
            newest.sort(key=lambda pair: pair[0], reverse=True)  # stable: a batch's rows keep their order
            return [values for _, values in newest[:wanted]][::-1]

        result: list[dict[str, Any]] = self._run("recent_inputs", read, write=False)
        return result

    def prune(self, older_than: float) -> int:
        """Model by model, so that the ``(model, time)`` index finds the rows (SQLite has no index on time
        alone); the models come from the same index, one seek each."""

        def delete(cur: Any) -> int:
            cutoff = float(older_than)
            cur.execute(_MODELS)
            models = [row[0] for row in cur.fetchall()]
            cur.execute(
                self._sql(
                    "DELETE FROM feedback WHERE EXISTS (SELECT 1 FROM predictions p WHERE p.request_id = "
                    "feedback.request_id AND p.idx = feedback.idx AND p.time < ?)"
                ),
                (cutoff,),
            )
            deleted = 0
            for model in models:
                cur.execute(self._sql("DELETE FROM predictions WHERE model = ? AND time < ?"), (model, cutoff))
                deleted += int(cur.rowcount)
            return deleted + self._prune_batches(cur, cutoff)

        deleted: int = self._run("prune", delete, write=True)
        return deleted

    def count(self, model: str | None = None) -> int:
        def read(cur: Any) -> int:
            if model is None:
                cur.execute("SELECT COUNT(*) FROM predictions")
            else:
                cur.execute(self._sql("SELECT COUNT(*) FROM predictions WHERE model = ?"), (model,))
            return int(cur.fetchone()[0]) + self._count_batch_rows(cur, model)

        counted: int = self._run("count", read, write=False)
        return counted

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except self._errors:
                log.debug("closing a store connection failed", exc_info=True)
