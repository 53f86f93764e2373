"""Fast tests of the benchmark harness's logic (bench/): wrk result parsing, checks, report, SIGTERM split.

Nothing here starts a server or measures time; the harness itself is exercised by ``bash bench/run.sh``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.bodies import EXAMPLE_VEHICLE, FIELDS, v2_pandas_request  # noqa: E402
from bench.main import selected_sections, trim_log, with_tabserve_env  # noqa: E402
from bench.procs import parse_status_kb, process_tree, pss_mb, rss_mb  # noqa: E402
from bench.sigterm import Outcome, classify  # noqa: E402
from bench.targets import all_targets  # noqa: E402
from bench.wrkresult import WrkOutputError, parse_wrk_output  # noqa: E402


def wrk_line(statuses: dict[str, int], *, p99: int = 2000, timeouts: int = 0, bounds: tuple[int, int] = (0, 0)) -> str:
    requests = sum(statuses.values())
    data = {
        "duration_us": 10_000_000,
        "requests": requests,
        "bytes": requests * 100,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": timeouts},
        "statuses": statuses,
        "latency_us": {
            "min": 50,
            "mean": 700.0,
            "max": 9000,
            "stdev": 100.0,
            "percentiles": {"50": 600, "75": 800, "90": 1000, "99": p99, "99.9": 5000, "99.99": 8000},
        },
        "bounds_us": {"p99_2xx_upper": bounds[0], "p99_non2xx_upper": bounds[1]},
    }
    return "Running 10s test @ http://127.0.0.1:1/\n  noise\nBENCH_JSON " + json.dumps(data) + "\n"


def summary(statuses: dict[str, int], **kwargs: Any) -> dict[str, Any]:
    out = parse_wrk_output(wrk_line(statuses, **kwargs)).summary()
    out["connections"] = 16
    return out


def test_parse_wrk_output_computes_rates_and_latencies() -> None:
    result = parse_wrk_output(wrk_line({"200": 90_000, "503": 10_000}, bounds=(3000, 400)))
    assert result.requests == 100_000
    assert result.rps == pytest.approx(10_000.0)
    assert result.ok_rps == pytest.approx(9_000.0)
    assert result.non_2xx == 10_000
    assert result.p50_ms == pytest.approx(0.6)
    assert result.p99_ms == pytest.approx(2.0)
    assert result.p99_2xx_upper_ms == pytest.approx(3.0)
    assert result.p99_non2xx_upper_ms == pytest.approx(0.4)
    assert result.counts_agree


def test_parse_wrk_output_drops_bounds_when_no_response_of_that_kind() -> None:
    result = parse_wrk_output(wrk_line({"200": 5}, bounds=(2000, 9000)))
    assert result.p99_2xx_upper_ms == pytest.approx(2.0)
    assert result.p99_non2xx_upper_ms is None


@pytest.mark.parametrize("text", ["no result line", "BENCH_JSON {not json", "BENCH_JSON {}\nBENCH_JSON {}"])
def test_parse_wrk_output_rejects_missing_or_malformed_line(text: str) -> None:
    with pytest.raises(WrkOutputError):
        parse_wrk_output(text)


def tagged_line(statuses: dict[str, int], ok_p99_us: int, err_p99_us: int, untimed: int = 0) -> str:
    """A wrk line from a tagged run (post.lua with BENCH_TAG=1): exact quantiles per status class."""
    data = json.loads(wrk_line(statuses, bounds=(90_000, 80_000)).split("BENCH_JSON ", 1)[1])
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    data["by_status_us"] = {
        "2xx": {"count": ok, "50": ok_p99_us // 2, "90": ok_p99_us, "99": ok_p99_us, "99.9": ok_p99_us, "max": 1},
        "non2xx": {"count": sum(statuses.values()) - ok, "50": 100, "90": 200, "99": err_p99_us, "max": 1},
        "untimed": untimed,
    }
    return "BENCH_JSON " + json.dumps(data) + "\n"


def test_tagged_run_gives_exact_latency_per_status() -> None:
    result = parse_wrk_output(tagged_line({"200": 9_000, "503": 1_000}, 20_000, 3_000))
    assert result.exact_ms("2xx") == pytest.approx(20.0)
    assert result.exact_ms("non2xx") == pytest.approx(3.0)
    out = result.summary()
    assert out["p99_2xx_ms"] == pytest.approx(20.0) and out["p99_2xx_upper_ms"] == pytest.approx(90.0)
    assert out["by_status_ms"]["non2xx"]["count"] == 1_000
    # a response the server did not tag (no echoed id) makes the exact figures unusable: back to the bounds
    untimed = parse_wrk_output(tagged_line({"200": 9_000, "503": 1_000}, 20_000, 3_000, untimed=5))
    assert untimed.exact_ms("2xx") is None and untimed.summary()["p99_2xx_ms"] is None
    assert "p99_2xx_ms" not in parse_wrk_output(wrk_line({"200": 5})).summary()  # untagged run


def test_counts_agree_false_when_hook_missed_responses() -> None:
    text = wrk_line({"200": 10}).replace('"requests": 10', '"requests": 12')
    assert not parse_wrk_output(text).counts_agree


def results_fixture(ts_rps: int = 12_000, log_rps: int = 11_500, v2_batch_rps: int = 700) -> dict[str, Any]:
    def pt(n: int, p99: int = 2000, body: str | None = None) -> dict[str, Any]:
        out = summary({"200": n * 10}, p99=p99)
        if body is not None:
            out["body"] = body
        return out

    c1 = summary({"200": 30_000})
    c1["latency_ms"]["50"] = 0.3
    return {
        "meta": {"batch_rows": 1000},
        "servers": {
            "tabserve": {"title": "tabserve", "cold_start_median_s": 0.8, "rss_mb": {"tree": 90.0}},
            "tabserve-log": {"title": "tabserve log", "cold_start_median_s": 0.9, "rss_mb": {"tree": 95.0}},
            "floor": {"title": "floor", "cold_start_median_s": 0.3, "rss_mb": {"tree": 25.0}},
            "typical": {"title": "typical", "cold_start_median_s": 2.0, "rss_mb": {"tree": 200.0}},
            "mlserver": {"title": "mlserver", "cold_start_median_s": 4.0, "rss_mb": {"tree": 400.0}},
        },
        "points": {
            "tabserve": {
                "c16": pt(ts_rps, body="single"),
                "c1": c1,
                "batch": pt(600, body="batch"),
                "batch_v2": pt(v2_batch_rps, body="v2_batch"),
            },
            "tabserve-log": {"c16": pt(log_rps)},
            "floor": {"c16": pt(30_000)},
            "typical": {"c16": pt(200, p99=200_000, body="single")},
            "mlserver": {"c16": pt(300, p99=150_000, body="v2_single"), "batch": pt(50, body="v2_batch")},
        },
    }


def by_name(checks: list[report.Check]) -> dict[str, report.Check]:
    return {c.name: c for c in checks}


def test_compute_checks_pass_when_every_target_met() -> None:
    checks = by_name(report.compute_checks(results_fixture()))
    for name in [
        "req/s vs best peer",
        "req/s vs no-op floor",
        "p99 at 16 conns (tabserve)",
        "p50 at 1 conn",
        "log on vs off (req/s)",
        "batch of 1,000 rows (/predict rows)",
        "batch of 1,000 rows (V2 columns)",
        "cold start (exec → /ready 200)",
        "RSS after load",
        "non-2xx / timeouts / socket errors",
    ]:
        assert checks[name].status == "pass", checks[name]
    assert checks["req/s vs best peer"].measured == "40.0× (mlserver)"
    assert checks["overload"].status == "n/a"


def test_compute_checks_fail_when_log_on_too_slow_and_ratio_short() -> None:
    checks = by_name(report.compute_checks(results_fixture(ts_rps=5_000, log_rps=4_000)))
    assert checks["log on vs off (req/s)"].status == "fail"
    assert checks["req/s vs best peer"].status == "fail"  # 16.7x < 20x
    assert checks["req/s vs no-op floor"].status == "fail"  # 16.7 % < 25 %


def test_compute_checks_na_when_tabserve_missing() -> None:
    results = results_fixture()
    del results["points"]["tabserve"]
    checks = by_name(report.compute_checks(results))
    assert checks["req/s vs best peer"].status == "n/a"
    assert checks["batch of 1,000 rows (/predict rows)"].status == "n/a"
    assert checks["batch of 1,000 rows (V2 columns)"].status == "n/a"


def test_compute_checks_report_each_batch_form_on_its_own_row() -> None:
    checks = by_name(report.compute_checks(results_fixture(v2_batch_rps=300)))
    rows, v2 = checks["batch of 1,000 rows (/predict rows)"], checks["batch of 1,000 rows (V2 columns)"]
    assert (rows.status, rows.measured) == ("pass", "600,000 rows/s")
    assert (v2.status, v2.measured) == ("fail", "300,000 rows/s")  # the slower form is not hidden


def test_peer_batch_is_compared_with_tabserve_point_of_the_same_body() -> None:
    rows = report.main_table(results_fixture(v2_batch_rps=700))
    mlserver = {r[1]: r for r in rows if r[0] == "mlserver"}
    assert mlserver["batch"][-1] == "14.0×"  # tabserve batch_v2 (700) / mlserver's V2 batch (50), not 600 / 50
    assert mlserver["c16"][-1] == "40.0×"  # no V2 single point: tabserve's own form of the same vehicle


def test_tabserve_targets_send_the_v2_batch_to_the_infer_route() -> None:
    targets = all_targets()
    for name in ("tabserve", "tabserve-log"):
        target = targets[name]
        points = {p.key: p for p in target.points}
        assert target.path(points["batch"]) == "/predict"
        assert (points["batch_v2"].body, target.path(points["batch_v2"])) == ("v2_batch", "/v2/models/co2/infer")
    mlserver = {p.key: p for p in targets["mlserver"].points}
    assert mlserver["batch"].body == "v2_batch"  # the same body as tabserve's batch_v2


def test_statuses_check_fails_on_any_non_2xx_in_a_normal_point() -> None:
    results = results_fixture()
    results["points"]["floor"]["c16"] = summary({"200": 100, "500": 1})
    check = by_name(report.compute_checks(results))["non-2xx / timeouts / socket errors"]
    assert check.status == "fail"
    assert "floor/c16" in check.measured


def overload_fixture(admitted_upper_us: int, statuses: dict[str, int], rss_after: float) -> dict[str, Any]:
    over = summary(statuses, bounds=(admitted_upper_us, 500))
    over["connections"] = 160
    over["rss_samples_mb"] = [80.0, 81.0]
    return {
        "max_in_flight": 16,
        "reference": summary({"200": 100_000}, p99=2000),
        "overload": over,
        "rss_before_mb": 80.0,
        "rss_after_mb": rss_after,
    }


def test_overload_checks_pass_with_fast_503s_and_bounded_admitted_p99() -> None:
    checks = by_name(report.overload_checks(overload_fixture(8000, {"200": 90_000, "503": 60_000}, 81.0)))
    assert all(c.status == "pass" for c in checks.values()), checks


def test_overload_checks_fail_on_slow_admitted_other_status_and_growth() -> None:
    checks = report.overload_checks(overload_fixture(12_000, {"200": 90_000, "500": 5}, 100.0))
    assert [c.status for c in checks] == ["fail", "pass", "fail", "pass", "fail"]


def test_overload_checks_use_the_measured_p99_when_the_run_was_tagged() -> None:
    overload = overload_fixture(90_000, {"200": 90_000, "503": 60_000}, 81.0)
    tagged = parse_wrk_output(tagged_line({"200": 90_000, "503": 60_000}, 8_000, 4_000)).summary()
    overload["overload"] = {**overload["overload"], **tagged, "connections": 160}
    checks = report.overload_checks(overload)
    assert checks[0].name == "overload ×10: admitted p99 (measured)" and checks[0].status == "pass"
    assert checks[2].status == "pass"  # the 503s: 4 ms measured (the bound said 80)
    markdown = report.render_markdown({"overload": overload}, checks)
    assert "| as configured |" in markdown and "8.00 ms" in markdown


def test_cpu_figures_of_the_overload_section(tmp_path: Path) -> None:
    from bench.overload import cpu_per_refusal_us, cpu_seconds

    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text("42 (tab serve) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0\n")
    assert cpu_seconds(42, tmp_path) == pytest.approx(300 / os.sysconf("SC_CLK_TCK"))
    assert cpu_seconds(43, tmp_path) is None
    section = {
        "reference": {"cpu_us_per_response": 200.0},
        "overload": {"cpu_s": 5.0, "requests": 40_000, "non_2xx": 20_000, "warmup": {"requests": 0, "non_2xx": 0}},
    }
    assert cpu_per_refusal_us(section) == pytest.approx(50.0)  # (5 s - 20,000 x 200 µs) / 20,000


def test_overload_checks_fail_when_shedding_starves_admitted_requests() -> None:
    checks = by_name(report.overload_checks(overload_fixture(8000, {"200": 20, "503": 150_000}, 80.0)))
    assert checks["overload: admitted req/s (goodput) vs reference"].status == "fail"


def test_sigterm_checks_require_zero_failures_and_clean_exit() -> None:
    good = {"failed_before_signal": 0, "sent_before_signal": 500, "exit_code": 0, "exit_after_signal_s": 0.4}
    good["grace_s"] = 10.0
    assert [c.status for c in report.sigterm_checks(good)] == ["pass", "pass"]
    bad = {**good, "failed_before_signal": 2, "exit_code": -15}
    assert [c.status for c in report.sigterm_checks(bad)] == ["fail", "fail"]


def test_classify_splits_outcomes_at_the_signal() -> None:
    outcomes = [
        Outcome(1.0, 1.1, 200, None),
        Outcome(1.9, 2.3, 200, None),  # in flight at the signal, completed
        Outcome(1.95, 2.1, None, "RemoteDisconnected"),  # sent before, dropped: a failure
        Outcome(2.2, 2.2, None, "ConnectionRefusedError"),
        Outcome(2.1, 2.15, 503, None),
    ]
    split = classify(outcomes, signal_at=2.0)
    assert split["sent_before_signal"] == 3
    assert split["failed_before_signal"] == 1
    assert split["failed_before_signal_kinds"] == {"RemoteDisconnected": 1}
    assert split["in_flight_at_signal"] == 2
    assert split["in_flight_completed_2xx"] == 1
    assert split["after_signal_kinds"] == {"503": 1, "ConnectionRefusedError": 1}


def test_markdown_report_lists_every_point_and_check(tmp_path: Path) -> None:
    json_path, md_path = report.write_report(results_fixture(), tmp_path)
    text = md_path.read_text(encoding="utf-8")
    assert text.count("| tabserve | ") == 4
    assert "| req/s vs best peer | ≥ 20× | 40.0× (mlserver) | pass |" in text
    assert "Batch rows/s: rows to /predict: tabserve 600,000; V2 columns: tabserve 700,000, mlserver 50,000" in text
    assert "| batch of 1,000 rows (V2 columns) | ≥ 500,000 rows/s | 700,000 rows/s | pass |" in text
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert {c["name"] for c in data["checks"]} >= {"p50 at 1 conn", "RSS after load"}


def test_markdown_table_ratio_columns() -> None:
    rows = report.main_table(results_fixture())
    typical = next(r for r in rows if r[0] == "typical")
    assert typical[-2] == "0.7%"  # 200 / 30,000 of the floor
    assert typical[-1] == "60.0×"  # tabserve 12,000 / 200


def test_selected_sections_keeps_canonical_order_and_rejects_unknown() -> None:
    assert selected_sections("floor,tabserve", "") == ["tabserve", "floor"]
    assert "mlserver" not in selected_sections("", "mlserver,sigterm")
    with pytest.raises(SystemExit):
        selected_sections("tabserv", "")


def test_v2_pandas_request_encodes_columns_with_types() -> None:
    body = v2_pandas_request([EXAMPLE_VEHICLE, EXAMPLE_VEHICLE])
    assert body["parameters"] == {"content_type": "pd"}
    inputs = {i["name"]: i for i in body["inputs"]}
    assert list(inputs) == list(FIELDS)
    assert inputs["make"]["datatype"] == "BYTES"
    assert inputs["make"]["parameters"] == {"content_type": "str"}
    assert inputs["cylinders"]["datatype"] == "INT64"
    assert inputs["engine_size_l"] == {"name": "engine_size_l", "shape": [2], "data": [2.5, 2.5], "datatype": "FP64"}


def fake_proc(root: Path, pid: int, rss_kb: int, children: list[int]) -> None:
    task = root / str(pid) / "task" / str(pid)
    task.mkdir(parents=True)
    (task / "children").write_text(" ".join(str(c) for c in children))
    (root / str(pid) / "status").write_text(f"Name:\tpython\nVmPeak:\t 999 kB\nVmRSS:\t {rss_kb} kB\n")


def test_rss_mb_sums_the_process_tree(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, 51_200, [11, 12])
    fake_proc(tmp_path, 11, 10_240, [])
    fake_proc(tmp_path, 12, 20_480, [13])
    fake_proc(tmp_path, 13, 1_024, [])
    assert sorted(process_tree(10, tmp_path)) == [10, 11, 12, 13]
    assert rss_mb(10, tmp_path) == {"tree": 81.0, "max_process": 50.0, "processes": 4.0}


def test_pss_mb_sums_the_proportional_sizes_of_the_tree_and_skips_a_process_gone(tmp_path: Path) -> None:
    fake_proc(tmp_path, 20, 51_200, [21, 22])
    fake_proc(tmp_path, 21, 10_240, [])
    (tmp_path / "20" / "smaps_rollup").write_text(
        "00400000-7fff0000 ---p 00000000 00:00 0 [rollup]\nRss: 51200 kB\nPss: 30720 kB\n"
    )
    (tmp_path / "21" / "smaps_rollup").write_text("Rss: 10240 kB\nPss: 2048 kB\n")
    assert pss_mb(20, tmp_path) == 32.0  # 22 is gone (no /proc entry): counted as nothing, not an error


def test_parse_status_kb_missing_key_is_none() -> None:
    assert parse_status_kb("Name:\tx\n", "VmRSS") is None


def test_with_tabserve_env_applies_only_to_tabserve_servers() -> None:
    targets = with_tabserve_env(all_targets(), ["TABSERVE_ACCESS_LOG=false"])
    assert targets["tabserve"].env["TABSERVE_ACCESS_LOG"] == "false"
    assert targets["tabserve-log"].env["TABSERVE_PREDICTION_LOG"] == "true"
    assert targets["tabserve-log"].env["TABSERVE_ACCESS_LOG"] == "false"
    assert "TABSERVE_ACCESS_LOG" not in targets["floor"].env
    with pytest.raises(SystemExit):
        with_tabserve_env(all_targets(), ["NOEQUALS"])


def test_trim_log_keeps_head_and_tail_of_big_logs(tmp_path: Path) -> None:
    big, small = tmp_path / "big.log", tmp_path / "small.log"
    big.write_bytes(b"H" * 1000 + b"x" * 10_000 + b"T" * 1000)
    small.write_bytes(b"short")
    trim_log(big, keep=1000)
    trim_log(small, keep=1000)
    data = big.read_bytes()
    assert data.startswith(b"H" * 1000)
    assert data.endswith(b"T" * 1000)
    assert b"10,000 bytes trimmed" in data
    assert small.read_bytes() == b"short"


def test_parse_collapsed_and_top_functions_share_self_and_inclusive_time() -> None:
    from bench.profile import frame_name, parse_collapsed, top_functions

    text = (
        'process 1:"python";run (uvloop/loop.py:10);predict (tabserve/service.py:42);encode (tabserve/runtime.py:7) 6\n'
        'process 1:"python";run (uvloop/loop.py:11);predict (tabserve/service.py:43) 2\n'
        'process 1:"python";run (uvloop/loop.py:10);parse (orjson/x.py:1) 2\n'
        "Thread._bootstrap (threading.py:1);Condition.wait (threading.py:320) 90\n"
        "garbage line without count\n"
    )
    assert frame_name("predict (tabserve/service.py:42)") == "predict (tabserve/service.py)"
    stacks = parse_collapsed(text)
    assert sum(stacks.values()) == 100
    top = top_functions(stacks)
    assert top["samples"] == 10  # the idle wait is dropped
    assert top["idle_samples_dropped"] == 90
    assert top["self"][0] == ["encode (tabserve/runtime.py)", 0.6]
    inclusive = dict(top["inclusive"])
    assert inclusive["predict (tabserve/service.py)"] == 0.8
    assert "run (uvloop/loop.py)" not in inclusive  # in every stack
    assert 'process 1:"python"' not in inclusive


def test_profile_section_renders_top_functions() -> None:
    profile = {"samples": 100, "self": [["f (a.py)", 0.5]], "inclusive": [["g (b.py)", 0.9], ["f (a.py)", 0.5]]}
    text = "\n".join(report.profile_section("tabserve", profile))
    assert "| 50.0% | `f (a.py)` | 90.0% | `g (b.py)` |" in text
    assert "|  |  | 50.0% | `f (a.py)` |" in text
