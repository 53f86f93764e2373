"""``SpillFile``: the local, append-only JSONL file that keeps records the database could not take.

Durability rules:

- ``append`` writes whole lines and fsyncs before returning (one fsync per batch); a torn last line left
  by a crash mid-write is cut off the next time the file is opened for appending.
- ``take_for_replay`` atomically renames the spill file to ``<name>.replaying`` (new spills go to a fresh
  file meanwhile), the caller writes those records to the database, then ``finish_replay`` deletes it.
  A crash between the database write and the delete leaves the ``.replaying`` file behind; it is replayed
  again at the next start, and the database's unique ``(request_id, index)`` with conflicts ignored makes
  that second replay a no-op: nothing lost, nothing doubled.
- ``<name>.lock`` is held (``flock``) for the file's whole life, so two processes never share one spill:
  a second process on the same path takes ``<stem>.1.jsonl``, ``<stem>.2.jsonl``, ... instead.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import orjson

from tabserve.errors import StoreError
from tabserve.store.columnar import LogBatch, LogEntry, batch_line, entry_from_json, entry_rows
from tabserve.store.record import row_line

log = logging.getLogger("tabserve.store")
REPLAYING_SUFFIX = ".replaying"
MAX_SLOTS = 64


class SpillFile:
    """One process's spill file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.requested_path = Path(path)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        self._pending = 0

    # -- ownership ---------------------------------------------------------------------------------------
    def open(self) -> None:
        """Claim the first free slot (``spill.jsonl``, ``spill.1.jsonl``, ...) and count its records."""
        base = self.requested_path
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the spill folder {base.parent}: {exc}") from exc
        for slot in range(MAX_SLOTS):
            path = base if slot == 0 else base.with_name(f"{base.stem}.{slot}{base.suffix}")
            lock_path = path.with_name(path.name + ".lock")
            handle = lock_path.open("ab")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._lock_file = handle
            self.path = path
            self._repair_tail(path)
            self._pending = sum(map(entry_rows, self._iter_file(self.replaying_path))) + sum(
                map(entry_rows, self._iter_file(path))
            )
            return
        raise StoreError(f"no free spill slot next to {base} ({MAX_SLOTS} processes hold one)")

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    @property
    def replaying_path(self) -> Path:
        return self.path.with_name(self.path.name + REPLAYING_SUFFIX)

    @property
    def pending(self) -> int:
        """Records in the spill (including an unfinished replay) not yet confirmed in the database."""
        return self._pending

    # -- writing -----------------------------------------------------------------------------------------
    def append(self, records: Sequence[LogEntry]) -> None:
        """Append and fsync; raises ``StoreError`` if the records could not be made durable."""
        if not records:
            return
        data = b"".join([batch_line(r) if type(r) is LogBatch else row_line(r) for r in records])  # type: ignore[arg-type]
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    start = os.fstat(fd).st_size
                    try:
                        view = memoryview(data)
                        while view:
                            written = os.write(fd, view)
                            view = view[written:]
                        os.fsync(fd)
                    except OSError:
                        os.ftruncate(fd, start)  # never leave half a batch for the next append to glue onto
                        raise
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StoreError(f"cannot write {len(records)} records to the spill file {self.path}: {exc}") from exc
            self._pending += sum(map(entry_rows, records))

    # -- replay ------------------------------------------------------------------------------------------
    def take_for_replay(self) -> Path | None:
        """The file to replay now: a leftover ``.replaying`` file, else the spill renamed to it; None if empty."""
        with self._lock:
            if self.replaying_path.exists():
                return self.replaying_path
            try:
                if not self.path.exists() or self.path.stat().st_size == 0:
                    return None
                self.path.replace(self.replaying_path)
                _fsync_dir(self.path.parent)
            except OSError as exc:
                raise StoreError(f"cannot rotate the spill file {self.path}: {exc}") from exc
            return self.replaying_path

    def read(self, path: Path, chunk: int) -> Iterator[list[LogEntry]]:
        """The records of ``path`` in order (rows, and batches of rows), in lists of about ``chunk`` rows."""
        batch: list[LogEntry] = []
        rows = 0
        for entry in self._iter_file(path):
            batch.append(entry)
            rows += entry_rows(entry)
            if rows >= chunk:
                yield batch
                batch, rows = [], 0
        if batch:
            yield batch

    def finish_replay(self, path: Path, replayed: int) -> None:
        """Every record of ``path`` is in the database: delete it."""
        with self._lock:
            try:
                path.unlink(missing_ok=True)
                _fsync_dir(path.parent)
            except OSError as exc:
                raise StoreError(f"cannot remove the replayed spill file {path}: {exc}") from exc
            self._pending = max(0, self._pending - replayed)

    # -- helpers -----------------------------------------------------------------------------------------
    @staticmethod
    def _iter_file(path: Path) -> Iterator[LogEntry]:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read the spill file {path}: {exc}") from exc
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    log.error("spill file %s: ignoring a torn last line (%d bytes)", path, len(line))
                    break
                if not line.strip():
                    continue
                try:
                    yield entry_from_json(orjson.loads(line))
                except (orjson.JSONDecodeError, StoreError) as exc:
                    log.error("spill file %s line %d is not a record, skipped: %s", path, number, exc)

    @staticmethod
    def _repair_tail(path: Path) -> None:
        """Cut a torn last line (crash mid-append) so the next append starts on a line of its own."""
        try:
            with path.open("r+b") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size == 0:
                    return
                handle.seek(size - 1)
                if handle.read(1) == b"\n":
                    return
                position = size
                while position > 0:
                    step = min(65536, position)
                    handle.seek(position - step)
                    block = handle.read(step)
                    cut = block.rfind(b"\n")
                    if cut >= 0:
                        position = position - step + cut + 1
                        break
                    position -= step
                log.error("spill file %s: cutting a torn last line (%d bytes)", path, size - position)
                handle.truncate(position)
                os.fsync(handle.fileno())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot repair the spill file {path}: {exc}") from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
