"""The hot-path observation buffer: nothing recorded is lost, and it reaches prometheus_client on time."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram

from tabserve.observability.metrics import ServiceMetrics
from tabserve.observability.pending import ObservationBuffer, PendingCounter, PendingHistogram


def _parts() -> tuple[ObservationBuffer, CollectorRegistry, PendingHistogram, PendingCounter]:
    registry = CollectorRegistry()
    buffer = ObservationBuffer(interval_s=0.05, max_pending=5)
    histogram = buffer.histogram(Histogram("h_seconds", "h", ["m"], registry=registry).labels("co2"))
    counter = buffer.counter(Counter("c", "c", ["m"], registry=registry).labels("co2"))
    return buffer, registry, histogram, counter


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_recorded_values_wait_for_a_flush_then_all_arrive() -> None:
    buffer, registry, histogram, counter = _parts()
    histogram.values += [0.2, 3.0]
    counter.n += 2
    buffer.recorded(2)  # no event loop here: only the size bound would flush
    assert _value(registry, "h_seconds_count", m="co2") == 0
    buffer.flush()
    assert _value(registry, "h_seconds_count", m="co2") == 2
    assert _value(registry, "h_seconds_sum", m="co2") == 3.2
    assert _value(registry, "c_total", m="co2") == 2
    buffer.flush()  # nothing pending: nothing applied twice
    assert _value(registry, "c_total", m="co2") == 2


def test_too_many_pending_observations_flush_at_once() -> None:
    buffer, registry, _histogram, counter = _parts()
    for _ in range(5):
        counter.n += 1
        buffer.recorded()
    assert _value(registry, "c_total", m="co2") == 5


def test_a_running_loop_flushes_within_the_interval() -> None:
    buffer, registry, _histogram, counter = _parts()

    async def scenario() -> tuple[float, float]:
        counter.n += 1
        buffer.recorded()
        before = _value(registry, "c_total", m="co2")
        await asyncio.sleep(0.2)
        return before, _value(registry, "c_total", m="co2")

    assert asyncio.run(scenario()) == (0, 1)


def test_a_timer_left_on_a_closed_loop_does_not_stop_later_flushes() -> None:
    buffer, registry, _histogram, counter = _parts()

    async def record() -> None:
        counter.n += 1
        buffer.recorded()

    asyncio.run(record())  # the loop closes before its timer fires
    assert _value(registry, "c_total", m="co2") == 0
    buffer._overdue_at = 0.0  # as if the interval had long passed

    async def later() -> float:
        await record()  # overdue timer: flushes what waited and arms a timer on this loop
        await asyncio.sleep(0.2)
        return _value(registry, "c_total", m="co2")

    assert asyncio.run(later()) == 2


def test_service_metrics_render_and_close_apply_the_buffer() -> None:
    metrics = ServiceMetrics()
    metrics.request("/predict", "co2", 200, 0.001)
    metrics.rows("co2", 3)
    body, _ = metrics.render()
    assert b'tabserve_predicted_rows_total{model="co2"} 3.0' in body
    metrics.request("/predict", "co2", 200, 0.001)
    metrics.close()
    child = metrics.registry.get_sample_value(
        "tabserve_requests_total", {"route": "/predict", "model": "co2", "status": "200"}
    )
    assert child == 2
