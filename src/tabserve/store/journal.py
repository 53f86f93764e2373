"""``Journal``: the records a worker has answered for but not yet stored, kept where a SIGKILL cannot take them.

The prediction log answers before it stores (``store.log``): its queue lives in the worker's memory, so a
worker killed with SIGKILL (the OOM killer, a supervisor's timeout, ``kill -9``) would lose about the last
flush interval of its traffic. The journal closes that gap without putting the database on the request path:

- the request path copies each entry's line (a row: its ``LogRow`` tuple as a JSON array, one
  ``orjson.dumps``; a batch: its spill line) into the current segment, a preallocated file mapped shared
  (``mmap``): no system call, so the event loop never gives up the GIL for it (an ``os.write`` per request
  did, and the writer thread kept it for up to a switch interval: 40 % more CPU a request and a growing p99
  in the soak). What a killed process wrote is in the kernel's page cache and reaches the file; a machine
  crash is the database's and the fsynced spill's business, as before (no fsync).
- the writer thread rotates the segment each time it takes a batch (``rotate``: the segment is closed with the
  count of records accepted so far as its mark) and, once that many records are in the database or the spill,
  zeroes it and keeps it for reuse (``release``): a few files, mapped for the process's life, whose pages stay
  allocated (a fresh file per rotation cost a page fault and an extent conversion per 4 KiB). A clean close
  deletes every segment.
- a process that claims a spill slot (``SpillFile.open``) owns what a dead process left in that slot:
  ``recover`` moves its segments into the spill (fsynced) before the writer starts, and the writer's normal
  replay stores them. Records the dead process had stored already are ignored by the store's unique keys
  (``(request_id, idx)``, a batch's ``request_id``): nothing lost, nothing doubled.

Segments are ``<spill stem>.journal.<n>.jsonl`` next to the slot's spill file, ``SEGMENT_BYTES`` each
(``posix_fallocate``d, so a full disk fails the allocation instead of raising SIGBUS on a write); the writer
keeps one free off the request path. A journal that cannot be allocated (disk full) is one ERROR line;
the log goes on without it and journaling resumes at the next rotation that can allocate a segment.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
from collections import deque
from pathlib import Path

import orjson

from tabserve.errors import StoreError
from tabserve.store.columnar import LogBatch, LogEntry, batch_line, count_rows, entry_from_json
from tabserve.store.record import LogRow, row_line
from tabserve.store.spill import SpillFile

log = logging.getLogger("tabserve.store")
ROW_FIELDS = 13
"""Fields of a ``LogRow``."""


SEGMENT_BYTES = 1 << 20
"""A segment's preallocated size (a line longer than that gets a segment of its own size)."""
FREE_SEGMENTS = 2
"""Stored-and-zeroed segments kept for reuse."""
HEADER_KEY = "journal_segment"
"""A segment's first line, ``{"journal_segment": N}``: the N-th segment this process made current."""


