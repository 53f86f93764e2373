"""``PostgresStore``: the prediction log in PostgreSQL (psycopg 3) for several instances sharing one log.

Same schema semantics as SQLite (JSON columns are JSONB here). Connections fail fast (``connect_timeout``)
and statements are bounded (``statement_timeout``) so a slow or unreachable server turns into a
``StoreError`` quickly and the log's writer can spill instead of hanging. An optional ``schema`` keeps
the tables in their own PostgreSQL schema (created by ``migrate``), e.g. one per test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo, sql

from tabserve.errors import StoreError
from tabserve.store.batch_queries import BATCHES_DDL_POSTGRES, BATCHES_INDEX
from tabserve.store.columnar import LogBatch
from tabserve.store.coverage import COUNTS_DDL, FEEDBACK_TIME_INDEX
from tabserve.store.record import LogRow
from tabserve.store.sql import PREDICTION_COLUMNS, Migration, SqlStore

_DROP_FEEDBACK_FOREIGN_KEYS = """DO $$
DECLARE constraint_name text;
BEGIN
    FOR constraint_name IN
        SELECT conname FROM pg_constraint WHERE conrelid = 'feedback'::regclass AND contype = 'f'
    LOOP
        EXECUTE format('ALTER TABLE feedback DROP CONSTRAINT %I', constraint_name);
    END LOOP;
END $$"""

MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        (
            """CREATE TABLE predictions (
                request_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                time DOUBLE PRECISION NOT NULL,
                model TEXT NOT NULL,
                model_version TEXT NOT NULL,
                inputs_raw JSONB NOT NULL,
                inputs JSONB NOT NULL,
                prediction_value DOUBLE PRECISION,
                prediction_label TEXT,
                output JSONB NOT NULL,
                warnings JSONB NOT NULL,
                out_of_distribution BOOLEAN NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (request_id, idx)
            )""",
            "CREATE INDEX predictions_model_time ON predictions (model, time)",
            "CREATE INDEX predictions_time ON predictions (time)",
            """CREATE TABLE feedback (
                request_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                actual_value DOUBLE PRECISION,
                actual_label TEXT,
                time DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (request_id, idx),
                FOREIGN KEY (request_id, idx) REFERENCES predictions (request_id, idx) ON DELETE CASCADE
            )""",
        ),
    ),
    # Coverage monitoring (version 3 as in SQLite, whose 2 only dropped an index this schema still has).
    (3, (FEEDBACK_TIME_INDEX, COUNTS_DDL)),
    # Batch requests as one columnar record each (store/columnar.py); feedback may be for a row of a batch, so its
    # foreign key to predictions is dropped (whatever PostgreSQL named it). Retention deletes feedback itself.
    (4, (BATCHES_DDL_POSTGRES, BATCHES_INDEX, _DROP_FEEDBACK_FOREIGN_KEYS)),
)
_MIGRATION_LOCK = 7_402_611_913  # pg_advisory_xact_lock key: "tabserve migrations"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresStore(SqlStore):
    """Prediction log in PostgreSQL at ``url`` (``postgresql://user@host:port/db``)."""

    placeholder = "%s"
    json_placeholder = "%s::jsonb"
    migrations = MIGRATIONS
    schema_version_ddl = (
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)"
    )

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        connect_timeout_s: int = 3,
        statement_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise StoreError(f"bad PostgreSQL schema name {schema!r}")
        self.url = url
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s

    @property
    def _errors(self) -> tuple[type[BaseException], ...]:
        return (psycopg.Error,)

    @property
    def _data_errors(self) -> tuple[type[BaseException], ...]:
        return (psycopg.DataError, psycopg.IntegrityError)

    def describe(self) -> str:
        try:
            info = conninfo.conninfo_to_dict(self.url)
        except psycopg.Error:
            return "postgresql:(unparsable url)"
        where = f"postgresql://{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        return where + (f" schema {self.schema}" if self.schema else "")

    def _connect(self) -> psycopg.Connection[Any]:
        options = f"-c statement_timeout={int(self.statement_timeout_s * 1000)}"
        from_url = conninfo.conninfo_to_dict(self.url).get("options")
        if from_url:  # e.g. ?options=-csearch_path%3Dmyschema in TABSERVE_STORE_URL: keep it
            options = f"{from_url} {options}"
        if self.schema:
            options += f" -c search_path={self.schema}"
        return psycopg.connect(
            self.url,
            connect_timeout=self.connect_timeout_s,
            options=options,
            application_name="tabserve-prediction-log",
        )

    @contextmanager
    def _transaction(self, conn: Any, *, write: bool, autocommit: bool = False) -> Iterator[Any]:  # noqa: ARG002
        """One transaction whatever ``write`` and ``autocommit`` say (COPY + insert must commit together)."""
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def _insert_rows(self, cur: Any, rows: Sequence[LogRow]) -> None:
        """COPY into a per-connection temporary table, then one insert-or-ignore: several times faster
        than row-by-row inserts, same semantics (an existing ``(request_id, idx)`` is skipped)."""
        cur.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS tabserve_incoming "
            "(LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY tabserve_incoming ({PREDICTION_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(_without_nul(row))
        cur.execute(
            f"INSERT INTO predictions ({PREDICTION_COLUMNS}) SELECT {PREDICTION_COLUMNS} FROM tabserve_incoming "  # noqa: S608 - the column list is a module constant, no input
            "ON CONFLICT (request_id, idx) DO NOTHING"
        )

    def _batch_params(self, batch: LogBatch) -> tuple[Any, ...]:
        return _without_nul(batch.params())

    def _lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        if self.schema:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))

    def _stream_cursor(self, conn: Any, name: str = "tabserve_export") -> Any:
        # a server-side cursor: rows arrive in fetchmany() chunks instead of all at once
        return conn.cursor(name=name)

    def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (tests; never the default schema)."""
        if not self.schema:
            raise StoreError("drop_schema needs a dedicated schema")
        self._run(
            "drop schema",
            lambda cur: cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))),
            write=True,
        )


def _without_nul(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """PostgreSQL text and JSONB cannot hold U+0000: replace it with U+FFFD instead of losing the record."""
    if not any(isinstance(v, str) and ("\x00" in v or "\\u0000" in v) for v in row):
        return row
    return tuple(v.replace("\x00", "\ufffd").replace("\\u0000", "\\ufffd") if isinstance(v, str) else v for v in row)
