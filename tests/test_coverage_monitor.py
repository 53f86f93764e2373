"""The coverage monitor's counting, from hand-made logged answers and feedback on the real SQLite and the real
PostgreSQL: exact samples and covered per version, level and pattern, the per-cell window, the age limit,
idempotent feedback, prediction sets, the Wilson band rule and the adaptive counts."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tabserve.observability.coverage import CoverageGauges, CoverageMonitor, CoverageRule, count_window, wilson
from tabserve.store import PredictionRecord
from tabserve.store.coverage import WindowRow, served
from tabserve.store.postgres import PostgresStore
from tabserve.store.sql import SqlStore
from tabserve.store.sqlite import SqliteStore

PG_URL = os.environ.get("TABSERVE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def interval(
    rid: str, version: str, level: float, pattern: str, lower: float, upper: float, **extra: Any
) -> PredictionRecord:
    inner: dict[str, Any] = {"level": level, "lower": lower, "upper": upper, **extra}
    return _record(rid, "co2", version, 200.0, {"interval": inner, "pattern": pattern})


def prediction_set(rid: str, chosen: list[str], pattern: str, **extra: Any) -> PredictionRecord:
    output = {"probabilities": dict.fromkeys(chosen, 0.5), "prediction_set": chosen, "level": 0.9, "pattern": pattern}
    return _record(rid, "penguins", "1.0.0", chosen[0], {**output, **extra})


def _record(rid: str, model: str, version: str, pred: float | str, output: dict[str, Any]) -> PredictionRecord:
    return PredictionRecord(rid, 0, time.time(), model, version, {}, {}, pred, output, [], False, 1.0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        sqlite = SqliteStore(tmp_path / "log.sqlite")
        yield sqlite
        sqlite.close()
        return
    pg = PostgresStore(PG_URL, schema=f"t_{uuid.uuid4().hex[:12]}")
    yield pg
    pg.drop_schema()
    pg.close()


def _cells(report: dict[str, Any]) -> dict[tuple[str, float, str], tuple[int, int]]:
    return {(c["version"], c["level"], c["pattern"]): (c["samples"], c["covered"]) for c in report["cells"]}


def test_counts_exact_per_version_level_and_pattern_when_feedback_arrives(store: SqlStore) -> None:
    records = [
        interval("a1", "1.0.0", 0.9, "111", 190.0, 210.0),  # 200 inside
        interval("a2", "1.0.0", 0.9, "111", 190.0, 210.0),  # 210 inside: the bounds are included
        interval("a3", "1.0.0", 0.9, "111", 190.0, 210.0),  # 230 outside
        interval("b1", "1.0.0", 0.9, "000", 150.0, 250.0),  # 140 outside
        interval("c1", "1.0.0", 0.95, "111", 100.0, 300.0),  # inside
        interval("d1", "2.0.0", 0.9, "111", 190.0, 210.0),  # inside, another version
        interval("e1", "1.0.0", 0.9, "111", 190.0, 210.0),  # logged, no feedback: not counted
    ]
    store.write(records)
    for rid, actual in [("a1", 200.0), ("a2", 210.0), ("a3", 230.0), ("b1", 140.0), ("c1", 250.0), ("d1", 195.0)]:
        store.attach_feedback(rid, None, actual)
    store.attach_feedback("a3", None, 230.0)  # an idempotent repeat counts once
    monitor = CoverageMonitor(store.labelled_window, window=100, rule=CoverageRule(min_samples=1))
    report = monitor.compute("co2", {"111": "all fuel figures"})
    assert _cells(report) == {
        ("1.0.0", 0.9, "111"): (3, 2),
        ("1.0.0", 0.9, "000"): (1, 0),
        ("1.0.0", 0.95, "111"): (1, 1),
        ("2.0.0", 0.9, "111"): (1, 1),
    }
    assert report["window"]["rows_read"] == 6
    first = next(c for c in report["cells"] if c["pattern"] == "111" and c["level"] == 0.9 and c["version"] == "1.0.0")
    assert first["coverage"] == round(2 / 3, 6)
    assert first["pattern_name"] == "all fuel figures"
    assert monitor.compute("penguins", {})["cells"] == []


def test_window_keeps_the_newest_feedback_of_each_cell_when_full(store: SqlStore) -> None:
    store.write([interval(f"r{i}", "1.0.0", 0.9, "1", 0.0, 10.0) for i in range(6)])
    store.write([interval("other", "1.0.0", 0.9, "0", 0.0, 10.0)])
    for i, actual in enumerate([50.0, 50.0, 5.0, 5.0, 5.0, 50.0]):  # feedback order: the last three are newest
        store.attach_feedback(f"r{i}", None, actual)
        time.sleep(0.002)
    store.attach_feedback("other", None, 50.0)
    monitor = CoverageMonitor(store.labelled_window, window=3, rule=CoverageRule(min_samples=1))
    assert _cells(monitor.compute("co2", {})) == {("1.0.0", 0.9, "1"): (3, 2), ("1.0.0", 0.9, "0"): (1, 0)}
    late = CoverageMonitor(store.labelled_window, window=3, max_age_s=60.0, clock=lambda: time.time() + 3600.0)
    assert late.compute("co2", {})["cells"] == []  # feedback older than max_age_s is out of the window


def test_prediction_sets_count_the_label_inside_when_classification(store: SqlStore) -> None:
    store.write([
        prediction_set("p1", ["Adelie"], "11"),
        prediction_set("p2", ["Adelie", "Chinstrap"], "11"),
        prediction_set("p3", ["Gentoo"], "10"),
    ])  # fmt: skip
    store.attach_feedback("p1", None, "Adelie")
    store.attach_feedback("p2", None, "Gentoo")
    store.attach_feedback("p3", None, "Gentoo")
    monitor = CoverageMonitor(store.labelled_window, window=10)
    assert _cells(monitor.compute("penguins", {})) == {("1.0.0", 0.9, "11"): (2, 1), ("1.0.0", 0.9, "10"): (1, 1)}


def test_adaptive_counts_only_rows_served_adaptively_when_feedback_arrives(store: SqlStore) -> None:
    store.write([
        interval("f1", "1.0.0", 0.9, "000", 190.0, 210.0),
        interval("g1", "1.0.0", 0.9, "000", 190.0, 210.0, effective_level=0.93),
        interval("g2", "1.0.0", 0.9, "000", 190.0, 210.0, effective_level=0.94),
        prediction_set("h1", ["Adelie"], "11", effective_level=0.91),
    ])  # fmt: skip
    for rid, actual in [("f1", 300.0), ("g1", 300.0), ("g2", 200.0)]:
        store.attach_feedback(rid, None, actual)
    store.attach_feedback("g1", None, 300.0)  # repeat: not counted again
    store.attach_feedback("h1", None, "Gentoo")
    assert store.adaptive_counts("co2") == {("1.0.0", 0.9, "000"): (2, 1)}
    assert store.adaptive_counts("penguins") == {("1.0.0", 0.9, "11"): (1, 1)}


def test_rows_logged_without_a_pattern_count_under_an_empty_pattern_when_old() -> None:
    rows: list[WindowRow] = [("1.0.0", '{"interval":{"level":0.9,"lower":1,"upper":2}}', 1.5, None, 1.0)]
    rows += [("1.0.0", '{"interval":{"0.9":{"lower":1,"upper":2}}}', 1.5, None, 1.0)]  # no served level: skipped
    assert count_window(rows, 10) == {("1.0.0", 0.9, ""): [1, 1, 0]}
    assert served("not json") is None
    assert served({"prediction_set": ["A"]}) is None


def test_wilson_and_band_rule_match_hand_computed_values_when_judged() -> None:
    lower, upper = wilson(90, 100, 1.96)
    assert lower == pytest.approx(0.8256, abs=1e-4)  # the textbook Wilson interval of 90/100
    assert upper == pytest.approx(0.9448, abs=1e-4)
    rule = CoverageRule(tolerance=0.03, z=2.576, min_samples=200)
    assert rule.status(0.9, 90, 100)[0] == "too_few"
    assert rule.status(0.9, 180, 200)[0] == "ok"
    assert rule.status(0.9, 150, 200)[0] == "under"  # 0.75: the upper bound ~0.81 < 0.87
    assert rule.status(0.9, 199, 200)[0] == "over"  # 0.995: the lower bound ~0.96 > 0.93
    assert rule.status(0.9, 172, 200)[0] == "ok"  # 0.86 is below the band but not clearly so


def test_gauges_carry_the_report_and_zero_a_cell_that_left_the_window_when_set() -> None:
    registry = CollectorRegistry()
    gauges = CoverageGauges(registry)
    cell = {
        "version": "1.0.0", "level": 0.9, "pattern": "000", "samples": 300, "covered": 240, "coverage": 0.8,
        "wilson": [0.74, 0.85], "band": [0.87, 0.93], "effective_level": 0.9,
    }  # fmt: skip
    gauges.set("co2", [cell])
    text = generate_latest(registry).decode()
    labels = 'level="0.9",model="co2",pattern="000",version="1.0.0"'
    assert f"tabserve_coverage_samples{{{labels}}} 300.0" in text
    assert f"tabserve_coverage_covered{{{labels}}} 240.0" in text
    assert f"tabserve_coverage_wilson_upper{{{labels}}} 0.85" in text
    gauges.set("co2", [])
    assert f"tabserve_coverage_samples{{{labels}}} 0.0" in generate_latest(registry).decode()


def test_report_is_reused_within_refresh_s_when_asked_again(store: SqlStore) -> None:
    calls: list[str] = []

    def source(model: str, since: float, limit: int) -> list[Any]:
        calls.append(model)
        return store.labelled_window(model, since, limit)

    monitor = CoverageMonitor(source, refresh_s=60.0)
    first = monitor.report("co2")
    assert monitor.report("co2") is first
    assert calls == ["co2"]
    assert CoverageMonitor(source, refresh_s=0.0).report("co2") is not first


def test_report_is_kept_while_no_new_feedback_arrives_when_the_store_says_so(store: SqlStore) -> None:
    calls: list[str] = []

    def source(model: str, since: float, limit: int) -> list[Any]:
        calls.append(model)
        return store.labelled_window(model, since, limit)

    store.write([interval("k1", "1.0.0", 0.9, "1", 0.0, 10.0), interval("k2", "1.0.0", 0.9, "1", 0.0, 10.0)])
    assert store.latest_feedback_time() is None
    store.attach_feedback("k1", None, 5.0)
    monitor = CoverageMonitor(source, refresh_s=0.0, latest_feedback=store.latest_feedback_time)
    first = monitor.report("co2")
    assert monitor.report("co2") is first  # nothing new: the store is not read again
    assert calls == ["co2"]
    store.attach_feedback("k2", None, 50.0)
    assert _cells(monitor.report("co2")) == {("1.0.0", 0.9, "1"): (2, 1)}
    assert calls == ["co2", "co2"]
