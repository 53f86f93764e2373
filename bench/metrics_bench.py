"""Micro-benchmark: the Prometheus updates one single-row prediction makes, per request.

``.venv/bin/python -m bench.metrics_bench [--requests 100000]`` prints µs per request for the buffered
``ServiceMetrics`` (what the service uses) and for the same updates made directly on prometheus_client children.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tabserve.observability.metrics import LATENCY_BUCKETS, REGRESSION_BUCKETS, ROWS_BUCKETS, ServiceMetrics

STAGES = ("validate", "preprocess", "inference", "serialise")


def buffered() -> Callable[[], None]:
    metrics = ServiceMetrics()

    def one() -> None:
        metrics.in_flight_inc()
        metrics.request("/predict", "co2", 200, 0.0012)
        for stage in STAGES:
            metrics.stage(stage, "co2", 0.00002)
        metrics.rows("co2", 1)
        metrics.regression_values("co2", [189.8])
        metrics.in_flight_dec()

    return one


def direct() -> Callable[[], None]:
    reg = CollectorRegistry()
    requests = Counter("r", "r", ["route", "model", "status"], registry=reg).labels("/predict", "co2", "200")
    latency = Histogram("l", "l", ["route", "model"], buckets=LATENCY_BUCKETS, registry=reg).labels("/predict", "co2")
    stage = Histogram("s", "s", ["stage", "model"], buckets=LATENCY_BUCKETS, registry=reg)
    stages = [stage.labels(name, "co2") for name in STAGES]
    rows = Counter("n", "n", ["model"], registry=reg).labels("co2")
    batch_rows = Histogram("b", "b", ["model"], buckets=ROWS_BUCKETS, registry=reg).labels("co2")
    value = Histogram("v", "v", ["model"], buckets=REGRESSION_BUCKETS, registry=reg).labels("co2")
    in_flight = Gauge("g", "g", registry=reg)

    def one() -> None:
        in_flight.inc()
        requests.inc()
        latency.observe(0.0012)
        for child in stages:
            child.observe(0.00002)
        rows.inc()
        batch_rows.observe(1)
        value.observe(189.8)
        in_flight.dec()

    return one


def per_request_us(one: Callable[[], None], n: int) -> float:
    for _ in range(min(n, 1000)):
        one()
    started = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    n = parser.parse_args().requests
    result = {"requests": n}
    for name, make in (("direct_us", direct), ("buffered_us", buffered), ("direct_again_us", direct)):
        result[name] = round(per_request_us(make(), n), 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
