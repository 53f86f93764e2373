"""The soak (issue 16): one ``tabserve serve`` (prediction log on, SQLite) under a steady load for a long
time, judged on what a long run shows and a short one does not.

In one run: the capacity is measured first (closed loop, ``--connections`` keep-alive connections, a few
seconds, plus the time the prediction log's writer then needs to store what it queued), then the server
gets ``--share`` (default half) of it as an open-loop constant rate for a warm-up
and ``--duration`` seconds, cut into windows of ``--window`` seconds. Each request's latency counts from the
moment it was due (a stalled server cannot hide behind the client waiting: no coordinated omission). Every
few seconds the server's RSS and open files (``/proc/<pid>/fd``, whole process tree) are sampled.

Checks: zero errors (non-200, connection errors, unanswered at the end); p99 of the last window within
``P99_GROWTH`` of the first (inconclusive, not failed, when the server waited for a CPU much longer in one of
the two windows than in the other: ``CONTENTION_DIFF_MS``); RSS at the end within ``RSS_GROWTH`` of the RSS
after the warm-up; open files at the end no more than after the warm-up; a prediction-log row for every 200.
``python -m bench.soak --duration 600`` is ``make soak``; the CI version is tests/test_soak.py (60 s, 15 s
windows). Prints one JSON document; exit code 1 when a check fails.

The client is bench/keepalive.py on uvloop. Server and client are pinned to different cores
(``--server-core``, ``--client-core``); other processes on the machine still add noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench.keepalive import Connection, build_requests, http_get
from bench.overload import cpu_seconds
from bench.procs import free_port, install_cleanup, process_tree, rss_mb, start_server, stop

REPO = Path(__file__).resolve().parents[1]
TABSERVE = Path(sys.executable).with_name("tabserve")
P99_GROWTH = 0.20
RSS_GROWTH = 0.05
CONTENTION_DIFF_MS = 50.0
"""The p99 check is judged only when the server's threads waited for a CPU about as long in the last window as in
the first (within 50 ms per second): otherwise the machine, not the server, changed between the two."""
SAMPLE_EVERY_S = 5.0


@dataclass
class Window:
    """One window of the soak: requests due in it, their outcome and latency, the server at its end."""

    start_s: float
    requests: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p99_1s_median_ms: float = 0.0
    max_ms: float = 0.0
    rss_mb: float = 0.0
    open_files: int = 0
    server_cpu_us_per_request: float = 0.0
    server_cpu_wait_ms_per_s: float = 0.0
    """Time the server's threads waited for a CPU, per second: high when other processes take its core."""
    load_1m: float = 0.0


@dataclass
class Run:
    """Everything one soak measured (``summary`` is the JSON printed)."""

    capacity_rps: float = 0.0
    rate_rps: float = 0.0
    windows: list[Window] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    rss_after_warmup_mb: float = 0.0
    open_files_after_warmup: int = 0
    answered_200: int = 0
    """Every 200 of the run (capacity phase included): each one is a row the prediction log must hold."""
    rows_logged: int = -1
    queue_rows: list[int] = field(default_factory=list)
    p99_per_second_ms: list[float] = field(default_factory=list)


