"""The ``PredictionStore`` protocol (what a prediction-log database must do), feedback results, and
``open_store`` which picks the backend from a URL: SQLite (default, a file under the data dir) or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from tabserve.errors import StoreError
from tabserve.store.columnar import LogEntry
from tabserve.store.coverage import ServedKey, WindowRow
from tabserve.store.record import PredictionRecord

DEFAULT_SQLITE_FILE = "predictions.sqlite"


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """The outcome of attaching a ground-truth answer to a logged prediction."""

    request_id: str
    index: int
    actual: float | str
    created: bool
    """False when the same answer had already been recorded (an idempotent repeat)."""
    model: str
    model_version: str
    prediction: float | str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "index": self.index,
            "actual": self.actual,
            "created": self.created,
            "model": self.model,
            "model_version": self.model_version,
            "prediction": self.prediction,
        }


@runtime_checkable
class PredictionStore(Protocol):
    """A prediction-log database. Every method raises ``StoreError`` when the database cannot be reached.

    ``write`` is called from one writer thread; the other methods may be called from any thread
    (implementations keep one connection per thread).
    """

    def migrate(self) -> None:
        """Apply the versioned migrations not yet applied (``schema_version`` table); idempotent."""

    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Insert the records in one transaction; a ``(request_id, index)`` already present is skipped."""

    def write_rows(self, rows: Sequence[LogEntry]) -> None:
        """``write`` for rows already encoded (``record.record_row``) and batches (``columnar.LogBatch``): what
        the log's writer thread calls. A batch whose request id is already logged is skipped."""

    def attach_feedback(self, request_id: str, index: int | None, actual: float | str) -> FeedbackResult:
        """Record the true answer. ``index=None`` means the request's only row.

        Raises ``NotFoundError`` for an unknown id/index, ``ConflictError`` for a second, different
        answer, ``BadRequestError`` when ``index`` is None and the request has several rows.
        """
        ...

    def export(self, since: float | None, model: str | None, labelled_only: bool) -> Iterator[dict[str, Any]]:
        """Logged rows (oldest first) joined with their feedback: the record's fields + ``actual`` and
        ``feedback_time`` (None when unlabelled). Streams: rows are not all held in memory."""
        ...

    def recent_inputs(self, model: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        """The normalised inputs of the newest ``limit`` rows of ``model`` (oldest first), for drift."""
        ...

    def labelled_window(self, model: str, since: float, limit: int) -> list[WindowRow]:
        """Served outputs of ``model`` with feedback received at ``since`` or later, newest feedback first
        (``store.coverage``: what the coverage monitor counts)."""
        ...

    def latest_feedback_time(self) -> float | None:
        """When the newest feedback was received (unix s), None without any."""
        ...

    def adaptive_counts(self, model: str) -> dict[ServedKey, tuple[int, int]]:
        """``(version, level, pattern) -> (n, misses)`` of rows served adaptively that have feedback."""
        ...

    def prune(self, older_than: float) -> int:
        """Delete rows (and their feedback) logged before ``older_than`` (unix s); returns rows deleted."""
        ...

    def count(self, model: str | None = None) -> int: ...

    def close(self) -> None: ...


def open_store(url_or_path: str, data_dir: Path) -> PredictionStore:
    """The store for ``TABSERVE_STORE_URL``.

    - ``""`` -> SQLite at ``data_dir/predictions.sqlite`` (the folder is created);
    - ``sqlite:///name.sqlite`` -> SQLite at ``data_dir/name.sqlite``; ``sqlite:////abs/path`` -> that path;
      a bare path is treated the same way (relative paths are under ``data_dir``); ``?synchronous=full``
      after a ``sqlite:///`` URL makes every commit power-safe (default ``normal``: see ``SqliteStore``);
    - ``postgresql://...`` / ``postgres://...`` -> PostgreSQL (psycopg 3).

    Nothing is connected here: migrations run on first use (or call ``migrate()`` to fail fast).
    """
    url = url_or_path.strip()
    if url.startswith(("postgresql://", "postgres://")):
        from tabserve.store.postgres import PostgresStore

        return PostgresStore(url)
    if "://" in url and not url.startswith("sqlite://"):
        scheme = url.split("://", 1)[0]
        raise StoreError(f"unsupported prediction store URL scheme {scheme!r} (use sqlite:/// or postgresql://)")
    from tabserve.store.sqlite import SqliteStore

    path_text = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    if url.startswith("sqlite://") and not url.startswith("sqlite:///"):
        raise StoreError(f"bad SQLite URL {url!r}: use sqlite:///relative/path or sqlite:////absolute/path")
    options: dict[str, str] = {}
    if url.startswith("sqlite:///") and "?" in path_text:
        path_text, query = path_text.split("?", 1)
        options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - {"synchronous"})
    if unknown:
        raise StoreError(f"unknown SQLite URL option(s) {', '.join(unknown)} (supported: synchronous=normal|full)")
    path = Path(path_text) if path_text else Path(DEFAULT_SQLITE_FILE)
    if not path.is_absolute():
        path = data_dir / path
    return SqliteStore(path, synchronous=options.get("synchronous", "normal"))
