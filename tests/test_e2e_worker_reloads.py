"""``POST /admin/reload`` on a server with two workers reaches both: the answer waits until every worker serves the
version and says so; a worker started later (after a SIGKILL) serves the reloaded version too, and a reload
without a version brings every worker to the newest on disk."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MODELS, ServerProcess
from tabserve.worker_reloads import WorkerReloads
from test_e2e_worker_kill import READY_LINE, workers

pytestmark = pytest.mark.e2e
TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONNECTIONS = 30


def _versions(server: ServerProcess, example: dict[str, Any]) -> Counter[str]:
    """The version answering on each of ``CONNECTIONS`` new connections (the kernel spreads them over workers)."""
    seen: Counter[str] = Counter()
    for _ in range(CONNECTIONS):
        with httpx.Client(base_url=server.url, timeout=10) as fresh:
            response = fresh.post("/models/penguins/predict", json=example)
            assert response.status_code == 200, response.text
            seen[response.json()["model"]["version"]] += 1
    return seen


def _wait_ready(server: ServerProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while server.log().count(READY_LINE) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.log().count(READY_LINE) >= count, server.log()


def test_a_reload_reaches_every_worker_and_outlives_one(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS / "penguins", models / "penguins")
    env = {
        "TABSERVE_WORKERS": "2",
        "TABSERVE_MODELS_DIR": str(models),
        "TABSERVE_MODELS": "penguins",
        "TABSERVE_ADMIN_TOKEN": TOKEN,
        "TABSERVE_ACCESS_LOG": "false",
        "TABSERVE_PREDICTION_LOG": "false",
    }
    server = server_factory(env, subdir="reloads")
    _wait_ready(server, 2)
    assert len(workers(server)) == 2
    with httpx.Client(base_url=server.url, timeout=30) as http:
        example = http.get("/models/penguins").json()["example_request"]
        assert _versions(server, example) == Counter({"1.1.0": CONNECTIONS})

        rollback = http.post("/admin/reload", json={"model": "penguins", "version": "1.0.0"}, headers=AUTH)
        assert rollback.status_code == 200, rollback.text
        body = rollback.json()
        assert body["status"] == "ready" and body["workers"] == {"serving": 2, "of": 2}, body
        assert _versions(server, example) == Counter({"1.0.0": CONNECTIONS})  # no connection meets 1.1.0

        victim = workers(server)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_ready(server, 3)  # uvicorn's replacement, started after the reload
        assert victim not in workers(server) and len(workers(server)) == 2
        assert _versions(server, example) == Counter({"1.0.0": CONNECTIONS})

        newest = http.post("/admin/reload", json={"model": "penguins"}, headers=AUTH)
        assert newest.status_code == 200 and newest.json()["workers"] == {"serving": 2, "of": 2}, newest.text
        assert _versions(server, example) == Counter({"1.1.0": CONNECTIONS})
    assert server.stop() == 0


def test_orders_and_acknowledgements(tmp_path: Path) -> None:
    """Two workers' views of one data dir (this process and its parent stand for two live workers)."""
    first, second = WorkerReloads(tmp_path, os.getpid()), WorkerReloads(tmp_path, os.getppid())
    assert second.pending() == [] and first.acks(1).done == 0
    seq = first.publish("penguins", "1.0.0", newest=False)
    assert first.pending() == []  # the publisher already serves it
    (order,) = second.pending()
    assert (order.seq, order.model, order.version, order.wanted(True)) == (seq, "penguins", "1.0.0", "1.0.0")
    assert first.acks(seq).done == 0
    second.applied_up_to(order.seq, {})
    assert first.acks(seq).done == 1 and second.pending() == []
    later = first.publish("penguins", "1.1.0", newest=True)
    (order,) = second.pending()
    assert order.seq == later and order.wanted(at_start=True) is None and order.wanted(at_start=False) == "1.1.0"
    second.applied_up_to(later, {"penguins": "sha256 mismatch"})
    assert first.acks(later).errors == {os.getppid(): "penguins: sha256 mismatch"}
    dead = WorkerReloads(tmp_path, 2**22 + 12345)  # no such process: its acknowledgement does not count
    dead.applied_up_to(later, {})
    assert first.acks(later).done == 1
    WorkerReloads.clear(tmp_path)
    assert WorkerReloads(tmp_path).pending() == [] and first.acks(1).done == 0


def test_a_reload_the_other_workers_do_not_confirm_is_partial(
    make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (one worker claiming two): nobody acknowledges within the wait, then the order cannot be written
    at all (a full disk): this worker serves the version either way and the answer says what the others do."""
    from tabserve.api import routes_admin

    client = make_client(workers=2, admin_token=TOKEN)
    monkeypatch.setattr(routes_admin, "WORKERS_WAIT_S", 0.3)
    unconfirmed = client.post("/admin/reload", json={"model": "penguins"}, headers=AUTH)
    assert unconfirmed.status_code == 200, unconfirmed.text
    body = unconfirmed.json()
    assert (body["status"], body["workers"], body["worker_errors"]) == ("partial", {"serving": 1, "of": 2}, [])

    def full(*_: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(WorkerReloads, "publish", full)
    unwritten = client.post("/admin/reload", json={"model": "penguins"}, headers=AUTH)
    assert unwritten.status_code == 200, unwritten.text
    assert unwritten.json()["worker_errors"] == ["the reload order could not be written: No space left on device"]
    assert unwritten.json()["status"] == "partial" and unwritten.json()["version"] == "1.1.0"


def test_a_damaged_orders_file_does_not_stop_a_worker(make_client: Callable[..., Any], tmp_path: Path) -> None:
    data = tmp_path / "damaged"
    data.mkdir()
    (data / "reloads.json").write_text('{"seq": 3, "models": {"penguins": {"seq": "x"', encoding="utf-8")
    client = make_client(workers=2, admin_token=TOKEN, data_dir=data)
    assert client.get("/ready").status_code == 200
    assert client.get("/models/penguins").json()["version"] == "1.1.0"
