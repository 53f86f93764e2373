"""``PredictionLog``: takes records off the request path and gets every one of them into the store.

``submit`` only appends to a bounded in-memory queue (one lock, no I/O); one writer thread drains it in
batches. When the database fails, the writer retries with backoff, then appends the batch to the spill
file (fsync per batch) and probes the database with growing delays; once a write succeeds again the
spill is replayed in order (exactly once: the store ignores an existing ``(request_id, index)``) before
new batches. While anything is spilled, new batches are spilled behind it, so the log keeps its order.
A full queue makes ``submit`` wait for the writer (at most ``max_wait_s``) while the database is
healthy, and write straight to the spill otherwise; a spill that cannot be written is a loud error plus
the ``spill_failed`` metric, never a silent drop. A spill left by an earlier process is
replayed by the writer as soon as it starts. A batch request is one entry (``store.columnar.LogBatch``) all the
way (queue, database, spill), counted as its rows wherever rows are counted. With ``journal`` on (the default),
each queued entry is also written to the slot's journal (``store.journal``: page cache, no fsync), so the rows a
SIGKILLed process had queued are replayed by the next process in its slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from tabserve.errors import NotFoundError, OverloadedError, StoreError
from tabserve.store.base import FeedbackResult, PredictionStore
from tabserve.store.columnar import LogBatch, LogEntry, count_rows, entry_request_id, entry_rows
from tabserve.store.journal import Journal, entry_line
from tabserve.store.observer import CountingObserver, LogObserver
from tabserve.store.record import LogRow, PredictionRecord, record_row
from tabserve.store.spill import SpillFile
from tabserve.store.sql import RecordRejectedError

log = logging.getLogger("tabserve.store")


class PredictionLog:
    """One writer thread; bounded queue; batches; spill; replay. See the module docstring."""

    def __init__(
        self,
        backend: PredictionStore,
        *,
        spill_path: Path,
        queue_size: int = 100_000,
        batch_size: int = 512,
        flush_interval_s: float = 0.2,
        observer: LogObserver | None = None,
        retry_delays_s: Sequence[float] = (0.05, 0.2),
        probe_max_s: float = 5.0,
        max_wait_s: float = 0.25,
        journal: bool = True,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("queue_size and batch_size must be >= 1 and flush_interval_s > 0")
        self.backend = backend
        self.spill = SpillFile(spill_path)
        self.rejects = SpillFile(self.spill.path.with_name(self.spill.path.stem + ".rejected.jsonl"))
        """Records the database refuses outright (bad data, not an outage): kept for inspection, not replayed."""
        self.queue_size = queue_size
        self.batch_size = min(batch_size, queue_size)
        """Never above the queue: a full queue must wake the writer, not wait for its flush timer."""
        self.flush_interval_s = flush_interval_s
        self.observer: LogObserver = observer if observer is not None else CountingObserver()
        self.retry_delays_s = tuple(retry_delays_s)
        self.probe_min_s = self.retry_delays_s[0] if self.retry_delays_s else 0.05
        self.probe_max_s = probe_max_s
        self.max_wait_s = max_wait_s
        """How long ``submit`` waits for room when the queue is full but the database is healthy."""
        self._queue: deque[list[LogRow] | LogEntry] = deque()
        """One entry per hand-over (a request's rows, its only row, or its batch); ``_queued`` counts the rows."""
        self._queued = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # a plain Lock: the request path enters it directly
        self._woken = False
        """The writer was told a batch is ready: no more notifying until it takes one."""
        self._accepted = 0
        self._handled = 0
        self._flush_wanted = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_hand: list[LogEntry] = []
        self._db_ok = True
        self._stalled_at: int | None = None
        """``_handled`` when a wait for room last timed out: no more waiting until the writer gets further."""
        self._probe_delay = self.probe_min_s
        self._next_probe = 0.0
        self._replay_attempts = 0
        self._journal_wanted = journal
        self._journal: Journal | None = None
        """Set by ``start`` (the journal belongs to the spill slot claimed there)."""

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Claim the spill file and start the writer (which first replays any leftover spill)."""
        if self._thread is not None:
            raise RuntimeError("PredictionLog already started")
        self.spill.open()
        self.rejects = SpillFile(self.spill.path.with_name(self.spill.path.stem + ".rejected.jsonl"))
        if self._journal_wanted:
            journal = Journal(self.spill.path)
            try:
                journal.recover(self.spill)
            except StoreError as exc:  # kept on disk for the next start; this process logs without them
                log.error("prediction log: cannot recover the journal next to %s: %s", self.spill.path, exc)
            journal.open()
            self._journal = journal
        if self.spill.pending:
            log.warning(
                "prediction log: %d spilled records in %s will be replayed", self.spill.pending, self.spill.path
            )
        self._thread = threading.Thread(target=self._run, name="tabserve-prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float) -> bool:
        """Flush, then stop the writer. What the database did not take in time is spilled, so a SIGTERM
        never loses records; returns True when everything reached the database or the spill cleanly."""
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(timeout_s * 0.7)
        with self._cond:
            self._stopping.set()
            leftovers: list[LogEntry] = [
                row for entry in self._queue for row in (entry if isinstance(entry, list) else (entry,))
            ]
            self._queue.clear()
            self._queued = 0
            self._handled += count_rows(leftovers)
            if not flushed:
                leftovers = self._in_hand + leftovers  # the writer may be stuck on the DB: spill its batch too
            self._cond.notify_all()
        clean = flushed
        if leftovers:
            clean = self._spill_or_fail(leftovers) and clean
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.error("prediction log writer did not stop within %.1f s (database hanging?)", timeout_s)
                return False
            self._thread = None
        if self._journal is not None:
            self._journal.close(clean=clean)
        self.spill.close()
        return clean

    # -- request path ----------------------------------------------------------------------------------
    def submit(self, records: Sequence[PredictionRecord]) -> None:
        """Hand records to the log: no I/O unless the queue is full (see ``submit_rows``)."""
        self.submit_rows([record_row(r) for r in records])

    def submit_rows(self, rows: list[LogRow]) -> None:
        """``submit`` for rows already encoded (the request path: see ``observe.PredictionObserver``).

        The list is queued as it is (one entry per call, whatever its length): the caller hands it over.
        Never does I/O while there is room. A full queue waits for the writer if the database is healthy
        (``_wait_for_room``), else (or after ``max_wait_s``) the rows are spilled."""
        if rows:
            self._hand_over(rows, len(rows))

    def submit_row(self, row: LogRow) -> None:
        """``submit_rows([row])`` without the list (one tracked object less per request for the GC to count)."""
        self._hand_over(row, 1)

    def submit_batch(self, batch: LogBatch) -> None:
        """A batch request's rows as one columnar record (``store.columnar``): one entry, counted as its rows."""
        self._hand_over(batch, batch.rows)

    def _hand_over(self, entry: list[LogRow] | LogEntry, n: int) -> None:
        journal = self._journal if self._journal is not None and self._journal.active else None
        line = entry_line(entry) if journal is not None else None
        with self._lock:
            if self._stopping.is_set():
                pass
            elif self._queued + n <= self.queue_size or self._wait_for_room(n):
                self._queue.append(entry)
                self._queued += n
                self._accepted += n
                if journal is not None and line is not None:
                    journal.append(line, self._accepted)
                if self._queued >= self.batch_size and not self._woken:
                    self._woken = True
                    self._cond.notify()
                return
        records: list[LogEntry] = list(entry) if isinstance(entry, list) else [entry]
        self._spill_or_fail(records)

    def _wait_for_room(self, n: int) -> bool:
        """Queue full: if the database is healthy the writer is only behind (it shares the core and the GIL
        with the request path), so wait for it, up to ``max_wait_s``, rather than spill. Spilling would
        cost far more: an fsync here, then the writer spills behind it and replays it all. Called with
        ``_cond`` held; the wait releases it (and the GIL). The writer wakes waiters when it has written a
        batch, not when it takes one: while the request path waits, every statement the writer runs gets the
        GIL back at once instead of after the event loop's switch interval (5 ms per statement)."""
        if n > self.queue_size or not self._db_ok or self.spill.pending or not self._writer_alive():
            return False
        if self._stalled_at is not None and self._handled == self._stalled_at:
            return False  # the last wait timed out and the writer has not moved since (a hanging database)
        deadline = time.monotonic() + self.max_wait_s
        self._cond.notify_all()
        while self._queued + n > self.queue_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stalled_at = self._handled
                return False
            if self._stopping.is_set() or not self._db_ok:
                return False
            self._cond.wait(remaining)
        self._stalled_at = None
        return True

    def _writer_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        """Rows waiting for the writer."""
        return self._queued

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted so far is in the database or the spill file."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._accepted
            if self._handled >= target:
                return True
            if self._thread is None or not self._thread.is_alive():
                return False
            self._flush_wanted = True
            self._cond.notify_all()
            while self._handled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def attach_feedback(
        self, request_id: str, index: int | None, actual: float | str, *, timeout_s: float = 2.0
    ) -> FeedbackResult:
        """``store.attach_feedback`` that also finds records still queued or spilled (blocking: call it
        from a worker thread). ``OverloadedError`` when the log cannot catch up within ``timeout_s``."""
        try:
            return self.backend.attach_feedback(request_id, index, actual)
        except NotFoundError:
            if not self.flush(timeout_s):
                raise OverloadedError("the prediction log is behind; retry the feedback shortly") from None
            if self.spill.pending:
                self._replay_now(timeout_s)
            return self.backend.attach_feedback(request_id, index, actual)

    # -- writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + self.flush_interval_s
                while not self._stopping.is_set() and not self._flush_wanted and self._queued < self.batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping.is_set():
                    return
                batch: list[LogEntry] = []
                taken = 0
                queue = self._queue
                while queue and taken < self.batch_size:  # whole entries: a batch may exceed batch_size
                    entry = queue.popleft()
                    if isinstance(entry, list):
                        batch += entry
                        taken += len(entry)
                    else:
                        batch.append(entry)
                        taken += entry_rows(entry)
                self._queued -= taken
                self._woken = False
                self._in_hand = batch
                depth = self._queued
                if self._journal is not None and taken:
                    self._journal.rotate(self._accepted)
            try:
                self.observer.queue_depth(depth)
                self._maybe_replay()
                if batch:
                    self._handle(batch)
            except Exception:  # a bug must not kill the only writer: keep the records and carry on
                log.exception("prediction log writer: unexpected error; spilling the batch")
                if batch:
                    self._spill_or_fail(batch)
            with self._cond:
                self._in_hand = []
                self._handled += taken
                handled = self._handled
                if self._handled >= self._accepted:
                    self._flush_wanted = False
                self._cond.notify_all()
            if self._journal is not None and taken:
                self._journal.release(handled)

    def _handle(self, batch: list[LogEntry]) -> None:
        if self._db_ok and not self.spill.pending:
            if self._write_with_retry(batch):
                self.observer.written(count_rows(batch))
                return
            self._db_ok = False
            self._schedule_probe(grow=False)
        self._spill_or_fail(batch)

    def _write(self, batch: list[LogEntry]) -> None:
        """Write a batch; a record the database refuses (not: cannot take now) goes to the rejects file,
        so one bad value never blocks the log. Raises ``StoreError`` when the database is failing."""
        try:
            self.backend.write_rows(batch)
        except RecordRejectedError:
            rejected: list[LogEntry] = []
            for row in batch:
                try:
                    self.backend.write_rows([row])
                except RecordRejectedError as exc:
                    where = f"batch of {row.rows} rows" if type(row) is LogBatch else f"row {row[1]}"  # type: ignore[index]
                    rid = entry_request_id(row)
                    log.error("prediction log: the database rejects request %s %s: %s", rid, where, exc)
                    rejected.append(row)
            if rejected:
                self._reject(rejected)

    def _reject(self, records: list[LogEntry]) -> None:
        rows = count_rows(records)
        try:
            self.rejects.append(records)
        except StoreError as exc:
            log.error("PREDICTION LOG DATA LOSS: %d rejected records could not be saved: %s", rows, exc)
            self.observer.spill_failed(rows)
            return
        log.error("prediction log: %d rejected records saved to %s for inspection", rows, self.rejects.path)
        counter = getattr(self.observer, "rejected", None)
        if callable(counter):
            counter(rows)

    def _write_with_retry(self, batch: list[LogEntry]) -> bool:
        for attempt in range(len(self.retry_delays_s) + 1):
            try:
                self._write(batch)
            except StoreError as exc:
                if attempt == len(self.retry_delays_s) or self._stopping.is_set():
                    rows = count_rows(batch)
                    log.warning("prediction log: database write failed, spilling %d records: %s", rows, exc)
                    return False
                self._stopping.wait(self.retry_delays_s[attempt])
            else:
                return True
        return False

    def _schedule_probe(self, *, grow: bool) -> None:
        if grow:
            self._probe_delay = min(self.probe_max_s, self._probe_delay * 2)
        self._next_probe = time.monotonic() + self._probe_delay

    def _maybe_replay(self) -> None:
        if not self.spill.pending or (not self._db_ok and time.monotonic() < self._next_probe):
            return
        try:
            path = self.spill.take_for_replay()
            while path is not None:
                replayed = 0
                for chunk in self.spill.read(path, self.batch_size):
                    self._write(chunk)
                    replayed += count_rows(chunk)
                self.spill.finish_replay(path, replayed)
                self.observer.replayed(replayed)
                log.info("prediction log: replayed %d spilled records from %s", replayed, path)
                path = self.spill.take_for_replay()
        except StoreError as exc:
            if self._db_ok:
                log.warning("prediction log: replay failed, will retry: %s", exc)
            self._db_ok = False
            self._schedule_probe(grow=True)
        except Exception:
            log.exception("prediction log: replay failed unexpectedly, will retry")
            self._db_ok = False
            self._schedule_probe(grow=True)
        else:
            self._db_ok = True
            self._probe_delay = self.probe_min_s
        finally:
            with self._cond:
                self._replay_attempts += 1
                self._cond.notify_all()

    def _replay_now(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._replay_attempts + 1
            self._next_probe = 0.0
            self._flush_wanted = True
            self._cond.notify_all()
            while self._replay_attempts < target and self.spill.pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _spill_or_fail(self, records: list[LogEntry]) -> bool:
        rows = count_rows(records)
        try:
            self.spill.append(records)
        except Exception as exc:  # whatever the cause: loud, and the writer must live
            log.error(
                "PREDICTION LOG DATA LOSS: %d records could neither be written to the database nor spilled "
                "(first request id %s): %s",
                rows,
                entry_request_id(records[0]),
                exc,
            )
            self.observer.spill_failed(rows)
            return False
        self.observer.spilled(rows)
        return True
