"""The ``prediction_batches`` side of ``SqlStore``: batch requests logged as one columnar record each.

A batch's rows are addressed as ``(request_id, index)`` like the rows of ``predictions``; these queries read
them out of the batch's columns (``store.columnar``) so that feedback, export, drift, coverage, retention and
counts see one log, whichever table a row is in. The same SQL for SQLite and PostgreSQL; mixed into ``SqlStore``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from tabserve.store.columnar import BATCH_COLUMNS, BatchAnswersView, LogBatch, column_rows, expand
from tabserve.store.record import join_value, split_value

BATCHES_DDL_SQLITE = (
    "CREATE TABLE prediction_batches (request_id TEXT NOT NULL PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL, "
    "model_version TEXT NOT NULL, rows INTEGER NOT NULL, inputs_raw TEXT NOT NULL, inputs TEXT NOT NULL, "
    "answers TEXT NOT NULL, latency_ms REAL NOT NULL)"
)
BATCHES_DDL_POSTGRES = (
    "CREATE TABLE prediction_batches (request_id TEXT NOT NULL PRIMARY KEY, time DOUBLE PRECISION NOT NULL, "
    "model TEXT NOT NULL, model_version TEXT NOT NULL, rows INTEGER NOT NULL, inputs_raw JSONB NOT NULL, "
    "inputs JSONB NOT NULL, answers JSONB NOT NULL, latency_ms DOUBLE PRECISION NOT NULL)"
)
BATCHES_INDEX = "CREATE INDEX prediction_batches_model_time ON prediction_batches (model, time)"
_INSERT = (
    f"INSERT INTO prediction_batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?J, ?J, ?J, ?) "  # noqa: S608 - constants only
    "ON CONFLICT (request_id) DO NOTHING"
)
_MODELS = (
    "WITH RECURSIVE m(model) AS (SELECT MIN(model) FROM prediction_batches UNION ALL "
    "SELECT (SELECT MIN(model) FROM prediction_batches WHERE model > m.model) FROM m WHERE m.model IS NOT NULL) "
    "SELECT model FROM m WHERE model IS NOT NULL"
)
_WINDOW = (
    "SELECT b.model_version, f.request_id, f.idx, f.actual_value, f.actual_label, f.time FROM feedback f "
    "JOIN prediction_batches b ON b.request_id = f.request_id WHERE b.model = ? AND f.time >= ? "
    "ORDER BY f.time DESC LIMIT ?"
)
_IN_CHUNK = 500

BatchWindowRow = tuple[str, Any, float | None, str | None, float]
LoggedRow = tuple[int, str, str, float | None, str | None, Any]
"""``(idx, model, model_version, prediction_value, prediction_label, output)`` of one logged row."""


class BatchQueries:
    """The batch part of ``SqlStore`` (see the module docstring)."""

    @abstractmethod
    def _sql(self, text: str) -> str: ...

    def _batch_params(self, batch: LogBatch) -> tuple[Any, ...]:
        """The values bound for one batch (PostgreSQL replaces characters it cannot store)."""
        return batch.params()

    def _insert_batches(self, cur: Any, batches: list[LogBatch]) -> None:
        """Insert-or-ignore every batch (a request id already logged as a batch is skipped: exactly once)."""
        sql = self._sql(_INSERT)
        for batch in batches:
            cur.execute(sql, self._batch_params(batch))

    def _logged_batch_row(self, cur: Any, request_id: str, index: int | None) -> tuple[int, LoggedRow | None] | None:
        """``(rows in the batch, the row asked for or None)`` when ``request_id`` was logged as a batch, else None.
        ``index=None`` asks for row 0 (the caller refuses it for a batch of several rows)."""
        cur.execute(
            self._sql("SELECT rows, model, model_version, answers FROM prediction_batches WHERE request_id = ?"),
            (request_id,),
        )
        found = cur.fetchone()
        if found is None:
            return None
        count = int(found[0])
        i = 0 if index is None else index
        if not 0 <= i < count:
            return count, None
        view = BatchAnswersView(found[3])
        value, label = split_value(view.prediction(i))
        return count, (i, str(found[1]), str(found[2]), value, label, view.output(i))

    def _export_batches(
        self, conn: Any, cursor: Any, where: list[str], params: list[Any], labelled_only: bool
    ) -> Iterator[dict[str, Any]]:
        """Every row of the logged batches matching the filters, oldest batch first, with its feedback."""
        if labelled_only:
            where = [*where, "EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = b.request_id)"]
        condition = (" WHERE " + " AND ".join(where)) if where else ""
        sql = (
            f"SELECT b.request_id, b.time, b.model, b.model_version, b.rows, b.inputs_raw, b.inputs, b.answers, "  # noqa: S608 - fixed fragments, values are parameters
            f"b.latency_ms FROM prediction_batches b{condition} ORDER BY b.time, b.request_id"
        )
        feedback_sql = self._sql("SELECT idx, actual_value, actual_label, time FROM feedback WHERE request_id = ?")
        cursor.execute(self._sql(sql), params)
        lookup = conn.cursor()
        try:
            while True:
                chunk = cursor.fetchmany(20)
                if not chunk:
                    break
                for found in chunk:
                    lookup.execute(feedback_sql, (found[0],))
                    answers = {int(r[0]): (join_value(r[1], r[2]), float(r[3])) for r in lookup.fetchall()}
                    for row in expand(*found):
                        actual, when = answers.get(row["index"], (None, None))
                        if labelled_only and when is None:
                            continue
                        row["actual"] = actual
                        row["feedback_time"] = when
                        yield row
        finally:
            lookup.close()

    def _recent_batch_inputs(
        self, cur: Any, where: list[str], params: list[Any], limit: int
    ) -> list[tuple[float, dict[str, Any]]]:
        """The normalised inputs of the newest ``limit`` batch rows matching the filters, newest first."""
        condition = " AND ".join(where)
        sql = f"SELECT b.time, b.rows, b.inputs FROM prediction_batches b WHERE {condition} ORDER BY b.time DESC"  # noqa: S608 - fixed fragments, values are parameters
        cur.execute(self._sql(sql), params)
        out: list[tuple[float, dict[str, Any]]] = []
        while len(out) < limit:
            found = cur.fetchone()
            if found is None:
                break
            at = float(found[0])
            out += [(at, values) for values in reversed(column_rows(found[2], int(found[1])))]
        return out[:limit]

    def _batch_window(self, cur: Any, model: str, since: float, limit: int) -> list[BatchWindowRow]:
        """``labelled_window``'s rows that were logged in batches: each row's served output, read from its batch."""
        cur.execute(self._sql(_WINDOW), (model, float(since), max(0, int(limit))))
        labelled = cur.fetchall()
        if not labelled:
            return []
        ids = sorted({str(r[1]) for r in labelled})
        views: dict[str, BatchAnswersView] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            part = ids[start : start + _IN_CHUNK]
            marks = ", ".join(["?"] * len(part))
            cur.execute(
                self._sql(f"SELECT request_id, answers FROM prediction_batches WHERE request_id IN ({marks})"),  # noqa: S608 - placeholders only
                part,
            )
            views.update({str(r[0]): BatchAnswersView(r[1]) for r in cur.fetchall()})
        return [
            (str(version), views[str(rid)].output(int(idx)), value, label, float(at))
            for version, rid, idx, value, label, at in labelled
            if str(rid) in views
        ]

    def _prune_batches(self, cur: Any, cutoff: float) -> int:
        """Delete the batches logged before ``cutoff`` and their rows' feedback; the rows deleted."""
        cur.execute(_MODELS)
        models = [row[0] for row in cur.fetchall()]
        cur.execute(
            self._sql(
                "DELETE FROM feedback WHERE EXISTS (SELECT 1 FROM prediction_batches b WHERE b.request_id = "
                "feedback.request_id AND b.time < ?)"
            ),
            (cutoff,),
        )
        deleted = 0
        for model in models:
            cur.execute(
                self._sql("SELECT COALESCE(SUM(rows), 0) FROM prediction_batches WHERE model = ? AND time < ?"),
                (model, cutoff),
            )
            deleted += int(cur.fetchone()[0])
            cur.execute(self._sql("DELETE FROM prediction_batches WHERE model = ? AND time < ?"), (model, cutoff))
        return deleted

    def _count_batch_rows(self, cur: Any, model: str | None) -> int:
        if model is None:
            cur.execute("SELECT COALESCE(SUM(rows), 0) FROM prediction_batches")
        else:
            cur.execute(self._sql("SELECT COALESCE(SUM(rows), 0) FROM prediction_batches WHERE model = ?"), (model,))
        return int(cur.fetchone()[0])
