"""Coverage end to end: two real server instances (two workers each) sharing one real PostgreSQL log; predictions
and feedback spread over them; every instance's coverage route and /metrics report the same exact counts, and
adaptive levels move with the misses whichever worker received the feedback."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from conftest import MODELS, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
PG = "postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


def _gauge(text: str, name: str, pattern: str) -> float | None:
    found = re.search(rf'{name}\{{level="0.9",model="co2",pattern="{pattern}",version="3.0.1"\}} (\S+)', text)
    return float(found.group(1)) if found else None


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST on a new connection (any worker may take it). Feedback sent to the other instance can come before
    the predicting instance's log writer committed the row (it batches for up to 0.2 s): 404, retried."""
    deadline = time.monotonic() + 5.0
    while True:
        with httpx.Client(base_url=url, timeout=10) as fresh:
            response = fresh.post(path, json=body)
        if response.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_two_instances_report_the_same_coverage_route_and_metrics_when_feedback_spreads(
    server_factory: Callable[..., ServerProcess], schema: str
) -> None:
    env = {
        "TABSERVE_WORKERS": "2",
        "TABSERVE_STORE_URL": PG.format(schema=schema),
        "TABSERVE_COVERAGE_REFRESH_S": "0",
        "TABSERVE_COVERAGE_MIN_SAMPLES": "10",
        "TABSERVE_COVERAGE_ADAPTIVE": "true",
    }
    servers = [server_factory(env, subdir="a"), server_factory(env, subdir="b")]
    example = json.loads((MODELS / "co2" / "2.0.0" / "manifest.json").read_text())["example_request"]
    specs = {k: v for k, v in example.items() if not k.startswith("fuel_consumption")}
    expected = {"000": [0, 0], "111": [0, 0]}
    effective_levels = []
    for i in range(24):
        server = servers[i % 2]
        body, pattern = (specs, "000") if i % 3 else (example, "111")
        answer = _post(server.url, "/models/co2/predict", body)
        interval = answer["interval"]
        assert interval["level"] == 0.9
        effective_levels.append((pattern, interval["effective_level"]))
        inside = i % 4 != 0  # a miss every fourth answer
        actual = (interval["lower"] + interval["upper"]) / 2 if inside else interval["upper"] + 50.0
        fed = _post(servers[(i + 1) % 2].url, "/feedback", {"request_id": answer["request_id"], "actual": actual})
        assert fed["created"] is True
        expected[pattern][0] += 1
        expected[pattern][1] += 1 if inside else 0

    for server in servers:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            report = client.get("/models/co2/coverage")
            assert report.status_code == 200, report.text
            cells = {c["pattern"]: c for c in report.json()["cells"]}
            assert {p: [c["samples"], c["covered"]] for p, c in cells.items()} == expected
            assert cells["000"]["pattern_name"] == "specs only"
            metrics = client.get("/metrics").text  # the report just computed set the gauges of this worker
            for pattern, (n, covered) in expected.items():
                for _ in range(20):  # two workers: a scrape merges the newest value each reported
                    samples = _gauge(metrics, "tabserve_coverage_samples", pattern)
                    if samples == n:
                        break
                    time.sleep(0.1)
                    client.get("/models/co2/coverage")
                    metrics = client.get("/metrics").text
                assert _gauge(metrics, "tabserve_coverage_samples", pattern) == n, pattern
                assert _gauge(metrics, "tabserve_coverage_covered", pattern) == covered
                assert _gauge(metrics, "tabserve_coverage_ratio", pattern) == pytest.approx(covered / n, abs=1e-6)
            drift = client.get("/models/co2/drift").json()
            assert {c["pattern"]: c["samples"] for c in drift["coverage"]["cells"]} == {"000": 16, "111": 8}
    # adaptive: 16 specs-only answers, 4 misses (0.25 > 0.1): the effective level rose, on every instance
    assert max(level for pattern, level in effective_levels if pattern == "000") > 0.9
    assert cells["000"]["effective_level"] == pytest.approx(0.9 + 0.005 * (4 - 16 * 0.1), abs=1e-6)
    for server in servers:
        assert server.stop() == 0
