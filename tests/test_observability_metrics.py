"""ServiceMetrics: series names, label children, model info replacement, store adapter, multiprocess merge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tabserve.observability.metrics import MULTIPROC_ENV, ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_request_counts_by_route_model_status_and_observes_latency() -> None:
    metrics = ServiceMetrics()
    metrics.request("/predict", "co2", 200, 0.0002)
    metrics.request("/predict", "co2", 200, 0.003)
    metrics.request("/predict", "co2", 422, 0.0001)
    s = _samples(metrics)
    assert s[("tabserve_requests_total", (("model", "co2"), ("route", "/predict"), ("status", "200")))] == 2
    assert s[("tabserve_requests_total", (("model", "co2"), ("route", "/predict"), ("status", "422")))] == 1
    key = ("tabserve_request_duration_seconds_bucket", (("le", "0.00025"), ("model", "co2"), ("route", "/predict")))
    assert s[key] == 2
    assert s[("tabserve_request_duration_seconds_count", (("model", "co2"), ("route", "/predict")))] == 3


def test_in_flight_gauge_is_exact_at_every_scrape() -> None:
    metrics = ServiceMetrics()
    key = ("tabserve_in_flight_requests", ())
    metrics.in_flight_inc()
    metrics.in_flight_inc()
    assert _samples(metrics)[key] == 2
    metrics.in_flight_dec()
    assert _samples(metrics)[key] == 1
    metrics.in_flight_dec()
    metrics.in_flight_inc()
    metrics.in_flight_dec()
    assert _samples(metrics)[key] == 0


def test_registries_are_independent_between_instances() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.rows("co2", 5)
    assert _samples(first)[("tabserve_predicted_rows_total", (("model", "co2"),))] == 5
    assert ("tabserve_predicted_rows_total", (("model", "co2"),)) not in _samples(second)


def test_every_series_name_has_prefix_and_unit_suffix() -> None:
    metrics = ServiceMetrics()
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    types = [line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")]
    # prometheus_client adds a "<counter>_created" timestamp gauge beside each unlabelled counter
    names = [name for name in types if not name.endswith("_created")]
    assert len(names) == 19
    units = ("_seconds", "_total", "_rows", "_requests", "_g_per_km", "_ratio", "_info", "_score")
    for name in names:
        assert name.startswith("tabserve_"), name
        assert name.endswith(units), name


def test_stage_inputs_and_outputs_are_recorded() -> None:
    metrics = ServiceMetrics()
    metrics.stage("inference", "co2", 0.00005)
    metrics.warnings("co2", {("engine_size_l", "out_of_distribution"): 1})
    metrics.regression_values("co2", [231.0])
    metrics.class_predictions("penguins", {"Adelie": 1}, [0.97])
    metrics.rejected("overload")
    with metrics.in_flight():
        assert _samples(metrics)[("tabserve_in_flight_requests", ())] == 1
    s = _samples(metrics)
    assert s[("tabserve_in_flight_requests", ())] == 0
    assert s[("tabserve_stage_duration_seconds_count", (("model", "co2"), ("stage", "inference")))] == 1
    warning = (("code", "out_of_distribution"), ("feature", "engine_size_l"), ("model", "co2"))
    assert s[("tabserve_input_warnings_total", warning)] == 1
    assert s[("tabserve_out_of_distribution_total", (("feature", "engine_size_l"), ("model", "co2")))] == 1
    assert s[("tabserve_prediction_g_per_km_bucket", (("le", "250.0"), ("model", "co2")))] == 1
    assert s[("tabserve_prediction_g_per_km_bucket", (("le", "200.0"), ("model", "co2")))] == 0
    assert s[("tabserve_class_predictions_total", (("class", "Adelie"), ("model", "penguins")))] == 1
    assert s[("tabserve_top_class_probability_ratio_bucket", (("le", "0.95"), ("model", "penguins")))] == 0
    assert s[("tabserve_rejected_requests_total", (("reason", "overload"),))] == 1


def test_model_info_replaces_previous_version_on_reload() -> None:
    metrics = ServiceMetrics()
    metrics.model_info("co2", "1.0.0", "aa", degraded=False)
    metrics.model_info("penguins", "1.0.0", "bb", degraded=False)
    metrics.model_info("co2", "1.1.0", "cc", degraded=True)
    info = {k: v for k, v in _samples(metrics).items() if k[0] == "tabserve_model_info"}
    co2 = (("degraded", "true"), ("model", "co2"), ("sha256", "cc"), ("version", "1.1.0"))
    penguins = (("degraded", "false"), ("model", "penguins"), ("sha256", "bb"), ("version", "1.0.0"))
    assert info == {("tabserve_model_info", co2): 1, ("tabserve_model_info", penguins): 1}
    metrics.model_removed("penguins")
    assert len([k for k in _samples(metrics) if k[0] == "tabserve_model_info"]) == 1


def test_store_adapter_feeds_prediction_log_series() -> None:
    metrics = ServiceMetrics()
    store = metrics.store_metrics()
    store.queue_depth(7)
    store.written(3)
    store.written(2)
    store.spilled(4)
    store.replayed(1)
    store.spill_failed(6)
    s = _samples(metrics)
    assert s[("tabserve_prediction_log_queue_rows", ())] == 7
    assert s[("tabserve_prediction_log_written_rows_total", ())] == 5
    assert s[("tabserve_prediction_log_spilled_rows_total", ())] == 4
    assert s[("tabserve_prediction_log_replayed_rows_total", ())] == 1
    assert s[("tabserve_prediction_log_lost_rows_total", ())] == 6


def test_drift_gauge_holds_latest_psi() -> None:
    metrics = ServiceMetrics()
    metrics.drift("co2", "engine_size_l", 0.3)
    metrics.drift("co2", "engine_size_l", 0.05)
    assert _samples(metrics)[("tabserve_drift_psi_score", (("feature", "engine_size_l"), ("model", "co2")))] == 0.05


def test_multiprocess_refused_without_env_before_import(tmp_path: Path) -> None:
    if os.environ.get(MULTIPROC_ENV):
        pytest.skip("the test process itself runs in multiprocess mode")
    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        ServiceMetrics(multiprocess_dir=tmp_path)


_WORKER = """
import sys
from pathlib import Path
from tabserve.observability.metrics import ServiceMetrics
m = ServiceMetrics(multiprocess_dir=Path(sys.argv[1]))
m.request("/predict", "co2", 200, 0.001)
m.rows("co2", int(sys.argv[2]))
m.model_info("co2", "1.0.0", "aa", degraded=False)
m.in_flight_inc()
if len(sys.argv) > 3:
    sys.stdout.write(m.render()[0].decode())
