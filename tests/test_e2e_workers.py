"""Several worker processes: metrics aggregated across workers, every prediction logged, clean SIGTERM."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import MODELS, ServerProcess

pytestmark = pytest.mark.e2e
OK_PREDICTIONS = r'tabserve_requests_total\{model="co2",route="/predict",status="200"\} (\S+)'


def test_two_workers_share_metrics_and_log_every_prediction(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory({"TABSERVE_WORKERS": "2"}, subdir="w2")
    example = {**json.loads((MODELS / "co2" / "1.0.0" / "manifest.json").read_text())["example_request"]}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(40):
            with httpx.Client(base_url=server.url, timeout=10) as fresh:  # new connections spread over workers
                assert fresh.post("/predict", json=example).status_code == 200
        # each worker applies its buffered observations at most a second late (observability/pending.py)
        deadline = time.monotonic() + 5.0
        while True:
            text = client.get("/metrics").text
            total = sum(float(m.group(1)) for m in re.finditer(OK_PREDICTIONS, text))
            if total >= 40.0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert total == 40.0
    assert server.stop() == 0
    database = tmp_path / "w2" / "var" / "predictions.sqlite"
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 40
