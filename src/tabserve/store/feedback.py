"""Feedback: attaching the true answer to one logged row, in ``predictions`` or in a logged batch.

The rules (both backends): an unknown request id or row is ``NotFoundError``; ``index=None`` means the request's
only row (``BadRequestError`` when it has several); a second, different answer is ``ConflictError``; the same
answer again is an idempotent repeat; an answer of the wrong kind (a number for a classifier's row, a label for a
regression's) is ``BadRequestError``. A row served with an adaptive level also counts in ``coverage_counts``,
in the feedback's own transaction. Mixed into ``SqlStore``.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from typing import Any

from tabserve.errors import BadRequestError, ConflictError, NotFoundError
from tabserve.store.base import FeedbackResult
from tabserve.store.batch_queries import LoggedRow
from tabserve.store.coverage import Served
from tabserve.store.record import join_value, split_value


class FeedbackQueries:
    """The feedback part of ``SqlStore`` (see the module docstring)."""

    @abstractmethod
    def _run(self, what: str, fn: Any, *, write: bool, autocommit: bool = False) -> Any: ...

    @abstractmethod
    def _sql(self, text: str) -> str: ...

    @abstractmethod
    def _count_served(self, cur: Any, model: str, version: str, output: Any, actual: float | str) -> Served | None: ...

    @abstractmethod
    def _logged_batch_row(
        self, cur: Any, request_id: str, index: int | None
    ) -> tuple[int, LoggedRow | None] | None: ...

    def attach_feedback(self, request_id: str, index: int | None, actual: float | str) -> FeedbackResult:
        value, label = split_value(actual)
        if value is not None and not math.isfinite(value):  # NaN would break idempotency (NaN != NaN)
            raise BadRequestError("feedback actual must be a finite number or a label")

        def attach(cur: Any) -> FeedbackResult:
            row = self._logged_row(cur, request_id, index)
            idx = int(row[0])
            _check_kind(request_id, row, value, label)
            cur.execute(
                self._sql(
                    "INSERT INTO feedback (request_id, idx, actual_value, actual_label, time) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (request_id, idx) DO NOTHING"
                ),
                (request_id, idx, value, label, time.time()),
            )
            created = cur.rowcount == 1
            if created:
                self._count_served(cur, row[1], row[2], row[5], join_value(value, label))  # type: ignore[arg-type]
            else:
                cur.execute(
                    self._sql("SELECT actual_value, actual_label FROM feedback WHERE request_id = ? AND idx = ?"),
                    (request_id, idx),
                )
                old = join_value(*cur.fetchone())
                if type(old) is not type(join_value(value, label)) or old != join_value(value, label):
                    raise ConflictError(
                        f"request {request_id!r} row {idx} already has a different answer ({old!r}); "
                        "feedback cannot be changed"
                    )
            return FeedbackResult(
                request_id=request_id,
                index=idx,
                actual=actual if isinstance(actual, str) else float(actual),
                created=created,
                model=row[1],
                model_version=row[2],
                prediction=join_value(row[3], row[4]),
            )

        result: FeedbackResult = self._run("feedback", attach, write=True)
        return result

    def _logged_row(self, cur: Any, request_id: str, index: int | None) -> LoggedRow:
        """The logged row feedback is for, from ``predictions`` or from a logged batch; the domain error else."""
        cur.execute(
            self._sql(
                "SELECT idx, model, model_version, prediction_value, prediction_label, output FROM predictions "
                "WHERE request_id = ? ORDER BY idx"
            ),
            (request_id,),
        )
        rows = cur.fetchall()
        picked: LoggedRow | None
        if rows:
            count = len(rows)
            picked = rows[0] if index is None else next((r for r in rows if int(r[0]) == index), None)
        else:
            batch = self._logged_batch_row(cur, request_id, index)
            if batch is None:
                raise NotFoundError(f"no logged prediction with request id {request_id!r}")
            count, picked = batch
        if index is None and count > 1:
            raise BadRequestError(f"request {request_id!r} has {count} rows: give the row index")
        if picked is None:
            raise NotFoundError(f"request {request_id!r} has no row {index} (it has {count} rows)")
        return picked


def _check_kind(request_id: str, row: LoggedRow, value: float | None, label: str | None) -> None:
    """The answer must be of the prediction's kind: a class label for a classifier's row, a number for a
    regression's (a wrong kind would enter the retraining data and the realised coverage unnoticed)."""
    where = f"request {request_id!r} row {row[0]} ({row[1]} {row[2]})"
    if row[4] is not None and label is None:
        raise BadRequestError(f"{where} is a classification: actual must be a class label (a string), not {value!r}")
    if row[4] is None and row[3] is not None and value is None:
        raise BadRequestError(f"{where} is a regression: actual must be a number, not {label!r}")
