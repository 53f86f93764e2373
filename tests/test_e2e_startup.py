"""Start-up of a real ``tabserve serve`` process: fail fast on a bad artifact, or serve a fallback (degraded).

Each case works on a copy of ``models/`` under tmp, so the committed artifacts are never touched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MODELS, ServerProcess, add_model_version, start_server
from tabserve.artifacts import write_manifest

pytestmark = pytest.mark.e2e

FAIL_FAST_S = 2.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_models(dst: Path) -> Path:
    """co2 1.0.0 and every penguins version: the copy's newest co2 is 1.0.0 whatever else lands in models/."""
    shutil.copytree(MODELS / "co2" / "1.0.0", dst / "co2" / "1.0.0")
    shutil.copytree(MODELS / "penguins", dst / "penguins")
    return dst


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _expected(model_dir: Path, file: str) -> str:
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    expected: str = manifest["files"][file]
    return expected


def _run_until_exit(tmp_path: Path, env: dict[str, str]) -> tuple[int, float, str]:
    """Start ``tabserve serve``; returns (exit code, seconds until it exited, its whole output)."""
    started = time.monotonic()
    server = start_server(tmp_path, env, wait_ready=False)
    try:
        code = server.process.wait(timeout=15)
    except BaseException:
        server.stop(9)
        raise
    elapsed = time.monotonic() - started
    return code, elapsed, server.log()


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{output}"
    return lines[0]


# --- fail fast ----------------------------------------------------------------------------------------------
def test_serve_exits_fast_naming_hashes_when_onnx_corrupted(tmp_path: Path) -> None:
    models = _copy_models(tmp_path / "models")
    onnx = models / "co2" / "1.0.0" / "model.onnx"
    expected = _expected(onnx.parent, "model.onnx")
    _flip_byte(onnx)
    actual = _sha256(onnx)
    assert actual != expected
    code, elapsed, output = _run_until_exit(tmp_path, {"TABSERVE_MODELS_DIR": str(models)})
    assert code != 0
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.2f} s"
    line = _one_line(output)
    assert str(onnx) in line
    assert expected in line
    assert actual in line


def test_serve_exits_fast_naming_file_when_artifact_missing(tmp_path: Path) -> None:
    models = _copy_models(tmp_path / "models")
    onnx = models / "penguins" / "1.1.0" / "model.onnx"
    expected = _expected(onnx.parent, "model.onnx")
    onnx.unlink()
    code, elapsed, output = _run_until_exit(tmp_path, {"TABSERVE_MODELS_DIR": str(models)})
    assert code != 0
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.2f} s"
    line = _one_line(output)
    assert str(onnx) in line
    assert "missing" in line
    assert expected in line


def test_serve_exits_fast_naming_manifest_when_manifest_not_json(tmp_path: Path) -> None:
    models = _copy_models(tmp_path / "models")
    manifest = models / "co2" / "1.0.0" / "manifest.json"
    manifest.write_text(manifest.read_text(encoding="utf-8")[:-40], encoding="utf-8")  # truncated
    code, elapsed, output = _run_until_exit(tmp_path, {"TABSERVE_MODELS_DIR": str(models)})
    assert code != 0
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.2f} s"
    line = _one_line(output)
    assert str(manifest) in line
    assert "json" in line.lower()


def test_serve_exits_fast_naming_both_errors_when_fallback_also_corrupted(tmp_path: Path) -> None:
    models = _copy_models(tmp_path / "models")
    newer = add_model_version(models, "co2", "1.0.0", "1.1.0")
    broken = {}
    for folder in (models / "co2" / "1.0.0", newer):
        onnx = folder / "model.onnx"
        _flip_byte(onnx)
        broken[onnx] = (_expected(folder, "model.onnx"), _sha256(onnx))
    env = {
        "TABSERVE_MODELS_DIR": str(models),
        "TABSERVE_MODELS": "co2=1.1.0,penguins",
        "TABSERVE_FALLBACKS": "co2=1.0.0",
    }
    code, elapsed, output = _run_until_exit(tmp_path, env)
    assert code != 0
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.2f} s"
    line = _one_line(output)
    for onnx, (expected, actual) in broken.items():
        assert str(onnx) in line
        assert expected in line
        assert actual in line


def test_serve_exits_fast_naming_file_when_sealed_onnx_unloadable(tmp_path: Path) -> None:
    """Hashes match (the folder was re-sealed), but ONNX Runtime cannot parse the file: still fail fast."""
    models = _copy_models(tmp_path / "models")
    folder = models / "co2" / "1.0.0"
    (folder / "model.onnx").write_bytes(b"this is not an ONNX model")
    write_manifest(folder, json.loads((folder / "manifest.json").read_text(encoding="utf-8")))
    code, elapsed, output = _run_until_exit(tmp_path, {"TABSERVE_MODELS_DIR": str(models)})
    assert code != 0
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.2f} s"
    assert str(folder / "model.onnx") in output


def test_serve_exits_fast_when_configured_version_absent(tmp_path: Path) -> None:
    code, elapsed, output = _run_until_exit(tmp_path, {"TABSERVE_MODELS": "co2=9.9.9,penguins"})
    assert code != 0
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.2f} s"
    assert "9.9.9" in _one_line(output)


