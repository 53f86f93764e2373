"""Hot reload of a real ``tabserve serve`` process: the admin call (bearer token) and SIGHUP.

Models (a tmp copy): co2 1.0.0 (configured), a valid 1.1.0 and a 1.2.0 whose model.onnx was corrupted after
sealing. Every test sets the state it needs first, so the tests do not depend on their order.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MODELS, ServerProcess, add_model_version, start_server

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def reloadable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    base = tmp_path_factory.mktemp("reload")
    models = base / "models"
    shutil.copytree(MODELS / "co2" / "1.0.0", models / "co2" / "1.0.0")
    shutil.copytree(MODELS / "penguins", models / "penguins")
    add_model_version(models, "co2", "1.0.0", "1.1.0")
    broken = add_model_version(models, "co2", "1.0.0", "1.2.0") / "model.onnx"
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    env = {
        "TABSERVE_MODELS_DIR": str(models),
        "TABSERVE_MODELS": "co2=1.0.0,penguins",
        "TABSERVE_ADMIN_TOKEN": TOKEN,
        "TABSERVE_ACCESS_LOG": "false",
    }
    server = start_server(base, env)
    yield server, broken
    server.stop()


@pytest.fixture(scope="module")
def http(reloadable: tuple[ServerProcess, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=reloadable[0].url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def example(http: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = http.get("/models/co2").json()["example_request"]
    return body


def _served_version(http: httpx.Client, example: dict[str, Any]) -> str:
    response = http.post("/models/co2/predict", json=example)
    assert response.status_code == 200, response.text
    version: str = response.json()["model"]["version"]
    return version


def _reload(http: httpx.Client, version: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post("/admin/reload", json={"model": "co2", "version": version}, headers=headers or AUTH)


def test_reload_answers_401_when_token_missing(http: httpx.Client, example: dict[str, Any]) -> None:
    before = _served_version(http, example)
    response = http.post("/admin/reload", json={"model": "co2", "version": "1.1.0"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert _served_version(http, example) == before


def test_reload_answers_401_when_token_wrong(http: httpx.Client, example: dict[str, Any]) -> None:
    before = _served_version(http, example)
    response = _reload(http, "1.1.0", {"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert _served_version(http, example) == before


def test_reload_swaps_version_when_authorized(http: httpx.Client, example: dict[str, Any]) -> None:
    assert _reload(http, "1.0.0").status_code == 200
    assert _served_version(http, example) == "1.0.0"
    response = _reload(http, "1.1.0")
    assert response.status_code == 200, response.text
    assert response.json() == {"model": "co2", "version": "1.1.0", "previous_version": "1.0.0", "status": "ready"}
    assert _served_version(http, example) == "1.1.0"
    ready = http.get("/ready").json()
    assert ready["status"] == "ready"
    assert ready["models"]["co2"]["version"] == "1.1.0"
    assert ready["models"]["co2"]["error"] is None
    oip = http.get("/v2/models/co2").json()
    assert oip["versions"] == ["1.1.0"]
    info = [
        line
        for line in http.get("/metrics").text.splitlines()
        if line.startswith("tabserve_model_info{") and 'model="co2"' in line
    ]
    assert len(info) == 1, info
    assert 'version="1.1.0"' in info[0]
    assert 'degraded="false"' in info[0]
    assert info[0].endswith(" 1.0")


def test_reload_keeps_old_version_when_new_is_corrupted(
    http: httpx.Client, example: dict[str, Any], reloadable: tuple[ServerProcess, Path]
) -> None:
    broken = reloadable[1]
    assert _reload(http, "1.1.0").status_code == 200
    response = _reload(http, "1.2.0")
    assert 400 <= response.status_code < 600
    assert response.status_code != 200
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["status"] == response.status_code
    assert str(broken) in problem["detail"]
    assert "sha256" in problem["detail"]
    assert hashlib.sha256(broken.read_bytes()).hexdigest() in problem["detail"]
    assert _served_version(http, example) == "1.1.0"
    ready = http.get("/ready")
    assert ready.status_code == 200
    co2 = ready.json()["models"]["co2"]
    assert co2["version"] == "1.1.0"
    assert "1.2.0" in co2["error"]
    assert str(broken) in co2["error"]


def test_reload_answers_404_when_version_unknown(http: httpx.Client, example: dict[str, Any]) -> None:
    before = _served_version(http, example)
    response = _reload(http, "7.7.7")
    assert response.status_code == 404
    assert "7.7.7" in response.json()["detail"]
    unknown_model = http.post("/admin/reload", json={"model": "nope", "version": "1.0.0"}, headers=AUTH)
    assert unknown_model.status_code == 404
    assert _served_version(http, example) == before


def test_predictions_never_fail_when_reloading_under_traffic(http: httpx.Client, example: dict[str, Any]) -> None:
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as client:
            while not stop.is_set():
                response = client.post("/models/co2/predict", json=example)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model"]["version"])

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for version in ("1.1.0", "1.0.0", "1.2.0", "1.1.0", "1.0.0"):
            response = _reload(http, version)
            if version == "1.2.0":
                assert response.status_code >= 400
            else:
                assert response.status_code == 200, response.text
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert statuses
    assert set(statuses) == {200}
    assert versions <= {"1.0.0", "1.1.0"}


def test_sighup_reloads_configured_version_when_process_kept(
    http: httpx.Client, example: dict[str, Any], reloadable: tuple[ServerProcess, Path]
) -> None:
    server = reloadable[0]
    assert _reload(http, "1.1.0").status_code == 200
    assert _served_version(http, example) == "1.1.0"
    pid = server.process.pid
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    version = "1.1.0"
    while time.monotonic() < deadline and version != "1.0.0":
        time.sleep(0.05)
        version = _served_version(http, example)
    assert version == "1.0.0"  # TABSERVE_MODELS says co2=1.0.0
    assert server.process.poll() is None
    assert server.process.pid == pid
    ready = http.get("/ready").json()
    assert ready["status"] == "ready"
    assert ready["models"]["co2"]["version"] == "1.0.0"
    assert ready["models"]["penguins"]["status"] == "ready"
