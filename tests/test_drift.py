"""Drift: PSI against reference histograms flags shifted features and only those; window and report files."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tabserve.features.text import normalise_key
from tabserve.observability.drift import (
    DriftMonitor,
    drift_from_inputs,
    psi,
    psi_status,
    write_drift_report,
)
from tabserve.training.describe import category_shares, numeric_histogram

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TABSERVE_TEST_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
KAGGLE = DATA_DIR / "co2_canada_kaggle.csv"
NUMERIC = {
    "engine_size_l": "Engine Size(L)",
    "cylinders": "Cylinders",
    "fuel_consumption_city_l_per_100km": "Fuel Consumption City (L/100 km)",
    "fuel_consumption_hwy_l_per_100km": "Fuel Consumption Hwy (L/100 km)",
    "fuel_consumption_comb_l_per_100km": "Fuel Consumption Comb (L/100 km)",
}
CATEGORY = {"make": "Make", "vehicle_class": "Vehicle Class", "transmission": "Transmission", "fuel_type": "Fuel Type"}


def _co2_rows() -> list[dict[str, Any]]:
    if not KAGGLE.exists():
        pytest.skip(f"training data not found at {KAGGLE}")
    with KAGGLE.open(newline="", encoding="utf-8") as handle:
        raw = list(csv.DictReader(handle))
    rows = []
    for record in raw:
        row: dict[str, Any] = {name: float(record[col]) for name, col in NUMERIC.items()}
        row.update({name: normalise_key(record[col]) for name, col in CATEGORY.items()})
        rows.append(row)
    return rows


def _split(rows: list[dict[str, Any]], seed: int = 7) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    return shuffled[:half], shuffled[half:]


def _reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    histograms: dict[str, Any] = {name: numeric_histogram([r[name] for r in rows]) for name in NUMERIC}
    histograms.update({name: category_shares(r[name] for r in rows) for name in CATEGORY})
    return {"reference_histograms": histograms}


def _flagged(report: Mapping[str, Any]) -> set[str]:
    return {name for name, entry in report["features"].items() if entry["status"] != "ok"}


def _shift(rows: list[dict[str, Any]], numeric: str, category: str, new_code: str) -> list[dict[str, Any]]:
    shifted = []
    for i, original in enumerate(rows):
        row = dict(original)
        row[numeric] = row[numeric] * 1.5
        if i % 4 == 0:
            row[category] = new_code
        shifted.append(row)
    return shifted


def test_psi_is_zero_for_equal_shares_and_grows_with_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert 0 < psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])
    assert math.isfinite(psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]))
    assert [psi_status(v) for v in (0.05, 0.1, 0.2, 0.25, 1.0)] == ["ok", "watch", "watch", "drift", "drift"]


def test_unshifted_co2_sample_flags_no_feature() -> None:
    reference_rows, fresh = _split(_co2_rows())
    monitor = DriftMonitor(window=1000)
    monitor.register("co2", _reference(reference_rows), version="test")
    for row in fresh[:1500]:
        monitor.add("co2", row)
    report = monitor.report("co2")
    assert (report["n"], report["n_seen"], report["window_size"]) == (1000, 1500, 1000)
    assert _flagged(report) == set(), {k: v["psi"] for k, v in report["features"].items()}
    assert report["status"] == "ok"


def test_shifted_co2_sample_flags_exactly_engine_size_and_transmission() -> None:
    reference_rows, fresh = _split(_co2_rows())
    shifted = _shift(fresh[:1000], "engine_size_l", "transmission", "AS11")
    report = drift_from_inputs(_reference(reference_rows), shifted, model="co2")
    assert _flagged(report) == {"engine_size_l", "transmission"}
    assert report["features"]["engine_size_l"]["status"] == "drift"
    transmission = report["features"]["transmission"]
    assert transmission["status"] == "drift"
    assert transmission["new_categories"] == {"AS11": 0.25}
    assert transmission["new_share"] == 0.25
    assert report["status"] == "drift"


def _sample_from_histograms(histograms: Mapping[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic instances drawn from the reference histograms themselves (uniform within a bin)."""
    rng = random.Random(seed)
    columns: dict[str, list[Any]] = {}
    for name, hist in histograms.items():
        if hist["kind"] == "numeric":
            edges, counts = hist["edges"], hist["counts"]
            bins = rng.choices(range(len(counts)), weights=counts, k=n)
            values = []
            for b in bins:
                lo = edges[b] if edges[b] > -1e300 else edges[b + 1] - 1.0
                hi = edges[b + 1] if edges[b + 1] < 1e300 else edges[b] + 1.0
                values.append(rng.uniform(lo, hi) if hi > lo else lo)
            columns[name] = values
        else:
            keys = list(hist["shares"])
            drawn = rng.choices(keys, weights=[hist["shares"][k] for k in keys], k=n)
            columns[name] = [None if k == "(missing)" else k for k in drawn]
    return [{name: values[i] for name, values in columns.items()} for i in range(n)]


