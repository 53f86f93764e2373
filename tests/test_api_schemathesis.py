"""Schemathesis (v4) against a real ``tabserve serve`` process and its own /openapi.json: every operation,
every check (status codes, content types, response schemas, positive and negative data, stateful links
predict -> feedback) plus ``error_body`` (tests/schemathesis/hooks.py). At least 2,000 generated requests,
zero failures. A seed is printed by schemathesis when it fails; ``TABSERVE_SCHEMATHESIS_EXAMPLES`` raises the
examples per operation for a longer local run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServerProcess

HERE = Path(__file__).parent / "schemathesis"
ST = Path(sys.executable).with_name("schemathesis")
MIN_REQUESTS = 2000

pytestmark = pytest.mark.e2e


def test_schemathesis_finds_nothing(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = server_factory({"TABSERVE_ACCESS_LOG": "false", "TABSERVE_MAX_IN_FLIGHT": "0"})
    examples = os.environ.get("TABSERVE_SCHEMATHESIS_EXAMPLES", "100")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hooks", "PYTHONPATH": str(HERE)}
    env.pop("CI", None)  # (CI=true only changes schemathesis's output, not what it runs)
    result = subprocess.run(
        [
            str(ST),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            examples,
            "--no-color",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=280,
        check=False,
    )
    output = result.stdout + result.stderr
    (tmp_path / "schemathesis.log").write_text(output)
    generated = re.search(r"(\d+) generated", output)
    assert result.returncode == 0, output[-20000:]
    assert generated is not None and int(generated.group(1)) >= MIN_REQUESTS, output[-3000:]
    assert "Selected: " in output and "Tested: " in output
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    assert selected is not None and selected.group(1) == selected.group(2), "every operation is tested"
    assert "server error" not in output.lower()
