"""PredictionLog on the real SQLite: batching, full queue, spill + replay, restarts, feedback, faults."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tabserve.errors import NotFoundError
from tabserve.store import CountingObserver, PredictionLog, PredictionRecord
from tabserve.store.record import record_line, record_row
from tabserve.store.sqlite import SqliteStore


def record(i: int, *, prefix: str = "r") -> PredictionRecord:
    return PredictionRecord(
        request_id=f"{prefix}{i // 3}",
        index=i % 3,
        time=1_700_000_000.0 + i,
        model="co2",
        model_version="1.0.0",
        inputs_raw={"engine_size_l": 2.0 + i / 1000},
        inputs={"engine_size_l": 2.0 + i / 1000},
        prediction=150.0 + i,
        output={"interval": {"0.9": {"lower": 140.0, "upper": 160.0}}},
        warnings=[],
        out_of_distribution=False,
        latency_ms=0.5,
    )


def keys(records: list[PredictionRecord]) -> list[tuple[str, int]]:
    return [(r.request_id, r.index) for r in records]


def db_keys(store: SqliteStore) -> list[tuple[str, int]]:
    return [(row["request_id"], row["index"]) for row in store.export(None, None, False)]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "log.sqlite", busy_timeout_s=0.05)
    yield s
    s.close()


def make_log(store: SqliteStore, tmp_path: Path, **kwargs: object) -> tuple[PredictionLog, CountingObserver]:
    observer = CountingObserver()
    options: dict[str, object] = {
        "batch_size": 50,
        "flush_interval_s": 0.02,
        "retry_delays_s": (0.01,),
        "probe_max_s": 0.1,
    }
    options.update(kwargs)
    log = PredictionLog(store, spill_path=tmp_path / "spill" / "spill.jsonl", observer=observer, **options)  # type: ignore[arg-type]
    return log, observer


def test_log_writes_everything_in_order_when_database_healthy(store: SqliteStore, tmp_path: Path) -> None:
    log, observer = make_log(store, tmp_path)
    log.start()
    records = [record(i) for i in range(1234)]
    for start in range(0, len(records), 7):
        log.submit(records[start : start + 7])
    assert log.flush(10)
    assert db_keys(store) == keys(records)
    assert (observer.total_written, observer.total_spilled) == (1234, 0)
    assert log.close(5)


def test_each_full_batch_wakes_the_writer_when_flush_timer_is_far(store: SqliteStore, tmp_path: Path) -> None:
    log, observer = make_log(store, tmp_path, batch_size=20, flush_interval_s=60.0)
    log.start()
    records = [record(i) for i in range(60)]
    for burst in range(3):  # the writer is woken once per full batch, and again after it took one
        for r in records[burst * 20 : (burst + 1) * 20]:
            log.submit([r])
        wait_until(lambda burst=burst: observer.total_written == (burst + 1) * 20, timeout_s=5)
    assert db_keys(store) == keys(records)
    assert log.close(5)


def test_single_rows_and_lists_keep_their_order_when_mixed(store: SqliteStore, tmp_path: Path) -> None:
    log, observer = make_log(store, tmp_path, batch_size=16, queue_size=40)
    records = [record(i) for i in range(100)]
    rows = [record_row(r) for r in records]
    log.spill.open()
    log.submit_row(rows[0])
    log.submit_rows(rows[1:39])
    log.submit_row(rows[39])
    log.submit_row(rows[40])  # the queue is full and the writer is not running: spilled, in order
    assert (log.queue_depth, observer.total_spilled) == (40, 1)
    log.spill.close()
    log.start()  # replays the spilled row, then writes the queue
    for i in range(41, 100):
        if i % 3:
            log.submit_row(rows[i])
        else:
            log.submit_rows([rows[i]])
    assert log.flush(10)
    assert sorted(db_keys(store)) == sorted(keys(records))
    assert observer.total_written + observer.total_replayed == 100
    assert log.close(5)


def test_submit_spills_when_queue_full(store: SqliteStore, tmp_path: Path) -> None:
    log, observer = make_log(store, tmp_path, queue_size=10)  # writer not started: the queue stays full
    records = [record(i) for i in range(25)]
    log.spill.open()
    log.submit(records[:10])
    log.submit(records[10:25])
    assert log.queue_depth == 10
    assert observer.total_spilled == 15
    log.spill.close()
    restarted, observer2 = make_log(store, tmp_path)
    restarted.start()
    wait_until(lambda: restarted.spill.pending == 0)
    assert sorted(db_keys(store)) == sorted(keys(records[10:25]))  # the 10 queued ones died with the process
    assert observer2.total_replayed == 15
    assert restarted.close(5)


def test_spill_failure_is_loud_when_spill_unwritable(
    store: SqliteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log, observer = make_log(store, tmp_path, queue_size=1)
    log.spill.open()
    log.spill.path.symlink_to("/dev/full")  # every write fails with ENOSPC, like a full disk
    with caplog.at_level(logging.ERROR, logger="tabserve.store"):
        log.submit([record(0), record(1), record(2)])
    assert observer.total_spill_failed == 3
    assert any("DATA LOSS" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    log.spill.close()


def test_restart_replays_leftover_spill_exactly_once_when_crashed_mid_replay(
    store: SqliteStore, tmp_path: Path
) -> None:
    records = [record(i) for i in range(300)]
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    # a crash after writing a replayed file to the DB but before deleting it: .replaying holds 0..199, which are
    # already in the DB; the fresh spill holds 200..299, plus a torn line from a crash mid-append
    store.write(records[:200])
    (spill_dir / "spill.jsonl.replaying").write_bytes(b"".join(record_line(r) for r in records[:200]))
    (spill_dir / "spill.jsonl").write_bytes(b"".join(record_line(r) for r in records[200:]) + b'{"request_id": "tor')
    log, observer = make_log(store, tmp_path)
    log.start()
    wait_until(lambda: log.spill.pending == 0)
    assert db_keys(store) == keys(records)
    assert store.count() == 300
    assert observer.total_replayed == 300
    assert not (spill_dir / "spill.jsonl.replaying").exists()
    log.submit([record(1000)])
    assert log.flush(5)
    assert store.count() == 301
    assert log.close(5)


def test_log_spills_and_replays_when_sqlite_locked(store: SqliteStore, tmp_path: Path) -> None:
    store.migrate()
    log, observer = make_log(store, tmp_path)
    log.start()
    records = [record(i) for i in range(900)]
    log.submit(records[:300])
    assert log.flush(5)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: every write fails "database is locked"
    try:
        for start in range(300, 600, 10):
            log.submit(records[start : start + 10])
        assert log.flush(10)
        assert observer.total_spilled > 0
        assert store.count() == 300
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.submit(records[600:])
    assert log.flush(10)
    wait_until(lambda: log.spill.pending == 0)
    assert log.flush(10)
    assert db_keys(store) == keys(records)  # in order, none lost, none doubled
    assert observer.total_replayed == observer.total_spilled
    assert observer.total_written + observer.total_spilled == 900
    assert log.close(5)


def test_feedback_finds_record_when_still_queued(store: SqliteStore, tmp_path: Path) -> None:
    log, _ = make_log(store, tmp_path, flush_interval_s=30.0, batch_size=10_000)  # the writer would wait 30 s
    log.start()
    log.submit([record(0)])
    result = log.attach_feedback("r0", 0, 151.0, timeout_s=5)
    assert result.created
    with pytest.raises(NotFoundError):
        log.attach_feedback("nope", 0, 1.0, timeout_s=5)
    assert log.close(5)


def test_feedback_finds_record_when_still_spilled(store: SqliteStore, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    (spill_dir / "spill.jsonl").write_bytes(record_line(record(0)))
    log, _ = make_log(store, tmp_path, flush_interval_s=30.0)
    log._db_ok = False  # as after an outage: replay waits for the next probe
    log._next_probe = time.monotonic() + 60
    log.start()
    assert log.attach_feedback("r0", 0, 151.0, timeout_s=5).created
    assert log.close(5)


def test_close_spills_queue_when_database_hangs(store: SqliteStore, tmp_path: Path) -> None:
    store.migrate()
    log, observer = make_log(store, tmp_path, retry_delays_s=(5.0,))
    log.start()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        records = [record(i) for i in range(120)]
        log.submit(records)
        started = time.monotonic()
        assert not log.close(0.5)  # SIGTERM while the DB is stuck: not clean, but nothing lost
        assert time.monotonic() - started < 2.0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    lines = (tmp_path / "spill" / "spill.jsonl").read_bytes().splitlines()
    assert {(orjson.loads(x)["request_id"], orjson.loads(x)["index"]) for x in lines} == set(keys(records))
    assert observer.total_spill_failed == 0


def test_second_process_gets_own_spill_when_first_holds_it(store: SqliteStore, tmp_path: Path) -> None:
    first, _ = make_log(store, tmp_path)
    second, _ = make_log(store, tmp_path)
    first.start()
    second.start()
    assert first.spill.path != second.spill.path
    assert second.spill.path.name == "spill.1.jsonl"
    assert first.close(5)
    assert second.close(5)


def test_submit_is_thread_safe_when_many_producers(store: SqliteStore, tmp_path: Path) -> None:
    log, observer = make_log(store, tmp_path)
    log.start()

    def produce(p: int) -> None:
        for i in range(300):
            log.submit([record(i, prefix=f"t{p}-")])

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.flush(10)
    assert store.count() == 1200
    assert observer.total_written == 1200
    assert log.close(5)


def test_bad_record_goes_to_rejects_when_database_refuses_it(
    store: SqliteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log, observer = make_log(store, tmp_path)
    log.start()
    good = [record(i) for i in range(10)]
    poison = replace(record(99), index=2**70)  # no SQLite integer can hold it
    with caplog.at_level(logging.ERROR, logger="tabserve.store"):
        log.submit([*good[:5], poison, *good[5:]])
        assert log.flush(5)
    assert db_keys(store) == keys(good)
    rejected = [orjson.loads(x) for x in log.rejects.path.read_bytes().splitlines()]
    assert [(r["request_id"], r["index"]) for r in rejected] == [("r33", str(2**70))]  # kept, as text
    assert observer.total_spilled == 0
    assert any("rejects" in r.getMessage() for r in caplog.records)
    log.submit([record(100)])
    assert log.flush(5)
    assert store.count() == 11  # the log keeps going after a bad record
    assert log.close(5)


def test_odd_json_values_are_kept_when_not_serialisable(store: SqliteStore) -> None:
    raw: dict[Any, Any] = {"when": Decimal("1.5"), 3: b"x", "big": 2**80}
    odd = replace(record(0), inputs_raw=raw)
    store.write([odd])
    (row,) = store.export(None, None, False)
    assert row["inputs_raw"] == {"when": "1.5", "3": "b'x'", "big": str(2**80)}


def test_full_queue_waits_for_the_writer_when_database_healthy(store: SqliteStore, tmp_path: Path) -> None:
    log, observer = make_log(store, tmp_path, queue_size=10, batch_size=5)
    log.start()
    records = [record(i) for i in range(300)]
    for start in range(0, len(records), 3):
        log.submit(records[start : start + 3])  # far faster than the writer: the queue is full most of the time
    assert log.flush(10)
    assert observer.total_spilled == 0  # waited for room instead of spilling (and replaying) a healthy log
    assert db_keys(store) == keys(records)
    assert log.close(5)


def test_full_queue_spills_after_a_short_wait_when_writer_stuck(store: SqliteStore, tmp_path: Path) -> None:
    store.migrate()
    log, observer = make_log(store, tmp_path, queue_size=10, batch_size=5, retry_delays_s=(5.0,), max_wait_s=0.1)
    log.start()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer's batch fails, then it sits in its 5 s retry delay
    try:
        records = [record(i) for i in range(40)]
        started = time.monotonic()
        for start in range(0, len(records), 5):
            log.submit(records[start : start + 5])
        assert time.monotonic() - started < 2.0  # at most a short wait per submit, never the writer's retry
        assert observer.total_spilled > 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.close(2)  # clean or not (the writer may be in its retry delay), nothing is lost either way
    restarted, _ = make_log(store, tmp_path)
    restarted.start()
    wait_until(lambda: restarted.spill.pending == 0)
    assert restarted.flush(5)
    assert sorted(db_keys(store)) == sorted(keys(records))
    assert restarted.close(5)


class HangingBackend:
    """A database that stops answering (a partition, a lock held elsewhere): writes block, no error yet."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.rows: list[Any] = []

    def migrate(self) -> None:
        pass

    def write_rows(self, rows: Any) -> None:
        self.release.wait(10.0)
        self.rows.extend(rows)

    def close(self) -> None:
        pass


