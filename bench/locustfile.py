"""Locust scenarios for load-testing a *deployed* tabserve (docs/load-testing.md explains running and reading them).

locust is not a tabserve dependency: install it in its own venv (``python3 -m venv .venv-locust &&
.venv-locust/bin/pip install locust``). Pick the scenario with ``SCENARIO`` (one LoadTestShape drives it, so the
user count follows the scenario and the test stops by itself):

* ``baseline``  1 user for 2 min: the latency floor of the deployment (network + one request at a time).
* ``normal``    ramp to 10 users, hold 5 min: expected traffic.
* ``stress``    ramp to 50 users, hold 5 min: where p99 and errors start to grow.
* ``spike``     1 user, jump to 100 at once for 1 min, back to 1: admission control (503 + Retry-After),
                autoscaling and recovery.

    SCENARIO=normal .venv-locust/bin/locust -f bench/locustfile.py --host https://tabserve.example.com \\
        --headless --csv results/normal --html results/normal.html

Optional: ``API_KEY`` (sent as ``X-API-Key``), ``BATCH_SHARE`` (share of requests that are a 20-vehicle batch,
default 0.1), ``SCALE`` (multiplies every stage's duration, e.g. 0.1 for a quick smoke run).
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import HttpUser, LoadTestShape, between, task

VEHICLE: dict[str, Any] = {
    "make": "Toyota",
    "model": "RAV4 AWD",
    "vehicle_class": "SUV: Small",
    "engine_size_l": 2.5,
    "cylinders": 4,
    "transmission": "AS8",
    "fuel_type": "X",
    "model_year": 2020,
    "fuel_consumption_city_l_per_100km": 8.9,
    "fuel_consumption_hwy_l_per_100km": 7.0,
    "fuel_consumption_comb_l_per_100km": 8.1,
}

# (end of stage in seconds, users, spawn rate per second)
SCENARIOS: dict[str, list[tuple[float, int, float]]] = {
    "baseline": [(120, 1, 1)],
    "normal": [(30, 10, 1), (330, 10, 1)],
    "stress": [(60, 50, 1), (360, 50, 1)],
    "spike": [(60, 1, 1), (120, 100, 100), (240, 1, 100)],
}


def _vehicle(rng: random.Random) -> dict[str, Any]:
    """The example vehicle with plausible variation, so caches cannot flatter the numbers."""
    out = dict(VEHICLE)
    comb = round(rng.uniform(5.0, 15.0), 1)
    out["fuel_consumption_comb_l_per_100km"] = comb
    out["fuel_consumption_city_l_per_100km"] = round(comb * 1.12, 1)
    out["fuel_consumption_hwy_l_per_100km"] = round(comb * 0.86, 1)
    out["engine_size_l"] = rng.choice([1.5, 2.0, 2.5, 3.5, 5.0])
    return out


class TabserveUser(HttpUser):
    """One client: mostly single predictions, sometimes a small batch; every answer is checked."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.batch_share = float(os.environ.get("BATCH_SHARE", "0.1"))
        key = os.environ.get("API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    @task
    def predict(self) -> None:
        if self.rng.random() < self.batch_share:
            body: dict[str, Any] = {"instances": [_vehicle(self.rng) for _ in range(20)]}
            name, expect = "/predict [batch 20]", "predictions"
        else:
            body, name, expect = _vehicle(self.rng), "/predict", "prediction"
        with self.client.post("/predict", json=body, name=name, catch_response=True) as response:
            if response.status_code in (429, 503):
                # admission control / rate limit: a designed answer, reported as its own failure kind
                response.failure(f"rejected {response.status_code} (Retry-After {response.headers.get('Retry-After')})")
            elif response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif expect not in response.text:
                response.failure(f"200 without '{expect}'")
            else:
                response.success()


class ScenarioShape(LoadTestShape):
    """Runs the stages of ``SCENARIO`` (default ``normal``) and then stops the test."""

    def __init__(self) -> None:
        super().__init__()
        name = os.environ.get("SCENARIO", "normal")
        if name not in SCENARIOS:
            raise ValueError(f"SCENARIO must be one of {', '.join(SCENARIOS)}, not {name!r}")
        scale = float(os.environ.get("SCALE", "1"))
        self.stages = [(end * scale, users, rate) for end, users, rate in SCENARIOS[name]]

    def tick(self) -> tuple[int, float] | None:
        run_time = self.get_run_time()
        for end, users, rate in self.stages:
            if run_time < end:
                return users, rate
        return None
