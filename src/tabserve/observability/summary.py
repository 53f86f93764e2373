"""The operations summary: the Prometheus exposition that ``/metrics`` serves, reduced to the figures the
operations page draws (``GET /operations/summary``).

One source of truth: ``operations_summary`` parses the very text ``ServiceMetrics.render()`` returns (every
worker merged in multiprocess mode), so each number on the page is one a scrape of ``/metrics`` at the same
moment reads. Counters and histogram buckets are cumulative since start; the page takes rates and windowed
percentiles from the differences between two summaries, with ``histogram_quantile`` below (Prometheus's
rule: linear interpolation inside the bucket that holds the rank).

Prediction routes are the templates ending in ``/predict`` or ``/infer``; their latency is the service's
latency (the page's own polling and the scrapes stay out of it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

QUANTILES = (0.5, 0.95, 0.99)
PREDICTION_ROUTE_SUFFIXES = ("/predict", "/infer")


def is_prediction_route(route: str) -> bool:
    return route.endswith(PREDICTION_ROUTE_SUFFIXES)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets (sorted, ``+Inf`` last), as Prometheus's
    ``histogram_quantile``: None without observations; the highest finite bound when the rank falls in ``+Inf``."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _samples(text: str) -> dict[str, list[Sample]]:
    """Sample name -> samples (``_total``, ``_bucket``, ``_count`` ... kept as exposed)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _merge_buckets(samples: Iterable[Sample]) -> list[tuple[float, float]]:
    """Cumulative buckets summed over label sets (same bucket bounds in every series of one histogram)."""
    merged: dict[float, float] = {}
    for sample in samples:
        bound = float(sample.labels["le"])
        merged[bound] = merged.get(bound, 0.0) + sample.value
    return sorted(merged.items())


def _requests(samples: Mapping[str, list[Sample]]) -> dict[str, Any]:
    by_status: dict[str, float] = {}
    prediction_by_status: dict[str, float] = {}
    by_model: dict[str, dict[str, float]] = {}
    for sample in samples.get("tabserve_requests_total", []):
        status = sample.labels["status"]
        by_status[status] = by_status.get(status, 0.0) + sample.value
        if is_prediction_route(sample.labels["route"]):
            prediction_by_status[status] = prediction_by_status.get(status, 0.0) + sample.value
            per_model = by_model.setdefault(sample.labels["model"], {})
            per_model[status] = per_model.get(status, 0.0) + sample.value
    return {
        "total": sum(by_status.values()),
        "by_status": dict(sorted(by_status.items())),
        "prediction_total": sum(prediction_by_status.values()),
        "prediction_by_status": dict(sorted(prediction_by_status.items())),
        "prediction_by_model": {m: dict(sorted(s.items())) for m, s in sorted(by_model.items())},
    }


def _latency(samples: Mapping[str, list[Sample]]) -> dict[str, Any]:
    name = "tabserve_request_duration_seconds"
    picked = [s for s in samples.get(name + "_bucket", []) if is_prediction_route(s.labels["route"])]
    buckets = _merge_buckets(picked)
    total = sum(s.value for s in samples.get(name + "_sum", []) if is_prediction_route(s.labels["route"]))
    count = buckets[-1][1] if buckets else 0.0
    out: dict[str, Any] = {"buckets": [[_bound(b), c] for b, c in buckets], "count": count, "sum": total}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = histogram_quantile(q, buckets)
    return out


def _bound(value: float) -> float | str:
    return "+Inf" if math.isinf(value) else value


def _predictions(samples: Mapping[str, list[Sample]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    regression: dict[str, list[Sample]] = {}
    for sample in samples.get("tabserve_prediction_g_per_km_bucket", []):
        regression.setdefault(sample.labels["model"], []).append(sample)
    for model, picked in sorted(regression.items()):
        buckets = _merge_buckets(picked)
        if buckets[-1][1] > 0:  # every model has the series (zero for a classifier): only regressions fill it
            out[model] = {
                "task": "regression",
                "buckets": [[_bound(b), c] for b, c in buckets],
                "count": buckets[-1][1],
            }
    classes: dict[str, dict[str, float]] = {}
    for sample in samples.get("tabserve_class_predictions_total", []):
        classes.setdefault(sample.labels["model"], {})[sample.labels["class"]] = sample.value
    for model, counts in sorted(classes.items()):
        out[model] = {"task": "classification", "classes": dict(sorted(counts.items())), "count": sum(counts.values())}
    return dict(sorted(out.items()))


def _by_model_feature(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for sample in samples:
        out.setdefault(sample.labels["model"], {})[sample.labels["feature"]] = sample.value
    return {model: dict(sorted(features.items())) for model, features in sorted(out.items())}


COVERAGE_GAUGES = {
    "coverage": "tabserve_coverage_ratio",
    "samples": "tabserve_coverage_samples",
    "covered": "tabserve_coverage_covered",
    "wilson_lower": "tabserve_coverage_wilson_lower",
    "wilson_upper": "tabserve_coverage_wilson_upper",
    "band_lower": "tabserve_coverage_band_lower",
    "band_upper": "tabserve_coverage_band_upper",
}


def _coverage(samples: Mapping[str, list[Sample]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for field, name in COVERAGE_GAUGES.items():
        for sample in samples.get(name, []):
            labels = sample.labels
            key = (labels["model"], labels["version"], labels["level"], labels["pattern"])
            cell = cells.setdefault(
                key, {"model": key[0], "version": key[1], "level": float(key[2]), "pattern": key[3]}
            )
            cell[field] = None if math.isnan(sample.value) else sample.value
    return [cells[key] for key in sorted(cells) if cells[key].get("samples")]


def _models(samples: Mapping[str, list[Sample]]) -> list[dict[str, Any]]:
    served = [s.labels for s in samples.get("tabserve_model_info", []) if s.value > 0]
    return [
        {"name": m["model"], "version": m["version"], "degraded": m["degraded"] == "true"}
        for m in sorted(served, key=lambda labels: labels["model"])
    ]


def operations_summary(
    exposition: str, now: float | None = None, drift_windows: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The summary of one exposition text (``ServiceMetrics.render()``'s body, decoded); ``drift_windows`` (rows in
    the drift window, rows needed, status per model: not a series) is passed through as ``drift_window``."""
    samples = _samples(exposition)
    rejected = {s.labels["reason"]: s.value for s in samples.get("tabserve_rejected_requests_total", [])}
    in_flight = samples.get("tabserve_in_flight_requests", [])
    return {
        "time": time.time() if now is None else now,
        "models": _models(samples),
        "requests": _requests(samples),
        "rejected": dict(sorted(rejected.items())),
        "in_flight": sum(s.value for s in in_flight),
        "latency_seconds": _latency(samples),
        "predictions": _predictions(samples),
        "drift_psi": _by_model_feature(samples.get("tabserve_drift_psi_score", [])),
        "drift_window": {name: dict(window) for name, window in sorted((drift_windows or {}).items())},
        "out_of_distribution": _by_model_feature(samples.get("tabserve_out_of_distribution_total", [])),
        "coverage": _coverage(samples),
    }
