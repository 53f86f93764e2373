"""The serving process itself: ``PORT`` (Cloud Run), request ids, the disabled admin route, and no training
libraries in the serving process (checked in a fresh interpreter and in the running server's memory map)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MODELS, REPO, TABSERVE, ServerProcess, free_port

pytestmark = pytest.mark.e2e

TRAINING_LIBRARIES = {"pandas", "sklearn", "lightgbm", "skl2onnx", "matplotlib", "onnxmltools"}


@pytest.fixture(scope="module")
def port_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``tabserve serve`` with ``PORT`` set and no ``TABSERVE_PORT`` (and no admin token)."""
    base = tmp_path_factory.mktemp("port")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABSERVE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        {
            "PORT": str(port),
            "TABSERVE_MODELS_DIR": str(MODELS),
            "TABSERVE_DATA_DIR": str(base / "var"),
            "TABSERVE_HOST": "127.0.0.1",
        }
    )
    log_path = base / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(TABSERVE), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            pytest.fail(f"server not ready on PORT={port} in 20 s:\n{server.log()}")
        time.sleep(0.05)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(port_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=port_server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def examples(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {name: http.get(f"/models/{name}").json()["example_request"] for name in ("co2", "penguins")}


def test_server_listens_on_port_env_when_tabserve_port_unset(port_server: ServerProcess, http: httpx.Client) -> None:
    assert "TABSERVE_PORT" not in os.environ
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert http.get("/ready").json()["status"] == "ready"
    assert f"Uvicorn running on {port_server.url}" in port_server.log()


def test_request_id_echoed_in_header_and_body_when_given(
    http: httpx.Client, examples: dict[str, dict[str, Any]]
) -> None:
    for path, body in (
        ("/predict", examples["co2"]),
        ("/models/penguins/predict", examples["penguins"]),
        ("/models/co2/predict", {"instances": [examples["co2"], examples["co2"]]}),
    ):
        rid = f"rid-{path.replace('/', '-')}-1"
        response = http.post(path, json=body, headers={"X-Request-ID": rid})
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == rid
        assert response.json()["request_id"] == rid


def test_request_id_echoed_in_problem_when_request_invalid(
    http: httpx.Client, examples: dict[str, dict[str, Any]]
) -> None:
    body = dict(examples["co2"], engine_sise=2.0)
    response = http.post("/predict", json=body, headers={"X-Request-ID": "rid-invalid-7"})
    assert response.status_code == 422
    assert response.headers["x-request-id"] == "rid-invalid-7"
    assert response.json()["request_id"] == "rid-invalid-7"


def test_request_id_generated_when_header_absent(http: httpx.Client, examples: dict[str, dict[str, Any]]) -> None:
    first = http.post("/predict", json=examples["co2"])
    second = http.post("/predict", json=examples["co2"])
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["x-request-id"]
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_admin_reload_answers_404_when_no_token_configured(http: httpx.Client) -> None:
    response = http.post("/admin/reload", json={"model": "co2", "version": "1.0.0"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    with_header = http.post(
        "/admin/reload", json={"model": "co2", "version": "1.0.0"}, headers={"Authorization": "Bearer guess"}
    )
    assert with_header.status_code == 404


def _mapped_libraries(pid: int) -> set[str]:
    """Top-level site-packages folders whose shared objects the process has mapped."""
    found: set[str] = set()
    for line in Path(f"/proc/{pid}/maps").read_text(encoding="utf-8").splitlines():
        path = line.split()[-1]
        if "site-packages/" in path:
            found.add(path.split("site-packages/", 1)[1].split("/", 1)[0])
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_server_maps_no_training_libraries_when_serving(
    port_server: ServerProcess, http: httpx.Client, examples: dict[str, dict[str, Any]]
) -> None:
    for name, example in examples.items():
        assert http.post(f"/models/{name}/predict", json=example).status_code == 200
    mapped = _mapped_libraries(port_server.process.pid)
    assert "onnxruntime" in mapped  # the check sees compiled extensions at all
    assert not {"pandas", "sklearn", "lightgbm", "matplotlib", "scipy"} & mapped


PROBE = """
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from tabserve.api import create_app
from tabserve.config import Settings

models, data = Path(sys.argv[1]), Path(sys.argv[2])
settings = Settings(models_dir=models, data_dir=data, access_log=False)
with TestClient(create_app(settings)) as client:
    for name in ("co2", "penguins"):
        example = client.get(f"/models/{name}").json()["example_request"]
        response = client.post(f"/models/{name}/predict", json=example)
        assert response.status_code == 200, response.text
        print(name, response.json()["model"]["version"], file=sys.stderr)
heavy = set(sys.argv[3].split(","))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def test_app_imports_no_training_libraries_when_predicting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABSERVE_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(MODELS), str(tmp_path / "var"), ",".join(sorted(TRAINING_LIBRARIES))],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "co2 " in result.stderr
    assert "penguins " in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
