"""PredictionLog against the REAL PostgreSQL behind a TCP proxy that the test cuts mid-stream.

The real server keeps running (others use it); only our proxy refuses and resets connections. The rows
in the database must equal exactly the records submitted: none lost, none doubled.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tabserve.store import CountingObserver, PredictionLog, PredictionRecord
from tabserve.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres
PG_HOST = os.environ.get("TABSERVE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TABSERVE_TEST_PG_PORT", "5432"))
PG_URL = os.environ.get("TABSERVE_TEST_PG_URL", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test")


class CuttableProxy:
    """127.0.0.1:<port> -> PostgreSQL. ``cut()`` resets every open connection and refuses new ones (RST)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            _reset(s)

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def _reset(s: socket.socket) -> None:
    """Drop the connection at once. ``shutdown`` first: a bare ``close`` while a pump thread is blocked in
    ``recv`` on the socket neither wakes it nor tells the peer, which then waits forever (a flaky outage test)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


def record(i: int) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"req-{i // 4}",
        index=i % 4,
        time=1_700_000_000.0 + i / 100,
        model="penguins",
        model_version="1.0.0",
        inputs_raw={"bill_length_mm": 40 + i % 10, "island": "biscoe"},
        inputs={"bill_length_mm": float(40 + i % 10), "island": "BISCOE"},
        prediction="Adelie",
        output={"probabilities": {"Adelie": 0.9, "Chinstrap": 0.05, "Gentoo": 0.05}, "prediction_set": ["Adelie"]},
        warnings=[],
        out_of_distribution=False,
        latency_ms=0.7,
    )


def test_log_loses_and_doubles_nothing_when_database_cut_mid_stream(schema: str, tmp_path: Path) -> None:
    proxy = CuttableProxy((PG_HOST, PG_PORT))
    proxied = PostgresStore(f"postgresql://postgres@127.0.0.1:{proxy.port}/test", schema=schema, connect_timeout_s=2)
    observer = CountingObserver()
    log = PredictionLog(
        proxied,
        spill_path=tmp_path / "spill.jsonl",
        batch_size=50,
        flush_interval_s=0.02,
        observer=observer,
        retry_delays_s=(0.01, 0.02),
        probe_max_s=0.2,
    )
    log.start()
    records = [record(i) for i in range(3000)]
    submit_s: list[float] = []
    try:
        for start in range(0, len(records), 10):
            if start == 1000:
                assert log.flush(10)
                proxy.cut()
            if start == 2000:
                assert log.flush(10)
                assert observer.total_spilled > 0  # the outage really happened
                assert proxy.refused > 0
                proxy.restore()
            began = time.perf_counter()
            log.submit(records[start : start + 10])
            submit_s.append(time.perf_counter() - began)
            time.sleep(0.0005)
        assert log.flush(20)
        deadline = time.monotonic() + 20
        while log.spill.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.spill.pending == 0
        assert log.close(10)
    finally:
        proxy.close()
        proxied.close()

    direct = PostgresStore(PG_URL, schema=schema)
    try:
        rows = [(r["request_id"], r["index"]) for r in direct.export(None, None, False)]
    finally:
        direct.close()
    submitted = [(r.request_id, r.index) for r in records]
    assert len(rows) == len(set(rows)) == 3000
    assert sorted(rows) == sorted(submitted)
    assert observer.total_replayed == observer.total_spilled > 0
    assert observer.total_written + observer.total_spilled == 3000
    assert observer.total_spill_failed == 0
    assert not (tmp_path / "spill.jsonl").exists() or (tmp_path / "spill.jsonl").stat().st_size == 0
    assert max(submit_s) < 0.05  # the request path never waited for the dead database


def test_postgres_keeps_nul_and_rejects_out_of_range_when_bad_values(schema: str, tmp_path: Path) -> None:
    store = PostgresStore(PG_URL, schema=schema)
    observer = CountingObserver()
    log = PredictionLog(store, spill_path=tmp_path / "spill.jsonl", observer=observer, flush_interval_s=0.02)
    log.start()
    nul = replace(record(0), inputs_raw={"model": "RAV4\x00"}, request_id="nul\x00id")
    out_of_range = replace(record(1), index=2**40)  # PostgreSQL INTEGER cannot hold it: a data error, not an outage
    try:
        log.submit([nul, out_of_range, record(2)])
        assert log.flush(10)
        rows = {(r["request_id"], r["index"]): r for r in store.export(None, None, False)}
        assert set(rows) == {("nul\ufffdid", 0), ("req-0", 2)}
        assert rows[("nul\ufffdid", 0)]["inputs_raw"] == {"model": "RAV4\ufffd"}
        assert observer.total_spilled == 0
        rejected = log.rejects.path.read_bytes().splitlines()
        assert len(rejected) == 1
        assert log.close(5)
    finally:
        store.close()