class _Segment:
    """A preallocated file mapped shared: an append is a copy into the page cache, with no system call."""

    def __init__(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # blocks reserved now: a full disk is an error here, never a SIGBUS
            self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.path = path
        self.size = size
        self.used = 0
        self.start = 0
        """Where the records begin (after the header line)."""

    def write(self, line: bytes) -> bool:
        end = self.used + len(line)
        if end > self.size:
            return False
        self.map[self.used : end] = line
        self.used = end
        return True

    def reset(self) -> None:
        """Zero what was written (every record in it is stored), for reuse: its pages stay allocated and mapped,
        so the next appends cost no page fault and no new extent."""
        self.map[: self.used] = bytes(self.used)
        self.used = self.start = 0

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.map.close()


class Journal:
    """One spill slot's journal segments. ``append`` and ``rotate`` are called with the log's lock held;
    ``release`` (which also prepares the next segment) by the writer thread without it."""

    def __init__(self, spill_path: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.spill_path = spill_path
        self.segment_bytes = segment_bytes
        self._pattern = re.compile(re.escape(spill_path.stem) + r"\.journal\.(\d+)\.jsonl")
        self._current: _Segment | None = None
        self._free: deque[_Segment] = deque()
        """Zeroed segments ready to be current (deque: the writer adds while the request path may take)."""
        self._seq = 0
        self._closed: deque[tuple[int, _Segment]] = deque()
        """Rotated segments, oldest first, each with the count of records accepted when it was closed."""
        self._failing = False
        self._uses = 0

    def leftovers(self) -> list[Path]:
        """Segments in this slot's folder, oldest first (left by a process that died holding the slot)."""
        try:
            paths = list(self.spill_path.parent.iterdir())
        except OSError as exc:
            raise StoreError(f"cannot list the journal folder {self.spill_path.parent}: {exc}") from exc
        found = [(int(m.group(1)), path) for path in paths if (m := self._pattern.fullmatch(path.name))]
        return [path for _, path in sorted(found)]

    def recover(self, into: SpillFile) -> int:
        """Move leftover segments into the spill (``into.append`` fsyncs), then delete them; the rows moved."""
        moved = 0
        paths = self.leftovers()
        for _, entries in sorted((read_journal(path) for path in paths), key=lambda found: found[0]):
            if entries:
                into.append(entries)
                moved += count_rows(entries)
        for path in paths:
            path.unlink(missing_ok=True)
        if moved:
            log.warning("prediction log: %d records journaled by a process that died unflushed will be replayed", moved)
        return moved

    def open(self) -> None:
        """Start the first segment (after ``recover``; numbered past any segment still there)."""
        kept = [int(m.group(1)) for path in self.leftovers() if (m := self._pattern.fullmatch(path.name))]
        self._seq = max(kept, default=0)
        self._current = self._take(0)
        self.prepare()

    @property
    def active(self) -> bool:
        """A segment is open for appends (False while the folder cannot be written)."""
        return self._current is not None

    # -- request path (log lock held) ------------------------------------------------------------------
    def append(self, line: bytes, accepted: int) -> None:
        """One entry's line into the current segment (a copy into the page cache); a full segment is closed
        with ``accepted`` (records accepted so far, this one included) as its mark."""
        current = self._current
        if current is None or current.write(line):
            return
        self._closed.append((accepted, current))
        self._current = self._take(len(line))
        if self._current is not None:
            self._current.write(line)

    # -- writer thread ----------------------------------------------------------------------------------
    def rotate(self, accepted: int) -> None:
        """Close the current segment with ``accepted`` (records accepted so far) as its mark and start a free one
        (log lock held); a segment that could not be allocated is retried here."""
        current = self._current
        if current is not None and current.used == current.start:
            return
        if current is not None:
            self._closed.append((accepted, current))
        self._current = self._take(0)

    def release(self, handled: int) -> None:
        """Zero the closed segments whose every record is stored or spilled and keep them for reuse (beyond
        ``FREE_SEGMENTS``, or an outsized one: deleted), then make sure one is free (writer thread, no lock)."""
        while self._closed and self._closed[0][0] <= handled:
            _, segment = self._closed.popleft()
            if segment.size == self.segment_bytes and len(self._free) < FREE_SEGMENTS:
                segment.reset()
                self._free.append(segment)
            else:
                self._discard(segment)
        self.prepare()

    def prepare(self) -> None:
        """A free segment for ``rotate`` to take, allocated off the request path."""
        if not self._free:
            segment = self._new_segment(self.segment_bytes)
            if segment is not None:
                self._free.append(segment)

    def close(self, *, clean: bool) -> None:
        """Stop journaling; after a clean close every record is stored or spilled, so every segment goes.
        Otherwise the written segments stay for the next process in this slot to ``recover``."""
        segments = [segment for _, segment in self._closed]
        if self._current is not None:
            segments.append(self._current)
        while self._free:
            self._discard(self._free.popleft())
        for segment in segments:
            if clean or segment.used == segment.start:
                self._discard(segment)
            else:
                segment.close()
        self._closed.clear()
        self._current = None

    # -- internals --------------------------------------------------------------------------------------
    def _take(self, size: int) -> _Segment | None:
        """The next current segment, its header written: a free one that holds ``size`` bytes, else a new one
        (allocated here: on the request path only when the writer has not freed one yet)."""
        self._uses += 1
        header = b'{"%s": %d}\n' % (HEADER_KEY.encode(), self._uses)
        segment: _Segment | None = None
        if size + len(header) <= self.segment_bytes:
            with contextlib.suppress(IndexError):
                segment = self._free.popleft()
        if segment is None:
            segment = self._new_segment(max(self.segment_bytes, size + len(header)))
        if segment is not None:
            segment.write(header)
            segment.start = segment.used
        return segment

    def _new_segment(self, size: int) -> _Segment | None:
        self._seq += 1
        path = self.spill_path.with_name(f"{self.spill_path.stem}.journal.{self._seq}.jsonl")
        try:
            segment = _Segment(path, size)
        except OSError as exc:
            self._report(exc)
            return None
        if self._failing:
            self._failing = False
            log.warning("prediction log: journaling again in %s", path)
        return segment

    @staticmethod
    def _discard(segment: _Segment) -> None:
        segment.close()
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("prediction log: cannot delete the journal segment %s: %s", segment.path, exc)

    def _report(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "prediction log: the journal next to %s cannot be written (%s): until it can, a SIGKILL "
                "loses the records still queued",
                self.spill_path,
                exc,
            )


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


def read_journal(path: Path) -> tuple[int, list[LogEntry]]:
    """A segment's use number (its header line; -1 without one) and its entries in order: ``[...]`` lines are
    rows, others spill lines; a torn last line (the process died mid-write: never acknowledged) and a bad line
    are logged and skipped. Segments are reused, so the use number, not the file name, orders them."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return -1, []
    except OSError as exc:
        raise StoreError(f"cannot read the journal segment {path}: {exc}") from exc
    lines = data.rstrip(b"\0").split(b"\n")  # the unwritten rest of a preallocated segment is zeros
    if lines[-1]:
        log.error("journal segment %s: ignoring a torn last line (%d bytes)", path, len(lines[-1]))
    use = -1
    entries: list[LogEntry] = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
            if isinstance(value, list):
                if len(value) != ROW_FIELDS:
                    raise StoreError(f"a row has {ROW_FIELDS} fields, not {len(value)}")
                entries.append(tuple(value))  # the LogRow it was written from
            elif isinstance(value, dict) and HEADER_KEY in value:
                use = int(value[HEADER_KEY])
            else:
                entries.append(entry_from_json(value))
        except (orjson.JSONDecodeError, StoreError, TypeError, ValueError) as exc:
            log.error("journal segment %s line %d is not a record, skipped: %s", path, number, exc)
    return use, entries
