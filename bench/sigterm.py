"""SIGTERM under load: a small Python client that knows which requests were sent before the signal.

wrk cannot tell which of its requests were accepted before a signal, so this module drives the load itself:
``connections`` threads, each with a keep-alive HTTP/1.1 connection, send the single-vehicle request in a
closed loop and record, per request, when its bytes were written and what came back. Then SIGTERM goes to the
server's process; the clients keep going until their connection is refused (or the time bound), and the
server's exit code and exit time are recorded.

A request *sent before the signal* (its last byte written before ``os.kill``) that did not get a 2xx counts as
failed; the issue's target is zero of those. Requests sent after the signal may be refused, closed or 503'd.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """One request: when it was written, when it finished, and its status (or the error's class name)."""

    sent_at: float
    done_at: float
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def classify(outcomes: list[Outcome], signal_at: float) -> dict[str, Any]:
    """Split outcomes at the signal: before (must all be 2xx) and after (anything goes, just counted)."""
    before = [o for o in outcomes if o.sent_at < signal_at]
    after = [o for o in outcomes if o.sent_at >= signal_at]
    failed = [o for o in before if not o.ok]
    in_flight = [o for o in before if o.done_at >= signal_at]

    def kinds(items: list[Outcome]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in items:
            key = str(o.status) if o.status is not None else (o.error or "error")
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    return {
        "sent_before_signal": len(before),
        "failed_before_signal": len(failed),
        "failed_before_signal_kinds": kinds(failed),
        "failed_before_signal_ms_before": sorted(round((signal_at - o.sent_at) * 1000, 3) for o in failed)[:20],
        "in_flight_at_signal": len(in_flight),
        "in_flight_completed_2xx": sum(1 for o in in_flight if o.ok),
        "sent_after_signal": len(after),
        "after_signal_kinds": kinds(after),
    }


class _Client(threading.Thread):
    def __init__(self, port: int, path: str, body: bytes, stop_at: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.body = port, path, body
        self.stop_at, self.stop = stop_at, stop
        self.outcomes: list[Outcome] = []

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set() and time.perf_counter() < self.stop_at:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
            sent_at = time.perf_counter()
            try:
                conn.request("POST", self.path, body=self.body, headers=headers)
                sent_at = time.perf_counter()
                response = conn.getresponse()
                response.read()
                self.outcomes.append(Outcome(sent_at, time.perf_counter(), response.status, None))
                if response.will_close:
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                self.outcomes.append(Outcome(sent_at, time.perf_counter(), None, "ConnectionRefusedError"))
                return  # the server stopped listening: this client is done
            except (OSError, http.client.HTTPException) as exc:
                self.outcomes.append(Outcome(sent_at, time.perf_counter(), None, type(exc).__name__))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def sigterm_under_load(
    pid: int,
    port: int,
    path: str,
    body_path: Path,
    *,
    connections: int = 8,
    load_before_s: float = 2.0,
    grace_s: float = 10.0,
    wait_exit: Any = None,
) -> dict[str, Any]:
    """Load the server, SIGTERM ``pid`` after ``load_before_s``, and report the outcome split and the exit.

    ``wait_exit(timeout) -> int | None`` waits for the server's exit code (the Popen's ``wait``).
    """
    body = body_path.read_bytes()
    stop = threading.Event()
    t_start = time.perf_counter()
    stop_at = t_start + load_before_s + grace_s + 2.0
    clients = [_Client(port, path, body, stop_at, stop) for _ in range(connections)]
    for client in clients:
        client.start()
    time.sleep(load_before_s)
    signal_at = time.perf_counter()
    os.kill(pid, signal.SIGTERM)
    exit_code: int | None = None
    exit_s: float | None = None
    if wait_exit is not None:
        try:
            exit_code = wait_exit(grace_s + 5.0)
            exit_s = time.perf_counter() - signal_at
        except Exception:
            exit_code = None
    stop.set()
    for client in clients:
        client.join(timeout=10)
    outcomes = [o for client in clients for o in client.outcomes]
    result = classify(outcomes, signal_at)
    result.update(
        {
            "connections": connections,
            "load_before_signal_s": load_before_s,
            "exit_code": exit_code,
            "exit_after_signal_s": None if exit_s is None else round(exit_s, 3),
            "grace_s": grace_s,
            "requests_total": len(outcomes),
        }
    )
    return result