@pytest.mark.parametrize(
    ("model", "numeric", "category", "new_code"),
    [("penguins", "body_mass_g", "island", "ANVERS"), ("co2", "engine_size_l", "transmission", "AS11")],
)
def test_real_manifest_flags_only_shifted_features(model: str, numeric: str, category: str, new_code: str) -> None:
    path = REPO / "models" / model / "1.0.0" / "manifest.json"
    if not path.exists():
        pytest.skip(f"{path} not trained yet")
    manifest = json.loads(path.read_text())
    histograms = manifest["reference_histograms"]
    if numeric not in histograms or category not in histograms:
        pytest.skip(f"{model} manifest has no histograms for {numeric}/{category}")
    sample = _sample_from_histograms(histograms, 1000, seed=3)
    assert _flagged(drift_from_inputs(manifest, sample)) == set()
    shifted = _shift(sample, numeric, category, new_code)
    assert _flagged(drift_from_inputs(manifest, shifted)) == {numeric, category}


HAND_MADE = {
    "reference_histograms": {
        "x": {"kind": "numeric", "edges": [-1e308, 1.0, 2.0, 1e308], "counts": [10, 10, 10]},
        "c": {"kind": "category", "shares": {"A": 0.5, "B": 0.4, "(missing)": 0.1}},
    }
}


