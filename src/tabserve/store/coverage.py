"""What the prediction log knows about coverage: the served interval / prediction set of a logged row judged
against its feedback, the labelled window query, and the adaptive-conformal counts kept per served key.

The log row's ``output`` records what was served: ``{"interval": {"level", "lower", "upper"[, "effective_level"]},
"pattern"}`` (regression) or ``{"probabilities", "prediction_set", "level", "pattern"[, "effective_level"]}``
(classification). Rows logged before the pattern was recorded have no ``pattern`` (reported as ``""``).

``CoverageQueries`` is mixed into ``SqlStore``: the same SQL for SQLite and PostgreSQL. The counts table
(``coverage_counts``: served rows with feedback and their misses, per model, version, level and pattern, only
for rows served with an adaptive level) is updated in the feedback's own transaction, so every worker and
instance sharing the store sees one exact total (additions commute: no order, no lost update).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from tabserve.store.record import loads_json

ServedKey = tuple[str, float, str]
"""``(model_version, level, pattern)``."""


@dataclass(frozen=True, slots=True)
class Served:
    """The served answer of one logged row, as far as coverage is concerned."""

    level: float
    pattern: str
    effective_level: float | None
    lower: float | None = None
    upper: float | None = None
    prediction_set: tuple[str, ...] | None = None

    def covers(self, actual: float | str) -> bool:
        """Whether the true answer is inside what was served (an interval is closed at both ends)."""
        if self.prediction_set is not None:
            return str(actual) in self.prediction_set
        if isinstance(actual, str) or self.lower is None or self.upper is None:
            return False
        return self.lower <= float(actual) <= self.upper


def served(output: Any) -> Served | None:
    """The served interval / set of a logged ``output`` (JSON text or decoded), None when it has none."""
    try:
        data = loads_json(output) if isinstance(output, str | bytes) else output
    except ValueError:  # not JSON: a row some other writer put there; it simply has no served interval
        return None
    if not isinstance(data, dict):
        return None
    pattern = str(data.get("pattern", ""))
    interval = data.get("interval")
    if isinstance(interval, dict) and _number(interval.get("level")) is not None:
        lower, upper = _number(interval.get("lower")), _number(interval.get("upper"))
        if lower is None or upper is None:
            return None
        effective = _number(interval.get("effective_level"))
        return Served(float(interval["level"]), pattern, effective, lower=lower, upper=upper)
    chosen = data.get("prediction_set")
    level = _number(data.get("level"))
    if isinstance(chosen, list) and level is not None:
        effective = _number(data.get("effective_level"))
        return Served(level, pattern, effective, prediction_set=tuple(str(c) for c in chosen))
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def actual_of(value: float | None, label: str | None) -> float | str | None:
    return label if label is not None else value


WindowRow = tuple[str, Any, float | None, str | None, float]
"""``(model_version, output, actual_value, actual_label, feedback_time)``, newest feedback first."""

_WINDOW = (
    "SELECT p.model_version, p.output, f.actual_value, f.actual_label, f.time FROM feedback f "
    "JOIN predictions p ON p.request_id = f.request_id AND p.idx = f.idx "
    "WHERE p.model = ? AND f.time >= ? ORDER BY f.time DESC LIMIT ?"
)
_COUNT = (
    "INSERT INTO coverage_counts (model, model_version, level, pattern, n, misses) VALUES (?, ?, ?, ?, 1, ?) "
    "ON CONFLICT (model, model_version, level, pattern) DO UPDATE SET "
    "n = coverage_counts.n + 1, misses = coverage_counts.misses + excluded.misses"
)

COUNTS_DDL = (
    "CREATE TABLE coverage_counts (model TEXT NOT NULL, model_version TEXT NOT NULL, level DOUBLE PRECISION NOT NULL, "
    "pattern TEXT NOT NULL, n BIGINT NOT NULL, misses BIGINT NOT NULL, "
    "PRIMARY KEY (model, model_version, level, pattern))"
)
FEEDBACK_TIME_INDEX = "CREATE INDEX feedback_time ON feedback (time)"
"""The window reads feedback newest first: without it, every read scans the whole feedback table."""


class CoverageQueries:
    """The coverage part of ``SqlStore`` (see the module docstring)."""

    @abstractmethod
    def _run(self, what: str, fn: Any, *, write: bool, autocommit: bool = False) -> Any: ...

    @abstractmethod
    def _sql(self, text: str) -> str: ...

    @abstractmethod
    def _batch_window(self, cur: Any, model: str, since: float, limit: int) -> list[WindowRow]: ...

    def labelled_window(self, model: str, since: float, limit: int) -> list[WindowRow]:
        """Served outputs of ``model`` joined with feedback received at ``since`` or later, newest feedback
        first, at most ``limit`` rows."""
        sql = self._sql(_WINDOW)

        def read(cur: Any) -> list[WindowRow]:
            cur.execute(sql, (model, float(since), max(0, int(limit))))
            rows: list[WindowRow] = [(str(r[0]), r[1], r[2], r[3], float(r[4])) for r in cur.fetchall()]
            rows += self._batch_window(cur, model, since, limit)
            rows.sort(key=lambda row: row[4], reverse=True)
            return rows[: max(0, int(limit))]

        rows: list[WindowRow] = self._run("labelled_window", read, write=False)
        return rows

    def latest_feedback_time(self) -> float | None:
        """When the newest feedback (any model) was received: one index seek. Unchanged means no report needs
        computing again."""

        def read(cur: Any) -> float | None:
            cur.execute("SELECT MAX(time) FROM feedback")
            value = cur.fetchone()[0]
            return None if value is None else float(value)

        latest: float | None = self._run("latest_feedback_time", read, write=False)
        return latest

    def adaptive_counts(self, model: str) -> dict[ServedKey, tuple[int, int]]:
        """``(version, level, pattern) -> (n, misses)`` of the rows of ``model`` served with an adaptive level
        that have feedback (what adaptive conformal inference integrates)."""
        sql = self._sql("SELECT model_version, level, pattern, n, misses FROM coverage_counts WHERE model = ?")

        def read(cur: Any) -> dict[ServedKey, tuple[int, int]]:
            cur.execute(sql, (model,))
            return {(str(v), float(lv), str(p)): (int(n), int(m)) for v, lv, p, n, m in cur.fetchall()}

        counts: dict[ServedKey, tuple[int, int]] = self._run("adaptive_counts", read, write=False)
        return counts

    def _count_served(self, cur: Any, model: str, version: str, output: Any, actual: float | str) -> Served | None:
        """In the feedback's transaction: add the row to ``coverage_counts`` when it was served adaptively."""
        answer = served(output)
        if answer is not None and answer.effective_level is not None:
            miss = 0 if answer.covers(actual) else 1
            cur.execute(self._sql(_COUNT), (model, version, answer.level, answer.pattern, miss))
        return answer