else:
    m.close()  # what a worker's shutdown does: buffered observations reach the shared files
"""


def test_render_merges_workers_and_drops_dead_gauges_in_multiprocess_mode(tmp_path: Path) -> None:
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    for rows in (3, 4):
        subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path), str(rows)], env=env, check=True)
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(tmp_path), "5", "render"], env=env, check=True, capture_output=True
    )
    s = {}
    for family in text_string_to_metric_families(done.stdout.decode()):
        for sample in family.samples:
            s[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert s[("tabserve_predicted_rows_total", (("model", "co2"),))] == 12
    assert s[("tabserve_requests_total", (("model", "co2"), ("route", "/predict"), ("status", "200")))] == 3
    # the two finished workers' live gauges were dropped: only the rendering process is in flight
    assert s[("tabserve_in_flight_requests", ())] == 1


def test_observe_many_equals_observing_one_by_one() -> None:
    import random

    rng = random.Random(5)
    values = [rng.choice([0.0, 0.1, 0.25, 0.26, 1.0, 7.5, 9.99, 10.0, 11.0, 1e9]) for _ in range(500)]
    _assert_bulk_equals_one_by_one(values)
    _assert_bulk_equals_one_by_one(values[:7])  # the pure-Python path of a short list


def _assert_bulk_equals_one_by_one(values: list[float]) -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from tabserve.observability.pending import observe_many

    texts = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h_seconds", "h", ["m"], registry=registry).labels("co2")
        if bulk:
            observe_many(histogram, values)
        else:
            for value in values:
                histogram.observe(value)
        texts.append([line for line in generate_latest(registry).splitlines() if line.startswith(b"h_seconds")])
    one_by_one, bulk_lines = texts
    assert [line for line in one_by_one if b"_sum" not in line and b"_created" not in line] == [
        line for line in bulk_lines if b"_sum" not in line and b"_created" not in line
    ]
    sums = [float(next(line for line in lines if b"_sum" in line).split()[-1]) for lines in texts]
    assert sums[1] == pytest.approx(sums[0], rel=1e-12)  # only the order of float additions differs
