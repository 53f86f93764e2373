"""Adaptive conformal inference: the effective level's arithmetic, the quantile at any level, and a replay of
the NRCan MY2021-2022 rows in time order as predict + feedback against co2 1.0.0 (fitted <= 2017, which
under-covers on those years): with adaptive levels the live coverage comes into the band, without it does not."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import data_dir
from tabserve.adaptive import MAX_LEVEL, effective_level, quantile_at

REPLAY_FILE = "fuel_consumption_ratings_2021_2022.csv"
FUEL = {
    "City (L/100 km)": "fuel_consumption_city_l_per_100km",
    "Highway (L/100 km)": "fuel_consumption_hwy_l_per_100km",
    "Combined (L/100 km)": "fuel_consumption_comb_l_per_100km",
}


def test_effective_level_integrates_misses_when_feedback_counts_grow() -> None:
    assert effective_level(0.9, 0.005, 0, 0) == 0.9
    # alpha_{T+1} = alpha + gamma * sum(alpha - err): 100 answers, 30 misses -> 0.1 + 0.005 * (10 - 30) = 0.0
    assert effective_level(0.9, 0.005, 100, 30) == pytest.approx(MAX_LEVEL)  # clipped at the top
    assert effective_level(0.9, 0.005, 100, 20) == pytest.approx(0.95)  # 0.1 - 0.05
    assert effective_level(0.9, 0.005, 100, 10) == pytest.approx(0.9)  # misses at the nominal rate: no change
    assert effective_level(0.9, 0.005, 100, 0) == pytest.approx(0.85)  # 0.1 + 0.05 = 0.15
    assert effective_level(0.9, 0.005, 1000, 0) == pytest.approx(0.8)  # 0.6, clipped at 2 x alpha


def test_quantile_at_any_level_interpolates_in_log_miscoverage_when_between_levels() -> None:
    table = {0.8: 10.0, 0.9: 20.0, 0.95: 30.0, 0.99: 50.0}
    assert quantile_at(table, 0.9) == 20.0
    assert quantile_at(table, 0.93) == pytest.approx(20.0 + 10.0 * math.log(0.1 / 0.07) / math.log(2.0), rel=1e-9)
    values = [quantile_at(table, lv) for lv in (0.5, 0.8, 0.85, 0.9, 0.97, 0.99, 0.995, MAX_LEVEL)]
    assert values == sorted(values)  # monotone, extrapolated on both sides
    assert quantile_at({0.5: 0.2, 0.9: 0.9}, 0.999, upper=1.0) == 1.0  # a prediction set's quantile stays <= 1


def _replay_rows() -> list[dict[str, Any]]:
    with (data_dir() / REPLAY_FILE).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows.sort(key=lambda r: int(r["Model year"]))  # time order (stable: file order within a model year)
    out = []
    for row in rows:
        specs = {
            "make": row["Make"],
            "model": row["Model"],
            "vehicle_class": row["Vehicle class"],
            "engine_size_l": float(row["Engine size (L)"]),
            "cylinders": int(row["Cylinders"]),
            "transmission": row["Transmission"],
            "fuel_type": row["Fuel type"],
            "model_year": int(row["Model year"]),
        }
        fuel = {name: float(row[column]) for column, name in FUEL.items()}
        out.append({"specs": specs, "fuel": {**specs, **fuel}, "actual": float(row["CO2 emissions (g/km)"])})
    return out


def _replay(client: TestClient, rows: list[dict[str, Any]]) -> dict[str, list[bool]]:
    hits: dict[str, list[bool]] = {"specs": [], "fuel": []}
    for row in rows:
        for kind in ("specs", "fuel"):
            answer = client.post("/models/co2/predict", json=row[kind])
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["interval"]["level"] == 0.9  # the requested level, whatever the effective one
            hits[kind].append(body["interval"]["lower"] <= row["actual"] <= body["interval"]["upper"])
            fed = client.post("/feedback", json={"request_id": body["request_id"], "actual": row["actual"]})
            assert fed.status_code == 200, fed.text
    return hits


def _tail(hits: list[bool], n: int) -> float:
    return sum(hits[-n:]) / n


def test_replay_of_2021_2022_converges_into_the_band_with_adaptive_levels_when_fixed_does_not(
    make_client: Callable[..., TestClient],
) -> None:
    rows = _replay_rows()
    assert len(rows) > 1500
    settings = {"models": "co2=1.0.0", "coverage_refresh_s": 0.0, "coverage_window": 500, "warmup": False}
    fixed_client = make_client(**settings)
    fixed = _replay(fixed_client, rows)
    adaptive_client = make_client(**settings, coverage_adaptive=True)
    adaptive = _replay(adaptive_client, rows)

    fixed_report = {c["pattern"]: c for c in fixed_client.get("/models/co2/coverage").json()["cells"]}
    adaptive_report = {c["pattern"]: c for c in adaptive_client.get("/models/co2/coverage").json()["cells"]}
    for kind, pattern in (("specs", "000"), ("fuel", "111")):
        # the service's own window (newest 500 answers with feedback) agrees with what the client saw
        assert fixed_report[pattern]["samples"] == adaptive_report[pattern]["samples"] == 500
        assert fixed_report[pattern]["coverage"] == pytest.approx(_tail(fixed[kind], 500))
        assert adaptive_report[pattern]["coverage"] == pytest.approx(_tail(adaptive[kind], 500))
        assert fixed_report[pattern]["coverage"] < 0.87, (kind, fixed_report[pattern])
        assert 0.87 <= adaptive_report[pattern]["coverage"] <= 0.93, (kind, adaptive_report[pattern])
        assert adaptive_report[pattern]["effective_level"] > 0.9
        assert adaptive_report[pattern]["status"] == "ok"
    assert fixed_report["000"]["status"] == "under"  # specs only (~0.74) is clearly out of the band
    print(
        "replay coverage, newest 500 (fixed -> adaptive): "
        + ", ".join(
            f"{p}: {fixed_report[p]['coverage']:.3f} -> {adaptive_report[p]['coverage']:.3f} "
            f"(effective level {adaptive_report[p]['effective_level']:.4f})"
            for p in ("000", "111")
        )
        + f"; whole replay fixed specs {sum(fixed['specs']) / len(rows):.3f}, fuel {sum(fixed['fuel']) / len(rows):.3f}"
    )