def test_a_hanging_database_costs_one_wait_for_room_not_one_per_request(tmp_path: Path) -> None:
    """With a working spill the first spilled rows end the waits anyway (new rows spill behind them); without
    one, every request used to wait ``max_wait_s`` on the event loop."""
    backend = HangingBackend()
    log = PredictionLog(
        backend,  # type: ignore[arg-type]
        spill_path=tmp_path / "spill.jsonl",
        queue_size=20,
        batch_size=10,
        flush_interval_s=0.02,
        max_wait_s=0.5,
    )
    log.start()
    try:
        for i in range(10):
            log.submit([record(i)])
        wait_until(lambda: log.queue_depth == 0)  # the writer holds those 10 rows, stuck in write_rows
        for i in range(10, 30):
            log.submit([record(i)])  # the queue is full now
        log.spill.path.mkdir()  # and the spill cannot be written either (a full or read-only disk)
        started = time.monotonic()
        for i in range(30, 38):
            log.submit([record(i)])  # the first waits max_wait_s; the rest see the writer has not moved
        assert time.monotonic() - started < 2.0  # 8 × 0.5 s before the fix
        assert log.spill.pending == 0
    finally:
        backend.release.set()
        log.close(5)


def test_batch_size_never_exceeds_the_queue_so_a_full_queue_wakes_the_writer(tmp_path: Path) -> None:
    log = PredictionLog(HangingBackend(), spill_path=tmp_path / "spill.jsonl", queue_size=200)  # type: ignore[arg-type]
    assert log.batch_size == 200
