"""A model artifact corrupted on disk under a running ``tabserve serve`` (one byte overwritten in place, as
bit rot or a half-finished copy would), then a reload: the version in memory keeps serving the same answers,
and the reload fails loudly (admin call: a problem+json naming the file and both hashes; SIGHUP: a log line
naming it). The file repaired, the reload succeeds. At start-up (two workers), a corrupted file is exit code 1
with the file named. (Reloading to another, corrupted version: test_e2e_reload.py; the single-worker start-up
failures: test_e2e_startup.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import MODELS, ServerProcess

pytestmark = pytest.mark.e2e
TOKEN = "corrupt-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _copy_models(dst: Path) -> Path:
    shutil.copytree(MODELS / "co2" / "1.0.0", dst / "co2" / "1.0.0")
    shutil.copytree(MODELS / "penguins", dst / "penguins")
    return dst


def _overwrite_in_place(path: Path) -> tuple[bytes, str]:
    """Flip one byte in the middle of the file without replacing it (same inode, same size): returns the
    original bytes and the new sha256."""
    original = path.read_bytes()
    with path.open("r+b") as handle:
        handle.seek(len(original) // 2)
        handle.write(bytes([original[len(original) // 2] ^ 0xFF]))
        handle.flush()
        os.fsync(handle.fileno())
    return original, hashlib.sha256(path.read_bytes()).hexdigest()


def _predict(http: httpx.Client, example: dict[str, object]) -> tuple[str, float]:
    response = http.post("/models/co2/predict", json=example)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model"]["version"], body["prediction"]


def _lines_with(server: ServerProcess, text: str) -> list[str]:
    return [line for line in server.log().splitlines() if text in line]


def _wait_for_new_log(server: ServerProcess, text: str, seen: int, timeout_s: float = 10) -> str:
    """The first line containing ``text`` after the ``seen`` ones already there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = _lines_with(server, text)
        if len(lines) > seen:
            return lines[seen]
        time.sleep(0.05)
    raise AssertionError(f"no new log line with {text!r}:\n{server.log()[-3000:]}")


@pytest.mark.parametrize("file", ["model.onnx", "manifest.json"])
def test_corrupted_while_serving_then_reload_keeps_old_version_and_fails_loudly(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, file: str
) -> None:
    models = _copy_models(tmp_path / "models")
    env = {
        "TABSERVE_MODELS_DIR": str(models),
        "TABSERVE_MODELS": "co2=1.0.0,penguins",
        "TABSERVE_ADMIN_TOKEN": TOKEN,
        "TABSERVE_ACCESS_LOG": "false",
    }
    server = server_factory(env)
    target = models / "co2" / "1.0.0" / file
    with httpx.Client(base_url=server.url, timeout=30) as http:
        example = http.get("/models/co2").json()["example_request"]
        before = _predict(http, example)
        original, corrupted_sha = _overwrite_in_place(target)
        assert _predict(http, example) == before  # the version in memory is untouched

        response = http.post("/admin/reload", json={"model": "co2", "version": "1.0.0"}, headers=AUTH)
        assert response.status_code >= 400
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == response.status_code
        assert str(target) in problem["detail"], problem
        if file == "model.onnx":
            assert corrupted_sha in problem["detail"]  # the hash found, next to the one the manifest expects
        assert _predict(http, example) == before
        ready = http.get("/ready")
        assert ready.status_code == 200
        co2 = ready.json()["models"]["co2"]
        assert co2["version"] == "1.0.0" and str(target) in co2["error"]

        loud = f"still serving 1.0.0: {target}"
        seen = len(_lines_with(server, loud))  # the admin reload's own line is there already
        os.kill(server.process.pid, signal.SIGHUP)  # the operator's other reload: loud in the log, no crash
        line = _wait_for_new_log(server, loud, seen)
        assert json.loads(line)["severity"] in {"WARNING", "ERROR"}
        assert server.process.poll() is None
        assert _predict(http, example) == before

        target.write_bytes(original)  # repaired: the same reload now succeeds
        response = http.post("/admin/reload", json={"model": "co2", "version": "1.0.0"}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert http.get("/ready").json()["models"]["co2"]["error"] is None
        assert _predict(http, example) == before
    assert server.stop() == 0


def test_corrupted_at_startup_with_two_workers_exits_1_naming_the_file(tmp_path: Path) -> None:
    from conftest import start_server

    models = _copy_models(tmp_path / "models")
    target = models / "penguins" / "1.1.0" / "model.onnx"
    _, corrupted_sha = _overwrite_in_place(target)
    server = start_server(tmp_path, {"TABSERVE_MODELS_DIR": str(models), "TABSERVE_WORKERS": "2"}, wait_ready=False)
    try:
        code = server.process.wait(timeout=20)
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
    output = server.log()
    assert code == 1, output
    assert str(target) in output and corrupted_sha in output
    assert "Started server process" not in output  # refused before any worker was forked
