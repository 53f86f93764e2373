"""SIGTERM during a stream of requests to a real ``tabserve serve`` process.

The scenario runs once per module (a few threads posting predictions one after another; SIGTERM after
~1 s); the tests then check its outcome: how the process exited, what the clients got, and what the
prediction log (SQLite under ``TABSERVE_DATA_DIR``) holds.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from conftest import start_server

pytestmark = pytest.mark.e2e

THREADS = 4
BATCH_ROWS = 50
STREAM_S = 1.0
EXIT_WITHIN_S = 10.0


@dataclass
class Outcome:
    returncode: int | None
    exit_seconds: float
    responses: list[tuple[str, int]] = field(default_factory=list)  # (request id, status)
    batches: list[tuple[str, int]] = field(default_factory=list)  # (request id, status) of the batch requests
    connection_errors: int = 0
    after_signal: int = 0  # responses that arrived after SIGTERM was sent
    log_ids: list[str] = field(default_factory=list)
    logged_batches: dict[str, int] = field(default_factory=dict)  # request id -> rows (prediction_batches)
    server_log: str = ""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    base = tmp_path_factory.mktemp("sigterm")
    server = start_server(base, {"TABSERVE_ACCESS_LOG": "false"})
    examples = {
        name: httpx.get(f"{server.url}/models/{name}", timeout=5).json()["example_request"]
        for name in ("co2", "penguins")
    }
    lock = threading.Lock()
    result = Outcome(returncode=None, exit_seconds=float("inf"))
    signalled = threading.Event()

    def stream(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for n in range(100_000):
                model = ("co2", "penguins")[n % 2]
                rid = f"sigterm-{worker}-{n}"
                try:
                    response = client.post(
                        f"/models/{model}/predict", json=examples[model], headers={"X-Request-ID": rid}
                    )
                except httpx.TransportError:
                    with lock:
                        result.connection_errors += 1
                    return
                with lock:
                    result.responses.append((rid, response.status_code))
                    if signalled.is_set():
                        result.after_signal += 1

    def stream_batches() -> None:  # one more client posting 50-row batches (one columnar log record each)
        body = {"instances": [examples["co2"]] * BATCH_ROWS}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for n in range(100_000):
                rid = f"sigterm-batch-{n}"
                try:
                    response = client.post("/models/co2/predict", json=body, headers={"X-Request-ID": rid})
                except httpx.TransportError:
                    with lock:
                        result.connection_errors += 1
                    return
                with lock:
                    result.batches.append((rid, response.status_code))

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(THREADS)]
    threads.append(threading.Thread(target=stream_batches, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(STREAM_S)
    sent = time.monotonic()
    signalled.set()
    server.process.send_signal(signal.SIGTERM)
    try:
        result.returncode = server.process.wait(timeout=EXIT_WITHIN_S + 5)
        result.exit_seconds = time.monotonic() - sent
    except BaseException:
        server.process.kill()
        raise
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads), "client threads still running after the server exited"
    result.server_log = server.log()
    database = base / "var" / "predictions.sqlite"
    with sqlite3.connect(database) as connection:
        result.log_ids = [row[0] for row in connection.execute("SELECT request_id FROM predictions")]
        result.logged_batches = dict(connection.execute("SELECT request_id, rows FROM prediction_batches").fetchall())
    return result


def test_stream_got_responses_when_sigterm_sent(outcome: Outcome) -> None:
    assert len(outcome.responses) >= 20, outcome
    assert outcome.connection_errors <= THREADS + 1  # each client stops at its first connection error


def test_sigterm_exits_zero_when_requests_in_flight(outcome: Outcome) -> None:
    assert outcome.returncode == 0, outcome.server_log[-2000:]


def test_sigterm_stops_process_within_grace_when_requests_in_flight(outcome: Outcome) -> None:
    assert outcome.returncode is not None
    assert outcome.exit_seconds < EXIT_WITHIN_S
    assert outcome.returncode in (0, -signal.SIGTERM), outcome.server_log[-2000:]  # not a crash, not SIGKILL


def test_sigterm_answers_200_to_every_answered_request_when_streaming(outcome: Outcome) -> None:
    statuses = {status for _, status in outcome.responses + outcome.batches}
    assert statuses == {200}, [r for r in outcome.responses + outcome.batches if r[1] != 200][:10]


def test_prediction_log_holds_every_answered_request_when_sigterm(outcome: Outcome) -> None:
    answered = [rid for rid, status in outcome.responses if status == 200]
    assert len(outcome.log_ids) == len(answered)
    assert sorted(outcome.log_ids) == sorted(answered)
    assert "prediction log flushed" in outcome.server_log


def test_prediction_log_holds_every_answered_batch_when_sigterm(outcome: Outcome) -> None:
    answered = sorted(rid for rid, status in outcome.batches if status == 200)
    assert answered, outcome.batches
    assert sorted(outcome.logged_batches) == answered
    assert set(outcome.logged_batches.values()) == {BATCH_ROWS}
