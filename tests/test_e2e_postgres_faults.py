"""A real server logging to the real PostgreSQL through ``FaultProxy`` (tests/faultproxy.py): the database
made slow (latency on every packet), then refusing mid-stream (open connections reset, new ones refused,
several times) while requests flow. Predictions keep being served; after recovery the rows in PostgreSQL
are exactly the predictions served. (A database cut once and restored: test_e2e_postgres_outage.py.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess
from faultproxy import FaultProxy
from tabserve.store.postgres import PostgresStore
from test_e2e_postgres_outage import metric
from test_store_postgres_fault import PG_HOST, PG_PORT, PG_URL
from traffic import Traffic, p99_ms

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def wait_until_logged(server: ServerProcess, served: int, timeout_s: float = 30) -> dict[str, float]:
    """Poll /metrics until the log reports every served row written (directly or by replay)."""
    deadline = time.monotonic() + timeout_s
    names = ("written", "spilled", "replayed", "lost")
    while True:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        figures = {n: metric(text, f"tabserve_prediction_log_{n}_rows_total") for n in names}
        done = figures["written"] + figures["replayed"] >= served and figures["replayed"] >= figures["spilled"]
        if done or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


def rows_in_postgres(schema: str) -> list[str]:
    check = PostgresStore(PG_URL, schema=schema)
    try:
        return [row["request_id"] for row in check.export(None, "co2", False)]
    finally:
        check.close()


def start_proxied(server_factory: Callable[..., ServerProcess], schema: str, proxy: FaultProxy) -> ServerProcess:
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?options=-csearch_path%3D{schema}"
    return server_factory({"TABSERVE_STORE_URL": url, "TABSERVE_ACCESS_LOG": "false"}, subdir="pg")


def test_rows_equal_predictions_served_when_database_slow(
    server_factory: Callable[..., ServerProcess], schema: str, tmp_path: Path
) -> None:
    proxy = FaultProxy((PG_HOST, PG_PORT))
    server = start_proxied(server_factory, schema, proxy)
    traffic = Traffic(server.url)
    try:
        with traffic.running():
            time.sleep(1.0)
            before = len(traffic.served)
            fast_p99 = p99_ms(traffic.latencies_s)
            mark = len(traffic.latencies_s)
            proxy.delay_s = 0.15  # every packet 150 ms late: a round trip to the database costs 300 ms
            time.sleep(3.0)
            served_while_slow = len(traffic.served) - before
            slow_p99 = p99_ms(traffic.latencies_s[mark:])
            delayed = proxy.delayed
            proxy.delay_s = 0.0
            time.sleep(0.5)
        figures = wait_until_logged(server, len(traffic.served))
    finally:
        assert server.stop() == 0
        proxy.close()
    logged = rows_in_postgres(schema)
    print(  # the figures quoted in docs/reliability.md (pytest -s)
        f"slow database: served={len(traffic.served)} served_while_slow={served_while_slow} "
        f"packets delayed={delayed} predict p99 {fast_p99:.1f} ms before, {slow_p99:.1f} ms while slow; {figures}; "
        f"rows_in_postgres={len(logged)}"
    )
    assert traffic.failures == []
    assert delayed > 4  # the log's writer really talked to the database through the slow path
    assert served_while_slow > 50  # the request path does not wait for the database
    assert figures["lost"] == 0
    assert sorted(logged) == sorted(traffic.served)  # every prediction served is in PostgreSQL exactly once


def test_rows_equal_predictions_served_when_database_refuses_mid_stream(
    server_factory: Callable[..., ServerProcess], schema: str, tmp_path: Path
) -> None:
    proxy = FaultProxy((PG_HOST, PG_PORT))
    server = start_proxied(server_factory, schema, proxy)
    traffic = Traffic(server.url)
    served_while_refusing = 0
    try:
        with traffic.running():
            time.sleep(0.8)
            for _ in range(3):  # flapping: refused for 0.8 s, accepted for 0.8 s, three times
                proxy.refuse()
                at_refusal = len(traffic.served)
                time.sleep(0.8)
                served_while_refusing += len(traffic.served) - at_refusal
                proxy.accept()
                time.sleep(0.8)
        figures = wait_until_logged(server, len(traffic.served))
    finally:
        assert server.stop() == 0
        proxy.close()
    logged = rows_in_postgres(schema)
    print(
        f"refusing database: served={len(traffic.served)} served_while_refusing={served_while_refusing} "
        f"connections reset={proxy.reset} refused={proxy.refused}; {figures}; rows_in_postgres={len(logged)}"
    )
    assert traffic.failures == []
    assert served_while_refusing > 30
    assert proxy.reset > 0 and proxy.refused > 0  # the faults really happened
    assert figures["spilled"] > 0 and figures["replayed"] == figures["spilled"]
    assert figures["lost"] == 0
    assert sorted(logged) == sorted(traffic.served)