# --- fallback version ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """co2 configured at 1.1.0 (model.onnx corrupted after sealing) with fallback 1.0.0; penguins fine."""
    base = tmp_path_factory.mktemp("fallback")
    models = _copy_models(base / "models")
    newer = add_model_version(models, "co2", "1.0.0", "1.1.0")
    _flip_byte(newer / "model.onnx")
    env = {
        "TABSERVE_MODELS_DIR": str(models),
        "TABSERVE_MODELS": "co2=1.1.0,penguins",
        "TABSERVE_FALLBACKS": "co2=1.0.0",
    }
    server = start_server(base, env)
    yield server, newer / "model.onnx"
    server.stop()


def test_ready_reports_degraded_with_error_when_fallback_served(degraded: tuple[ServerProcess, Path]) -> None:
    server, broken = degraded
    response = httpx.get(server.url + "/ready", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    co2 = body["models"]["co2"]
    assert co2["status"] == "degraded"
    assert co2["version"] == "1.0.0"
    assert co2["requested_version"] == "1.1.0"
    assert str(broken) in co2["error"]
    assert "sha256" in co2["error"]
    assert _sha256(broken) in co2["error"]
    assert body["models"]["penguins"]["status"] == "ready"
    assert body["models"]["penguins"]["error"] is None


def test_predict_answers_with_fallback_version_when_configured_version_broken(
    degraded: tuple[ServerProcess, Path],
) -> None:
    server, _ = degraded
    example = httpx.get(server.url + "/models/co2", timeout=5).json()["example_request"]
    response = httpx.post(server.url + "/models/co2/predict", json=example, timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == {"name": "co2", "version": "1.0.0"}
    oip = httpx.get(server.url + "/v2/models/co2/versions/1.1.0/ready", timeout=5)
    assert oip.status_code == 404
    assert httpx.get(server.url + "/v2/models/co2/versions/1.0.0/ready", timeout=5).json()["ready"] is True


def _metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            samples.append((labels, float(match.group(2))))
    return samples


def test_model_info_metric_marks_degraded_when_fallback_served(degraded: tuple[ServerProcess, Path]) -> None:
    server, _ = degraded
    text = httpx.get(server.url + "/metrics", timeout=5).text
    samples = _metric_samples(text, "tabserve_model_info")
    co2 = [(labels, value) for labels, value in samples if labels.get("model") == "co2" and value == 1.0]
    assert len(co2) == 1, samples
    labels = co2[0][0]
    assert labels["version"] == "1.0.0"
    assert labels["degraded"] == "true"
    assert labels["sha256"] == _expected(MODELS / "co2" / "1.0.0", "model.onnx")
    penguins = [labels for labels, value in samples if labels.get("model") == "penguins" and value == 1.0]
    assert [p["degraded"] for p in penguins] == ["false"]


def test_log_names_problem_when_fallback_served(degraded: tuple[ServerProcess, Path]) -> None:
    server, broken = degraded
    records: list[dict[str, Any]] = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    hits = [r for r in records if str(broken) in r.get("message", "") and "degraded" in r.get("message", "")]
    assert hits, server.log()
    assert hits[0]["severity"] == "WARNING"
    assert hits[0].get("model") == "co2"
    assert hits[0].get("model_version") == "1.0.0"
    assert _sha256(broken) in hits[0]["message"]


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="resident memory read from Linux's /proc")
def test_ready_worker_gave_start_up_memory_back(tmp_path: Path) -> None:
    """co2 alone, log off (the benchmark's worker): once ready, the C heap is trimmed and the library pages only
    start-up ran are out of the resident set (122 MB resident before, about 71 MB after); it still answers."""
    server = start_server(tmp_path, {"TABSERVE_MODELS": "co2", "TABSERVE_PREDICTION_LOG": "false"})
    try:
        rss_kb = _status_kb(server.process.pid, "VmRSS")
        example = httpx.get(server.url + "/models/co2", timeout=5).json()["example_request"]
        response = httpx.post(server.url + "/predict", json=example, timeout=5)
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    ready = [json.loads(line) for line in server.log().splitlines() if line.startswith('{"') and '"ready"' in line]
    ready = [record for record in ready if record["message"] == "ready"]
    assert len(ready) == 1, server.log()
    assert ready[0]["heap_trimmed"] is True
    assert ready[0]["file_pages_dropped_kb"] > 20_000
    assert rss_kb < 100 * 1024, rss_kb


def test_dropping_library_pages_can_be_turned_off(tmp_path: Path) -> None:
    env = {"TABSERVE_MODELS": "co2", "TABSERVE_PREDICTION_LOG": "false", "TABSERVE_RELEASE_STARTUP_MEMORY": "false"}
    server = start_server(tmp_path, env)
    server.stop()
    ready = [json.loads(line) for line in server.log().splitlines() if line.startswith('{"') and '"ready"' in line]
    ready = [record for record in ready if record["message"] == "ready"]
    assert len(ready) == 1, server.log()
    assert ready[0]["file_pages_dropped_kb"] == 0
