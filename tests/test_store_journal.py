"""The prediction log's journal (``store.journal``): a process SIGKILLed with rows still queued loses none of
them; the next process in its spill slot replays them, exactly once, and a clean close leaves no segment."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tabserve.store import CountingObserver, PredictionLog
from tabserve.store import journal as journal_module
from tabserve.store.record import record_line, record_row
from tabserve.store.spill import SpillFile
from tabserve.store.sqlite import SqliteStore
from test_store_log import db_keys, keys, record, wait_until

DIE_WITH_QUEUED_ROWS = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_store_log import record
    from tabserve.store import PredictionLog
    from tabserve.store.sqlite import SqliteStore

    folder, stored = Path(sys.argv[1]), int(sys.argv[2])
    log = PredictionLog(SqliteStore(folder / "log.sqlite"), spill_path=folder / "spill" / "spill.jsonl",
                        batch_size=10_000, flush_interval_s=3600)
    log.start()
    log.submit([record(i) for i in range(stored)])
    if not log.flush(10):
        sys.exit(3)
    for i in range(stored, 300):
        log.submit([record(i)])
    os.kill(os.getpid(), signal.SIGKILL)  # no flush, no close: the queue dies with the process
    """
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "log.sqlite", busy_timeout_s=0.05)
    s.migrate()
    yield s
    s.close()


def _new_log(store: SqliteStore, tmp_path: Path, **kwargs: object) -> tuple[PredictionLog, CountingObserver]:
    observer = CountingObserver()
    log = PredictionLog(
        store,
        spill_path=tmp_path / "spill" / "spill.jsonl",
        observer=observer,
        batch_size=50,
        flush_interval_s=0.02,
        **kwargs,  # type: ignore[arg-type]
    )
    return log, observer


def _segments(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "spill").glob("*.journal.*"))


@pytest.mark.parametrize("stored", [0, 120])
def test_rows_queued_by_a_sigkilled_process_are_replayed_by_the_next(
    store: SqliteStore, tmp_path: Path, stored: int
) -> None:
    tests = Path(__file__).parent
    child = subprocess.run(
        [sys.executable, "-c", DIE_WITH_QUEUED_ROWS, str(tmp_path), str(stored), str(tests)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert store.count() == stored  # the rest was only in the dead process's queue (and its journal)
    assert _segments(tmp_path)
    log, observer = _new_log(store, tmp_path)
    log.start()
    wait_until(lambda: store.count() == 300)
    assert log.close(5)
    assert db_keys(store) == keys([record(i) for i in range(300)])  # in order, none doubled
    # rows the dead process had stored come back too when it died before deleting their segment: skipped
    assert observer.total_replayed in (300 - stored, 300)
    assert _segments(tmp_path) == []


def test_journaled_rows_already_stored_are_not_doubled(store: SqliteStore, tmp_path: Path) -> None:
    """A process killed after its batch reached the database but before the segment was deleted."""
    records = [record(i) for i in range(100)]
    store.write_rows([record_row(r) for r in records[:60]])
    (tmp_path / "spill").mkdir()
    segment = tmp_path / "spill" / "spill.journal.7.jsonl"
    segment.write_bytes(b"".join(record_line(r) for r in records) + b'{"torn": ')  # died mid-write
    log, _ = _new_log(store, tmp_path)
    log.start()
    wait_until(lambda: store.count() == 100)
    log.submit(records[:1])  # a new segment is numbered past the one recovered
    assert log.close(5)
    assert db_keys(store) == keys(records)
    assert _segments(tmp_path) == []


def test_clean_close_leaves_no_segment_and_the_journal_can_be_off(store: SqliteStore, tmp_path: Path) -> None:
    log, _ = _new_log(store, tmp_path)
    log.start()
    for i in range(500):
        log.submit([record(i)])
    assert log.flush(10)
    assert len(_segments(tmp_path)) <= 4  # the current, two free for reuse, one awaiting its batch
    assert log.close(5)
    assert _segments(tmp_path) == []
    quiet, _ = _new_log(store, tmp_path, journal=False)
    quiet.start()
    quiet.submit([record(i, prefix="q") for i in range(10)])
    assert _segments(tmp_path) == []
    assert quiet.close(5)
    assert store.count() == 510


def test_a_journal_that_cannot_be_allocated_is_one_error_and_resumes(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_fallocate = os.posix_fallocate
    full = True

    def fallocate(fd: int, offset: int, length: int) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(journal_module.os, "posix_fallocate", fallocate)  # os itself: only the journal calls it
    log, _ = _new_log(store, tmp_path)
    with caplog.at_level(logging.WARNING, logger="tabserve.store"):
        log.start()
        for i in range(200):
            log.submit([record(i)])
        assert log.flush(10)
        wait_until(lambda: _segments(tmp_path) == [])  # no half-made segment left behind
        full = False
        for i in range(200, 400):
            log.submit([record(i)])
        assert log.flush(10)
    errors = [r for r in caplog.records if "journal" in r.getMessage() and r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
    assert any("journaling again" in r.getMessage() for r in caplog.records)
    assert log.close(5)
    assert store.count() == 400  # the log itself never noticed
    assert _segments(tmp_path) == []


def test_a_line_longer_than_a_segment_gets_a_segment_of_its_own(store: SqliteStore, tmp_path: Path) -> None:
    journal = journal_module.Journal(tmp_path / "spill.jsonl", segment_bytes=4096)
    journal.open()
    lines = [journal_module.entry_line(record_row(record(i))) for i in range(40)]
    long_row = record_row(replace(record(99), inputs_raw={"note": "x" * 10_000}))
    for n, line in enumerate([*lines[:20], journal_module.entry_line(long_row), *lines[20:]], start=1):
        journal.append(line, n)
    found = sorted(map(journal_module.read_journal, journal.leftovers()), key=lambda use_entries: use_entries[0])
    recovered = [entry for _, entries in found for entry in entries]  # in the order the segments were used
    assert [row[:2] for row in recovered] == [row[:2] for row in [*map(record_row, map(record, range(20))),
                                               long_row, *map(record_row, map(record, range(20, 40)))]]  # fmt: skip
    journal.close(clean=True)
    assert journal.leftovers() == []


def test_reused_segments_are_recovered_in_the_order_they_were_written(tmp_path: Path) -> None:
    """Stored segments are zeroed and reused, so a later record can sit in a lower-numbered file."""
    journal = journal_module.Journal(tmp_path / "spill.jsonl", segment_bytes=4096)
    journal.open()
    rows = [record_row(record(i)) for i in range(80)]
    for n, row in enumerate(rows[:30], start=1):
        journal.append(journal_module.entry_line(row), n)
    journal.rotate(30)
    journal.release(30)  # all stored: zeroed, two kept for reuse
    for n, row in enumerate(rows[30:], start=31):
        journal.append(journal_module.entry_line(row), n)
        if n == 55:
            journal.rotate(n)
    spill = SpillFile(tmp_path / "recovered" / "spill.jsonl")
    spill.open()
    assert journal_module.Journal(tmp_path / "spill.jsonl").recover(spill) == 50  # as if this process had died
    recovered = [entry for chunk in spill.read(spill.path, 1000) for entry in chunk]
    assert [row[:2] for row in recovered] == [row[:2] for row in rows[30:]]
    spill.close()
