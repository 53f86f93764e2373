"""The soak's CI version (``make soak`` is the 10-minute one): bench/soak.py for 60 s at half the capacity it
measures first, in 15 s windows. Judged here: zero errors, RSS growth under 5 % after the warm-up, no growth in
open files, a prediction-log row for every 200, a clean exit. The p99 of the last window against the first is
printed, not judged: a timing on a shared machine is the benchmark's to judge (``make soak``, whose exit code
includes it), and on this 2-core VM its 15 s windows moved 0.5–1.5× run to run with nothing changed in the server
(docs/reliability.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from conftest import REPO

if str(REPO) not in sys.path:  # bench/ is not installed: import it from the checkout (as test_bench.py does)
    sys.path.insert(0, str(REPO))

from bench.keepalive import Connection
from bench.soak import Run, Window, checks, windows

TIMING = "p99 last vs first window"
"""The checks reported, not judged, in the CI version (both p99 comparisons)."""
JUDGED = {"errors", "RSS growth after warm-up", "open files", "prediction log rows", "server exit code"}


@pytest.mark.e2e
@pytest.mark.soak
def test_sixty_seconds_at_half_capacity_stay_flat(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "bench.soak", "--duration", "60", "--window", "15", "--warmup", "10"]
    argv += ["--capacity-seconds", "5", "--data-root", str(tmp_path), "--out", str(out)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    print(  # the figures quoted in docs/reliability.md (pytest -s)
        f"soak 60 s: capacity {summary['capacity_rps']:.0f} req/s, rate {summary['rate_rps']:.0f} req/s; "
        + "; ".join(f"{name}: {check['measured']}" for name, check in summary["checks"].items())
    )
    judged = {name: check for name, check in summary["checks"].items() if not name.startswith(TIMING)}
    assert set(judged) == JUDGED, sorted(summary["checks"])
    failed = {name: check for name, check in judged.items() if check["pass"] is not True}
    assert failed == {}, json.dumps(summary, indent=2)[-6000:]
    assert summary["server_exit_code"] == 0
    assert summary["rate_rps"] > 100  # a real load, not a trickle


def _run(first_p99: float, last_p99: float, *, wait: tuple[float, float] = (10.0, 12.0), **extra: float) -> Run:
    run = Run(rss_after_warmup_mb=100.0, open_files_after_warmup=39, answered_200=20, rows_logged=20)
    run.windows = [
        Window(start_s=0, requests=10, p99_1s_median_ms=first_p99, p99_ms=first_p99, server_cpu_wait_ms_per_s=wait[0]),
        Window(start_s=15, requests=10, p99_1s_median_ms=last_p99, p99_ms=last_p99, server_cpu_wait_ms_per_s=wait[1]),
    ]
    run.samples = [{"t_s": 70.0, "rss_mb": extra.get("rss", 101.0), "open_files": extra.get("fds", 39.0)}]
    run.samples.append({"t_s": 75.0, "rss_mb": 50.0, "open_files": 20.0})  # after the load: not judged
    return run


def test_soak_checks_pass_fail_and_inconclusive() -> None:
    assert all(c["pass"] for c in checks(_run(5.0, 5.9)).values())
    grown = checks(_run(5.0, 6.1))
    assert [name for name, c in grown.items() if c["pass"] is False] == [
        "p99 last vs first window (median of 1-s p99s)"
    ]
    busy = checks(_run(5.0, 9.0, wait=(10.0, 300.0)))["p99 last vs first window (median of 1-s p99s)"]
    assert busy["pass"] is None and "300" in busy["measured"] and busy["inconclusive"]
    assert checks(_run(5.0, 5.0, rss=105.5))["RSS growth after warm-up"]["pass"] is False
    assert checks(_run(5.0, 5.0, fds=40.0))["open files"]["pass"] is False
    lost = _run(5.0, 5.0)
    lost.rows_logged = 19
    assert checks(lost)["prediction log rows"]["pass"] is False


def test_soak_windows_take_the_median_of_per_second_p99s() -> None:
    settings = argparse.Namespace(duration_s=6.0, window_s=3.0, warmup_s=1.0)
    burst = array("d", [0.001] * 95 + [0.5] * 5)  # one second with a neighbour's burst
    per_second = [burst, array("d", [0.002] * 100), array("d", [0.003] * 100)]
    per_second += [array("d", [0.004] * 100)] * 3 + [array("d")]
    samples = [{"t_s": float(t), "rss_mb": 100.0 + t, "open_files": 39.0, "cpu_s": t / 10} for t in range(8)]
    first, second = windows(per_second, [0, 1, 0, 0, 0, 0, 0], settings, samples)
    assert (first.requests, first.errors) == (301, 1)
    assert first.max_ms == 500.0
    assert first.p99_ms == 500.0  # the burst is the whole window's p99 ...
    assert first.p99_1s_median_ms == 3.0  # ... but not the median of its seconds' p99s
    assert (second.p50_ms, second.p99_ms, second.p99_1s_median_ms) == (4.0, 4.0, 4.0)
    assert (first.rss_mb, second.rss_mb) == (104.0, 107.0)  # sampled last before each window's end


@pytest.mark.parametrize("chunked", [False, True])
def test_keepalive_client_reads_whole_answers(chunked: bool) -> None:
    async def scenario() -> list[int]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for status in (200, 503):
                await reader.readuntil(b"\r\n\r\n")
                body = b'{"ok": true}'
                if chunked:
                    head = f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                    writer.write(head + b"5\r\n" + body[:5] + b"\r\n" + b"7\r\n" + body[5:] + b"\r\n0\r\n\r\n")
                else:
                    writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = Connection(port)
        raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        statuses = [await conn.request(raw), await conn.request(raw)]  # the same connection, both answers whole
        conn.close()
        server.close()
        await server.wait_closed()
        return statuses

    assert asyncio.run(scenario()) == [200, 503]