def test_window_keeps_only_latest_instances() -> None:
    monitor = DriftMonitor(window=3, min_rows=1)
    monitor.register("m", HAND_MADE)
    for value in (5.0, 5.0, 5.0, 0.5, 1.5, 2.5):
        monitor.add("m", {"x": value, "c": "A"})
    report = monitor.report("m")
    assert (report["n"], report["n_seen"]) == (3, 6)
    assert report["features"]["x"]["current"]["shares"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert report["features"]["x"]["status"] == "ok"


def test_add_columns_matches_rows_added_one_by_one() -> None:
    rows = [{"x": float(i % 4), "c": "AB"[i % 2] if i % 5 else None} for i in range(50)]
    one, batch = DriftMonitor(window=20, min_rows=1), DriftMonitor(window=20, min_rows=1)
    one.register("m", HAND_MADE)
    batch.register("m", HAND_MADE)
    for row in rows:
        one.add("m", row)
    batch.add_columns("m", {"x": [r["x"] for r in rows], "c": [r["c"] for r in rows]}, len(rows))
    assert one.report("m") == batch.report("m")


def test_window_mixing_batches_and_single_instances_keeps_the_latest_rows_in_order() -> None:
    rows = [{"x": float(i % 7) / 2, "c": "AB"[i % 3 == 0]} for i in range(95)]
    one, mixed = DriftMonitor(window=20, min_rows=1), DriftMonitor(window=20, min_rows=1)
    one.register("m", HAND_MADE)
    mixed.register("m", HAND_MADE)
    for row in rows:
        one.add("m", row)
    start = 0
    for size in (1, 13, 1, 1, 30, 2, 1, 7, 1, 25, 1, 1, 11):  # batches that straddle the window's edge, and singles
        chunk = rows[start : start + size]
        if size == 1:
            mixed.add("m", chunk[0])
        else:
            mixed.add_columns("m", {"x": [r["x"] for r in chunk], "c": [r["c"] for r in chunk]}, size)
        start += size
    assert start == len(rows)
    assert one.report("m") == mixed.report("m")
    assert mixed.report("m")["n"] == 20 and mixed.report("m")["n_seen"] == 95
    window = mixed._models["m"]
    oldest = window.segments[0]
    oldest_size = 1 if isinstance(oldest, tuple) else oldest.n
    assert window.held - oldest_size < 20 <= window.held  # only a batch straddling the edge is kept beyond it


def test_report_insufficient_below_min_rows_and_missing_counted() -> None:
    monitor = DriftMonitor(window=100, min_rows=10)
    monitor.register("m", HAND_MADE)
    monitor.add("m", {"x": None, "c": None})
    monitor.add("m", {"x": 1.5, "c": "Q"})
    report = monitor.report("m")
    assert report["status"] == "insufficient_data"
    x, c = report["features"]["x"], report["features"]["c"]
    assert (x["status"], x["n"], x["missing_share"]) == ("insufficient_data", 1, 0.5)
    assert c["current"]["shares"]["(missing)"] == 0.5
    assert c["new_categories"] == {"Q": 0.5}


def test_empty_window_reports_no_data() -> None:
    monitor = DriftMonitor(window=10, min_rows=0)
    monitor.register("m", HAND_MADE)
    report = monitor.report("m")
    assert {entry["status"] for entry in report["features"].values()} == {"no_data"}
    assert all(entry["psi"] is None for entry in report["features"].values())


def test_unknown_model_ignored_on_add_and_raises_on_report() -> None:
    monitor = DriftMonitor(window=10)
    monitor.add("nope", {"x": 1.0})
    with pytest.raises(KeyError):
        monitor.report("nope")


def test_observer_receives_psi_per_feature() -> None:
    seen: list[tuple[str, str, float]] = []
    monitor = DriftMonitor(window=10, min_rows=1, observer=lambda m, f, v: seen.append((m, f, v)))
    monitor.register("m", HAND_MADE)
    monitor.add("m", {"x": 0.0, "c": "A"})
    monitor.report("m")
    assert [(m, f) for m, f, _ in seen] == [("m", "x"), ("m", "c")]
    assert all(v > 0 for _, _, v in seen)


def test_reregister_resets_window() -> None:
    monitor = DriftMonitor(window=10, min_rows=1)
    monitor.register("m", HAND_MADE)
    monitor.add("m", {"x": 0.0, "c": "A"})
    monitor.register("m", HAND_MADE, version="2")
    report = monitor.report("m")
    assert (report["n"], report["n_seen"], report["model_version"]) == (0, 0, "2")


def test_write_drift_report_produces_json_and_self_contained_html(tmp_path: Path) -> None:
    monitor = DriftMonitor(window=10, min_rows=1)
    monitor.register("m", HAND_MADE, version="1.0.0")
    for row in ({"x": 0.5, "c": "A"}, {"x": 3.0, "c": "<NEW>"}):
        monitor.add("m", row)
    json_path, html_path = write_drift_report(monitor.report("m"), tmp_path / "out")
    assert json.loads(json_path.read_text())["features"]["c"]["new_categories"] == {"<NEW>": 0.5}
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "&lt;NEW&gt;" in page
    assert "<NEW>" not in page
    assert "http" not in page.replace("data:image", "")


def test_serving_modules_do_not_import_matplotlib() -> None:
    code = (
        "import sys\n"
        "import tabserve.observability.drift, tabserve.observability.metrics\n"
        "import tabserve.observability.logging, tabserve.observability.tracing\n"
        "sys.exit(1 if 'matplotlib' in sys.modules or 'pandas' in sys.modules else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