def runqueue_wait_s(pid: int) -> float:
    """Seconds the threads of the process tree of ``pid`` have spent runnable but waiting for a CPU
    (``/proc/<pid>/task/<tid>/schedstat``, second field): what other processes took from the server."""
    total = 0
    for member in process_tree(pid):
        for task in Path(f"/proc/{member}/task").glob("*"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def open_files(pid: int) -> int:
    """Open file descriptors of the process tree of ``pid``."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += sum(1 for _ in Path(f"/proc/{member}/fd").iterdir())
    return total


async def closed_loop(port: int, requests: list[bytes], connections: int, seconds: float, run: Run) -> int:
    """Each connection sends its next request as soon as the last is answered; sets ``run.capacity_rps``
    (answers/s) and returns the errors."""
    done = errors = 0
    end = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done, errors
        conn = Connection(port)
        i = k
        while time.perf_counter() < end:
            try:
                status = await conn.request(requests[i % len(requests)])
            except (OSError, ValueError, asyncio.IncompleteReadError):
                conn.close()
                errors += 1
                continue
            done += 1
            errors += status != 200
            run.answered_200 += status == 200
            i += connections
        conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    run.capacity_rps = done / (time.perf_counter() - began)
    return errors


def drain_seconds(port: int, rows: int, timeout_s: float = 60.0) -> float:
    """Seconds until the prediction log has written ``rows`` rows (its writer catches up after the load)."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        text = http_get(port, "/metrics").decode()
        found = re.search(r"^tabserve_prediction_log_written_rows_total (\S+)$", text, re.M)
        if found and float(found.group(1)) >= rows:
            break
        time.sleep(0.05)
    return time.perf_counter() - began


async def open_loop(port: int, pid: int, requests: list[bytes], run: Run, settings: argparse.Namespace) -> None:
    """Requests due at a constant rate (request i at t0 + i / rate), sent by ``connections`` workers, for
    warm-up + duration; fills ``run``. A worker that is behind sends at once and its latency counts from the due
    time; a worker that is early sleeps and counts from when it woke (the client's timer is not the server)."""
    warmup_s = settings.warmup_s
    total_s = warmup_s + settings.duration_s
    seconds = int(settings.duration_s) + 1
    per_second: list[array[float]] = [array("d") for _ in range(seconds)]
    errors_per_second = [0] * seconds
    next_index = 0
    t0 = time.perf_counter()

    def record(due: float, start: float, error: str | None) -> None:
        run.answered_200 += error is None
        measured = due - t0 - warmup_s
        if measured < 0:
            if error:
                run.error_kinds[f"warm-up: {error}"] = run.error_kinds.get(f"warm-up: {error}", 0) + 1
            return
        k = min(seconds - 1, int(measured))
        if error:
            errors_per_second[k] += 1
            run.error_kinds[error] = run.error_kinds.get(error, 0) + 1
        else:
            per_second[k].append(time.perf_counter() - start)

    async def worker() -> None:
        nonlocal next_index
        conn = Connection(port)
        while True:
            i = next_index
            next_index += 1
            due = t0 + i / run.rate_rps
            if due - t0 >= total_s:
                break
            start = due
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
                start = time.perf_counter()
            try:
                status = await conn.request(requests[i % len(requests)])
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                conn.close()
                record(due, start, type(exc).__name__)
            else:
                record(due, start, None if status == 200 else f"status {status}")
        conn.close()

    async def sampler() -> None:
        warmed = False
        while True:
            now = time.perf_counter() - t0
            sample = {"t_s": round(now, 1), "rss_mb": rss_mb(pid)["tree"], "open_files": float(open_files(pid))}
            sample["cpu_s"] = cpu_seconds(pid) or 0.0
            sample["wait_s"] = runqueue_wait_s(pid)
            sample["load_1m"] = os.getloadavg()[0]
            run.samples.append(sample)
            if not warmed and now >= warmup_s:
                warmed = True
                run.rss_after_warmup_mb = sample["rss_mb"]
                run.open_files_after_warmup = int(sample["open_files"])
            await asyncio.sleep(SAMPLE_EVERY_S - (now % SAMPLE_EVERY_S))

    async def queue_sampler() -> None:
        while True:  # the log's queue once a second: a writer falling behind shows here before in latency
            text = (await asyncio.to_thread(http_get, port, "/metrics")).decode()
            found = re.search(r"^tabserve_prediction_log_queue_rows (\S+)$", text, re.M)
            run.queue_rows.append(int(float(found.group(1))) if found else -1)
            await asyncio.sleep(1.0)

    sampling = asyncio.create_task(sampler())
    queue_sampling = asyncio.create_task(queue_sampler())
    workers = [asyncio.create_task(worker()) for _ in range(settings.connections)]
    _, late = await asyncio.wait(workers, timeout=total_s + 15)
    for task in late:
        task.cancel()
    if late:
        run.error_kinds["client workers unfinished 15 s after the end"] = len(late)
        errors_per_second[-1] += len(late)
    sampling.cancel()
    queue_sampling.cancel()
    run.p99_per_second_ms = [
        round(1000 * _quantile(sorted(x), 0.99), 2) for x in per_second[: int(settings.duration_s)]
    ]
    final = {"t_s": round(time.perf_counter() - t0, 1), "rss_mb": rss_mb(pid)["tree"]}
    final["open_files"] = float(open_files(pid))
    final["cpu_s"] = cpu_seconds(pid) or 0.0
    final["wait_s"] = runqueue_wait_s(pid)
    final["load_1m"] = os.getloadavg()[0]
    run.samples.append(final)
    run.windows = windows(per_second, errors_per_second, settings, run.samples)


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def windows(
    per_second: list[array[float]], errors: list[int], settings: argparse.Namespace, samples: list[dict[str, float]]
) -> list[Window]:
    """Cut the per-second latencies into windows of ``window_s``: quantiles of the whole window, and the
    median of its per-second p99s (what a neighbour's burst of a second or two on a shared machine moves
    least), with the server's RSS and open files sampled last before the window's end."""
    out = []
    step = max(1, int(settings.window_s))
    for begin in range(0, int(settings.duration_s), step):
        seconds = range(begin, min(begin + step, int(settings.duration_s)))
        ordered = sorted(x for k in seconds for x in per_second[k])
        p99s = sorted(_quantile(sorted(per_second[k]), 0.99) for k in seconds if per_second[k])
        window = Window(start_s=float(begin), requests=len(ordered), errors=sum(errors[k] for k in seconds))
        window.requests += window.errors
        window.p50_ms = round(1000 * _quantile(ordered, 0.5), 3)
        window.p99_ms = round(1000 * _quantile(ordered, 0.99), 3)
        window.p99_1s_median_ms = round(1000 * _quantile(p99s, 0.5), 3)
        window.max_ms = round(1000 * (ordered[-1] if ordered else 0.0), 3)
        end_s = settings.warmup_s + begin + step
        at_end = [s for s in samples if s["t_s"] <= end_s + 0.5] or samples
        window.rss_mb, window.open_files = at_end[-1]["rss_mb"], int(at_end[-1]["open_files"])
        at_start = [s for s in samples if s["t_s"] <= end_s - step + 0.5] or samples
        cpu = at_end[-1].get("cpu_s", 0.0) - at_start[-1].get("cpu_s", 0.0)
        span = at_end[-1]["t_s"] - at_start[-1]["t_s"]
        if span > 0 and window.requests:
            # server CPU per request (a server getting slower shows here; a busy neighbour does not)
            window.server_cpu_us_per_request = round(1e6 * cpu / (window.requests * span / step), 1)
            wait = at_end[-1].get("wait_s", 0.0) - at_start[-1].get("wait_s", 0.0)
            window.server_cpu_wait_ms_per_s = round(1000 * wait / span, 1)
        window.load_1m = round(at_end[-1].get("load_1m", 0.0), 2)
        out.append(window)
    if int(settings.duration_s) < len(errors) and errors[-1]:
        out[-1].errors += errors[-1]
    return out


def checks(run: Run) -> dict[str, dict[str, Any]]:
    """The soak's verdicts (each with its target and what was measured)."""
    first, last = run.windows[0], run.windows[-1]
    errors = sum(w.errors for w in run.windows)
    p99_ratio = last.p99_1s_median_ms / first.p99_1s_median_ms if first.p99_1s_median_ms else float("inf")
    raw_ratio = last.p99_ms / first.p99_ms if first.p99_ms else float("inf")
    contention = abs(last.server_cpu_wait_ms_per_s - first.server_cpu_wait_ms_per_s)
    judged = contention <= CONTENTION_DIFF_MS
    in_load = [x for x in run.samples if x["t_s"] <= run.samples[-1]["t_s"] - 1.0] or run.samples
    final = in_load[-1]  # the last sample under load (the one after it is taken with the client gone)
    rss_growth = (final["rss_mb"] - run.rss_after_warmup_mb) / run.rss_after_warmup_mb
    return {
        "errors": {"target": 0, "measured": errors, "pass": errors == 0},
        "p99 last vs first window (median of 1-s p99s)": {
            "target": f"<= {1 + P99_GROWTH:.2f}x",
            "measured": f"{last.p99_1s_median_ms:.2f} / {first.p99_1s_median_ms:.2f} ms = {p99_ratio:.2f}x; server "
            f"waited for a CPU {first.server_cpu_wait_ms_per_s:.0f} then {last.server_cpu_wait_ms_per_s:.0f} ms/s",
            "pass": p99_ratio <= 1 + P99_GROWTH if judged else None,
            "inconclusive": None
            if judged
            else f"CPU wait differs by {contention:.0f} ms/s (> {CONTENTION_DIFF_MS:.0f}): the machine changed",
        },
        "p99 last vs first window (whole window, reported)": {
            "target": f"<= {1 + P99_GROWTH:.2f}x",
            "measured": f"{last.p99_ms:.2f} / {first.p99_ms:.2f} ms = {raw_ratio:.2f}x",
            "pass": True,
        },
        "RSS growth after warm-up": {
            "target": f"< {RSS_GROWTH:.0%}",
            "measured": f"{run.rss_after_warmup_mb:.1f} -> {final['rss_mb']:.1f} MB ({rss_growth:+.1%})",
            "pass": rss_growth < RSS_GROWTH,
        },
        "open files": {
            "target": "no growth",
            "measured": f"{run.open_files_after_warmup} -> {int(final['open_files'])}",
            "pass": final["open_files"] <= run.open_files_after_warmup,
        },
        "prediction log rows": {
            "target": "= 200 answers",
            "measured": f"{run.rows_logged} rows for {run.answered_200} answers",
            "pass": run.rows_logged == run.answered_200,
        },
    }


def soak(settings: argparse.Namespace) -> dict[str, Any]:
    """Start the server, measure its capacity, soak it at ``share`` of it, stop it; the summary."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="tabserve-soak-", dir=settings.data_root))
    env = {
        "TABSERVE_MODELS_DIR": str(REPO / "models"),
        "TABSERVE_DATA_DIR": str(data),
        "TABSERVE_ACCESS_LOG": "true" if settings.access_log else "false",
        "TABSERVE_LOG_FORMAT": "json",
        "PYTHONFAULTHANDLER": "1",  # a crash (even at exit) leaves the Python stacks in server.log
    }
    argv = [str(TABSERVE), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = start_server(
        "soak", argv, port=port, ready_path="/ready", log_path=data / "server.log", env=env, core=settings.server_core
    )
    run = Run()
    drained = 0.0
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {settings.client_core})
    try:
        example = json.loads(http_get(port, "/models/co2"))["example_request"]
        requests = build_requests(port, example)
        capacity_errors = uvloop.run(closed_loop(port, requests, settings.connections, settings.capacity_s, run))
        # The log's queue takes rows faster than its writer stores them for a while: the sustained capacity
        # counts the time the writer needs to catch up, or half of it would not be half.
        answered = run.capacity_rps * settings.capacity_s
        drained = drain_seconds(port, run.answered_200)
        run.capacity_rps = answered / (settings.capacity_s + drained)
        run.rate_rps = round(run.capacity_rps * settings.share, 1)
        uvloop.run(open_loop(port, server.pid, requests, run, settings))
    finally:
        exit_code = stop(server.proc)
    log_text = (data / "server.log").read_text(errors="replace")
    database = data / "predictions.sqlite"
    with contextlib.closing(sqlite3.connect(database)) as conn:
        run.rows_logged = int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
    if not settings.keep_data:
        for path in data.glob("predictions.sqlite*"):
            path.unlink()
    verdicts = checks(run)
    verdicts["server exit code"] = {"target": 0, "measured": exit_code, "pass": exit_code == 0}
    return {
        "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
        "load_average_end": os.getloadavg(),
        "capacity_rps": round(run.capacity_rps, 1),
        "capacity_drain_s": round(drained, 2),
        "capacity_errors": capacity_errors,
        "rate_rps": run.rate_rps,
        "connections": settings.connections,
        "duration_s": settings.duration_s,
        "warmup_s": settings.warmup_s,
        "windows": [asdict(w) for w in run.windows],
        "error_kinds": run.error_kinds,
        "p99_per_second_ms": run.p99_per_second_ms,
        "log_queue_rows_per_second": run.queue_rows,
        "rss_samples_mb": [s["rss_mb"] for s in run.samples],
        "open_files_samples": [int(s["open_files"]) for s in run.samples],
        "server_exit_code": exit_code,
        "server_error_lines": [line for line in log_text.splitlines() if '"severity":"ERROR"' in line][:20],
        "server_log_tail": log_text.splitlines()[-40:] if exit_code != 0 else [],
        "data_dir": str(data),
        "checks": verdicts,
        "pass": all(v["pass"] is not False for v in verdicts.values()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", dest="duration_s", type=float, default=600.0, help="measured seconds")
    parser.add_argument("--window", dest="window_s", type=float, default=60.0, help="seconds per p99 window")
    parser.add_argument("--warmup", dest="warmup_s", type=float, default=30.0, help="seconds at the rate first")
    parser.add_argument("--capacity-seconds", dest="capacity_s", type=float, default=5.0)
    parser.add_argument("--share", type=float, default=0.5, help="share of the measured capacity to soak at")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--access-log", action="store_true", help="keep the access log on (off by default)")
    parser.add_argument("--data-root", default=None, help="folder for the server's data dir (default: /tmp)")
    parser.add_argument("--keep-data", action="store_true", help="keep the prediction log database afterwards")
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    install_cleanup()
    settings = parse_args(argv)
    summary = soak(settings)
    text = json.dumps(summary, indent=2)
    print(text)
    if settings.out:
        settings.out.parent.mkdir(parents=True, exist_ok=True)
        settings.out.write_text(text + "\n", encoding="utf-8")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
