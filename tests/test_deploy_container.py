"""The container: deploy/container-test.sh end to end (podman, marked ``container``), and the answer
comparison it relies on (fast)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CONTAINER = Path(os.environ.get("TABSERVE_SHARED_DIR", REPO.parent / "shared")) / "container"


def _container_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("container_check", REPO / "deploy" / "container_check.py")
    if spec is None or spec.loader is None:
        raise ImportError("deploy/container_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _podman_unusable() -> str | None:
    """Why the container test cannot run here, or None. Rootful podman is installed by the script itself."""
    if not (SHARED_CONTAINER / "build-images.sh").is_file():
        return f"no {SHARED_CONTAINER}/build-images.sh (the local base images cannot be built)"
    if os.geteuid() != 0:
        return "rootful podman needs root (../shared/container/README.md)"
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        return "podman is not installed and apt-get is not available to install it"
    return None


def test_differences_empty_when_numbers_within_tolerance() -> None:
    check = _container_check()
    expected = {"prediction": 250.0, "interval": [240.0, 260.0], "model": {"name": "co2"}, "request_id": "cli"}
    actual = {"prediction": 250.0004, "interval": [240.0, 260.0009], "model": {"name": "co2"}, "request_id": "x"}
    assert check.differences(actual, expected, 1e-3) == []


def test_differences_reported_when_a_value_changes() -> None:
    check = _container_check()
    expected = {"prediction": 250.0, "prediction_set": ["Adelie"], "model": {"version": "1.0.0"}}
    actual = {"prediction": 250.01, "prediction_set": ["Gentoo"], "model": {"version": "1.0.1"}, "extra": 1}
    found = check.differences(actual, expected, 1e-3)
    assert len(found) == 4
    assert any(line.startswith("$.prediction:") for line in found)
    assert "$.prediction_set[0]: 'Gentoo' != 'Adelie'" in found
    assert "$.extra: only in actual" in found


@pytest.mark.container
@pytest.mark.timeout(900)
def test_container_serves_and_stops_cleanly_when_run_locked_down() -> None:
    reason = _podman_unusable()
    if reason is not None:
        pytest.skip(reason)
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "container-test.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=880,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "container-test: all checks passed" in output
    assert "exit code 0" in output
