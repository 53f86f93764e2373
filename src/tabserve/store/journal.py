"""``Journal``: the records a worker has answered for but not yet stored, kept where a SIGKILL cannot take them.

The prediction log answers before it stores (``store.log``): its queue lives in the worker's memory, so a
worker killed with SIGKILL (the OOM killer, a supervisor's timeout, ``kill -9``) would lose about the last
flush interval of its traffic. The journal closes that gap without putting the database on the request path:

- the request path appends each entry's line (a row: its ``LogRow`` tuple as a JSON array, one
  ``orjson.dumps``; a batch: its spill line) to the current segment with one ``write``, no fsync. What a
  killed process wrote is in the kernel's page cache and reaches the file; a machine crash is the database's
  and the fsynced spill's business, as before.
- the writer thread rotates the segment each time it takes a batch (``rotate``: the segment is closed with the
  count of records accepted so far as its mark) and deletes a closed segment once that many records are in the
  database or the spill (``release``). A clean close deletes every segment.
- a process that claims a spill slot (``SpillFile.open``) owns what a dead process left in that slot:
  ``recover`` moves its segments into the spill (fsynced) before the writer starts, and the writer's normal
  replay stores them. Records the dead process had stored already are ignored by the store's unique keys
  (``(request_id, idx)``, a batch's ``request_id``): nothing lost, nothing doubled.

Segments are ``<spill stem>.journal.<n>.jsonl`` next to the slot's spill file. A journal that cannot be
written (disk full) is one ERROR line; the log goes on without it and journaling resumes at the next rotation
that can open a segment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import orjson

from tabserve.errors import StoreError
from tabserve.store.columnar import LogBatch, LogEntry, batch_line, count_rows, entry_from_json
from tabserve.store.record import LogRow, row_line

log = logging.getLogger("tabserve.store")
ROW_FIELDS = 13
"""Fields of a ``LogRow``."""


class Journal:
    """One spill slot's journal segments. ``append`` and ``rotate`` are called with the log's lock held."""

    def __init__(self, spill_path: Path) -> None:
        self.spill_path = spill_path
        self._pattern = re.compile(re.escape(spill_path.stem) + r"\.journal\.(\d+)\.jsonl")
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = False
        self._seq = 0
        self._closed: deque[tuple[int, Path]] = deque()
        """Rotated segments, oldest first, each with the count of records accepted when it was closed."""
        self._failing = False

    def leftovers(self) -> list[Path]:
        """Segments in this slot's folder, oldest first (left by a process that died holding the slot)."""
        try:
            paths = list(self.spill_path.parent.iterdir())
        except OSError as exc:
            raise StoreError(f"cannot list the journal folder {self.spill_path.parent}: {exc}") from exc
        found = [(int(m.group(1)), path) for path in paths if (m := self._pattern.fullmatch(path.name))]
        return [path for _, path in sorted(found)]

    def recover(self, into: SpillTarget) -> int:
        """Move leftover segments into the spill (``into.append`` fsyncs), then delete them; the rows moved."""
        moved = 0
        for path in self.leftovers():
            entries = list(read_journal(path))
            if entries:
                into.append(entries)
                moved += count_rows(entries)
            path.unlink(missing_ok=True)
        if moved:
            log.warning("prediction log: %d records journaled by a process that died unflushed will be replayed", moved)
        return moved

    def open(self) -> None:
        """Start the first segment (after ``recover``; numbered past any segment still there)."""
        kept = [int(m.group(1)) for path in self.leftovers() if (m := self._pattern.fullmatch(path.name))]
        self._seq = max(kept, default=0)
        self._open_segment()

    @property
    def active(self) -> bool:
        """A segment is open for appends (False while the folder cannot be written)."""
        return self._fd is not None

    # -- request path (log lock held) ------------------------------------------------------------------
    def append(self, line: bytes) -> None:
        """One entry's line into the current segment (page cache only)."""
        fd = self._fd
        if fd is None:
            return
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:  # the segment may end in a torn line now: no more appends to it
            self._close_fd()
            self._report(exc)
            return
        self._written = True

    # -- writer thread ----------------------------------------------------------------------------------
    def rotate(self, accepted: int) -> None:
        """Close the current segment with ``accepted`` (records accepted so far) as its mark and start a new one
        (log lock held). A segment a failed write closed is marked here too; a failed open is retried here."""
        if self._path is not None and (self._written or self._fd is None):
            self._close_fd()
            self._closed.append((accepted, self._path))
            self._path = None
        if self._fd is None:
            self._open_segment()

    def release(self, handled: int) -> None:
        """Delete the closed segments whose every record is stored or spilled (writer thread, no lock)."""
        while self._closed and self._closed[0][0] <= handled:
            _, path = self._closed.popleft()
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("prediction log: cannot delete the journal segment %s: %s", path, exc)

    def close(self, *, clean: bool) -> None:
        """Stop journaling; after a clean close every record is stored or spilled, so every segment goes.
        Otherwise the segments stay for the next process in this slot to ``recover``."""
        self._close_fd()
        if clean:
            paths = [path for _, path in self._closed]
            if self._path is not None:
                paths.append(self._path)
            for path in paths:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            self._closed.clear()
        self._path = None

    # -- internals --------------------------------------------------------------------------------------
    def _open_segment(self) -> None:
        self._seq += 1
        path = self.spill_path.with_name(f"{self.spill_path.stem}.journal.{self._seq}.jsonl")
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            self._report(exc)
            return
        self._path = path
        self._written = False
        if self._failing:
            self._failing = False
            log.warning("prediction log: journaling again in %s", path)

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _report(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "prediction log: the journal next to %s cannot be written (%s): until it can, a SIGKILL "
                "loses the records still queued",
                self.spill_path,
                exc,
            )


class SpillTarget(Protocol):
    """What ``Journal.recover`` writes into (``SpillFile``): an fsynced append of entries."""

    def append(self, records: Sequence[LogEntry]) -> None: ...


def entry_line(entry: list[LogRow] | LogEntry) -> bytes:
    """A queued entry's journal bytes: a row as its ``LogRow`` tuple in a JSON array (one ``orjson.dumps``, its
    JSON columns already text), a batch as its spill line (``batch_line``)."""
    if isinstance(entry, list):
        return b"".join([_row_line(row) for row in entry])
    if type(entry) is LogBatch:
        return batch_line(entry)
    return _row_line(entry)  # type: ignore[arg-type]  # a LogRow (``type() is`` does not narrow)


def _row_line(row: LogRow) -> bytes:
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:  # a value plain JSON cannot hold: the spill's careful line
        return row_line(row)


def read_journal(path: Path) -> Iterator[LogEntry]:
    """A segment's entries in order: ``[...]`` lines are rows, others spill lines; a torn last line (the process
    died mid-write: never acknowledged) and a bad line are logged and skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read the journal segment {path}: {exc}") from exc
    lines = data.split(b"\n")
    if lines[-1]:
        log.error("journal segment %s: ignoring a torn last line (%d bytes)", path, len(lines[-1]))
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
            if isinstance(value, list):
                if len(value) != ROW_FIELDS:
                    raise StoreError(f"a row has {ROW_FIELDS} fields, not {len(value)}")
                yield tuple(value)  # the LogRow it was written from
            else:
                yield entry_from_json(value)
        except (orjson.JSONDecodeError, StoreError) as exc:
            log.error("journal segment %s line %d is not a record, skipped: %s", path, number, exc)
