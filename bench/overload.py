"""The overload section (issue 5): a tabserve worker at 10× the connections it sustains, measured and judged.

One server with ``TABSERVE_MAX_IN_FLIGHT`` / ``TABSERVE_MAX_QUEUE_MS`` set: a reference point at 16 connections,
then 160, both with warm-up, RSS sampled every second. Requests are tagged (bench/wrk/post.lua ``BENCH_TAG``),
so the admitted and the refused requests' latencies are measured separately. Each ``--overload-baseline
KEY=VALUE[,KEY=VALUE]`` measures one more server with that extra environment the same way, for a side-by-side row
(e.g. the app-level admission of before: ``TABSERVE_SHED_AT_PARSE=false,TABSERVE_MAX_QUEUE_MS=20``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.loadgen import LoadSettings, run_point
from bench.procs import Server, rss_mb, stop
from bench.targets import C16, Point, Target
from bench.verdict import Check, fmt, le, markdown_table, point_line, verdict

OVERLOAD_P99_FACTOR = 5.0
MEMORY_FLAT_SHARE = 0.10
OVERLOAD_MIN_GOODPUT = 0.5  # admitted req/s under overload vs the reference: shedding must not starve the worker


def cpu_seconds(pid: int, proc_root: Path = Path("/proc")) -> float | None:
    """User + system CPU time of a process (all its threads) from ``/proc/<pid>/stat``; None when unreadable."""
    try:
        fields = (proc_root / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def cpu_per_response_us(cpu_s: float | None, summary: dict[str, Any]) -> float | None:
    """Server CPU per response over a point (warm-up + measured run): robust to a shared machine, where
    wall-clock rates are not."""
    responses = int(summary["requests"]) + int(summary["warmup"]["requests"])
    return None if cpu_s is None or not responses else round(cpu_s / responses * 1e6, 1)


def cpu_per_refusal_us(section: dict[str, Any]) -> float | None:
    """Server CPU per non-2xx under overload, taking an admitted request to cost what it cost at the reference
    point: (CPU − 2xx × reference CPU per response) ÷ non-2xx, over the measured run and its warm-up."""
    ref_us = section.get("reference", {}).get("cpu_us_per_response")
    over = section.get("overload", {})
    cpu_s = over.get("cpu_s")
    refused = over.get("non_2xx", 0) + over.get("warmup", {}).get("non_2xx", 0)
    if ref_us is None or cpu_s is None or not refused:
        return None
    admitted = over["requests"] + over["warmup"]["requests"] - refused
    return round((float(cpu_s) * 1e6 - int(admitted) * float(ref_us)) / int(refused), 1)


def overload_target(base: Target, in_flight: int, queue_ms: float) -> Target:
    """The overload server: tabserve with TABSERVE_MAX_IN_FLIGHT and TABSERVE_MAX_QUEUE_MS (its load-shedding
    bounds, set for a latency target), or the floor with uvicorn's limit."""
    if base.kind == "tabserve":
        env = {**base.env, "TABSERVE_MAX_IN_FLIGHT": str(in_flight), "TABSERVE_MAX_QUEUE_MS": f"{queue_ms:g}"}
        return replace(base, name="overload", env=env)
    argv = base.argv
    return replace(base, name="overload", argv=lambda port: [*argv(port), "--limit-concurrency", str(in_flight)])


def run_overload(
    base: Target,
    args: argparse.Namespace,
    bodies: dict[str, Path],
    settings: LoadSettings,
    raw: Path,
    start: Callable[[Target, Path, str], Server],
    label: str = "overload",
    extra_env: dict[str, str] | None = None,
    trim: Callable[[Path], None] = lambda _: None,
) -> dict[str, Any]:
    """The reference point and the 10× point on one server; requests are tagged, so the latencies of the
    admitted and of the refused requests are measured separately (exactly when the server echoes X-Request-Id)."""
    target = overload_target(base, args.overload_in_flight, args.overload_queue_ms)
    if extra_env:
        target = replace(target, env={**target.env, **extra_env})
    out: dict[str, Any] = {
        "target": base.name,
        "max_in_flight": args.overload_in_flight,
        "max_queue_ms": args.overload_queue_ms,
        "extra_env": extra_env or {},
    }
    server = start(target, raw, label)
    try:
        url = f"http://127.0.0.1:{server.port}{target.predict_path}"
        cpu0 = cpu_seconds(server.pid)
        out["reference"] = run_point(
            f"{label}.reference", url, C16.body, bodies[C16.body], C16.connections, settings, raw, tagged=True
        ).summary()
        cpu1 = cpu_seconds(server.pid)
        ref_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        out["reference"]["cpu_s"] = ref_cpu
        out["reference"]["cpu_us_per_response"] = cpu_per_response_us(ref_cpu, out["reference"])
        over = Point("overload", C16.body, args.overload_connections)
        # warm the overload point first (wrk's warm-up), then sample RSS right before the measured run
        out["rss_before_mb"] = rss_mb(server.pid)["tree"]
        cpu1 = cpu_seconds(server.pid)
        result = run_point(
            f"{label}.c{over.connections}",
            url,
            over.body,
            bodies[over.body],
            over.connections,
            settings,
            raw,
            sample_pid=server.pid,
            tagged=True,
        )
        cpu2 = cpu_seconds(server.pid)
        out["overload"] = result.summary()
        out["overload"]["cpu_s"] = None if cpu1 is None or cpu2 is None else cpu2 - cpu1
        out["overload"]["cpu_us_per_response"] = cpu_per_response_us(out["overload"]["cpu_s"], out["overload"])
        out["cpu_us_per_refusal"] = cpu_per_refusal_us(out)
        out["rss_after_mb"] = rss_mb(server.pid)["tree"]
        print(f"  {label}.reference: {point_line(out['reference'])}", flush=True)
        print(f"  {label}.c{over.connections}: {point_line(out['overload'])}", flush=True)
    finally:
        out["exit_code"] = stop(server.proc)
        trim(server.log_path)
    return out


def admitted_p99(over: dict[str, Any]) -> tuple[float | None, str]:
    """The admitted (2xx) requests' p99 under overload and how it was obtained: measured per request (tagged
    run, every response timed) or, failing that, the upper bound from the overall histogram."""
    if over.get("p99_2xx_ms") is not None:
        return float(over["p99_2xx_ms"]), "measured"
    value = over.get("p99_2xx_upper_ms")
    return (None if value is None else float(value)), "upper bound"


def rejected_p99(over: dict[str, Any]) -> tuple[float | None, str]:
    """The same for the non-2xx responses."""
    if over.get("p99_non2xx_ms") is not None:
        return float(over["p99_non2xx_ms"]), "measured"
    value = over.get("p99_non2xx_upper_ms")
    return (None if value is None else float(value)), "upper bound"


def overload_checks(overload: dict[str, Any] | None) -> list[Check]:
    """Admitted p99 within 5× the reference p99, the rest 503 (fast), no timeouts, memory flat."""
    if not overload or "overload" not in overload or "reference" not in overload:
        return [Check("overload", "admitted p99 ≤ 5× unloaded, rest fast 503s", "—", "n/a")]
    ref = overload["reference"]["latency_ms"]["99"]
    over = overload["overload"]
    admitted, how = admitted_p99(over)
    rejected, how_rejected = rejected_p99(over)
    bound = OVERLOAD_P99_FACTOR * ref
    statuses = {k: v for k, v in over["statuses"].items() if not k.startswith("2")}
    only_503 = set(statuses) <= {"503"}
    rss_before = overload.get("rss_before_mb")
    rss_after = overload.get("rss_after_mb")
    samples = over.get("rss_samples_mb") or []
    peak = max([*samples, rss_after or 0.0]) if rss_after is not None else None
    growth = None if rss_before is None or peak is None else (peak - rss_before) / rss_before
    factor = over["connections"] // max(overload["reference"]["connections"], 1)
    ref_rps = float(overload["reference"]["ok_rps"])
    goodput = float(over["ok_rps"]) / ref_rps if ref_rps > 0 else 0.0
    return [
        Check(
            f"overload ×{factor}: admitted p99 ({how})",
            f"≤ 5 × {ref:.3f} ms",
            fmt(admitted, 3, " ms"),
            verdict(le(admitted, bound)),
        ),
        Check(
            "overload: admitted req/s (goodput) vs reference",
            f"≥ {OVERLOAD_MIN_GOODPUT:.0%}",
            f"{over['ok_rps']:,.0f} of {overload['reference']['ok_rps']:,.0f} req/s ({goodput:.1%})",
            verdict(goodput >= OVERLOAD_MIN_GOODPUT),
        ),
        Check(
            "overload: the rest are fast 503s",
            f"only 503, p99 ≤ {bound:.3f} ms",
            f"{over['non_2xx']:,} non-2xx {sorted(statuses)}; p99 {fmt(rejected, 3, ' ms')} ({how_rejected})",
            verdict(only_503 and (rejected is None or rejected <= bound)),
        ),
        Check(
            "overload: no timeouts / socket errors",
            "0",
            f"{over['timeouts']} timeouts, {over['socket_errors']} socket errors",
            verdict(over["timeouts"] == 0 and over["socket_errors"] == 0),
        ),
        Check(
            "overload: memory flat",
            f"peak ≤ +{MEMORY_FLAT_SHARE:.0%}",
            "—" if growth is None else f"{rss_before:.1f} → peak {peak:.1f} MB ({growth:+.1%})",
            verdict(le(growth, MEMORY_FLAT_SHARE)),
        ),
    ]


def overload_table(results: dict[str, Any]) -> list[list[str]]:
    """One row per overload server: as configured, then each ``--overload-baseline`` one."""
    table = [
        [
            "server",
            "reference req/s",
            "reference p99",
            "admitted req/s (goodput)",
            "admitted p50 / p99",
            "503 p50 / p99",
            "503/s",
            "server CPU per 2xx / per 503 (est.)",
            "timeouts",
            "RSS before → after",
        ]
    ]
    sections = [("as configured", results.get("overload"))]
    sections += [("baseline", section) for section in results.get("overload_baselines", [])]
    for name, section in sections:
        if not section or "overload" not in section or "reference" not in section:
            continue
        ref, over = section["reference"], section["overload"]
        by = over.get("by_status_ms", {})
        extra = " ".join(f"{k}={v}" for k, v in section.get("extra_env", {}).items())
        ref_rps = float(ref["ok_rps"])
        admitted, how = admitted_p99(over)
        rejected, how_rejected = rejected_p99(over)
        table.append(
            [
                name if not extra else f"{name} ({extra})",
                f"{ref_rps:,.0f}",
                f"{ref['latency_ms']['99']:.2f} ms",
                f"{over['ok_rps']:,.0f} ({over['ok_rps'] / ref_rps:.0%})" if ref_rps else f"{over['ok_rps']:,.0f}",
                f"{fmt(by.get('2xx', {}).get('50'), 2)} / {fmt(admitted, 2)} ms"
                + ("" if how == "measured" else " (bound)"),
                f"{fmt(by.get('non2xx', {}).get('50'), 2)} / {fmt(rejected, 2)} ms"
                + ("" if how_rejected == "measured" else " (bound)"),
                f"{over['non_2xx'] / max(over['duration_s'], 1e-9):,.0f}",
                f"{fmt(ref.get('cpu_us_per_response'), 0)} / {fmt(section.get('cpu_us_per_refusal'), 0)} µs",
                str(over["timeouts"]),
                f"{section.get('rss_before_mb')} → {section.get('rss_after_mb')} MB",
            ]
        )
    return table


def overload_markdown(results: dict[str, Any]) -> list[str]:
    """The report's overload section: the bounds, then one table row per overload server."""
    out: list[str] = []
    overload = results.get("overload")
    if overload and "overload" in overload:
        ref, over = overload["reference"], overload["overload"]
        out += ["## Overload", ""]
        out.append(
            f"In-flight bound {overload.get('max_in_flight')}, queue-wait bound {overload.get('max_queue_ms')} ms "
            f"({overload.get('target')}); reference {ref['connections']} connections, overload "
            f"{over['connections']}; statuses {over['statuses']}. Latencies per status are measured per request "
            '(tagged requests, X-Request-Id echoed); "(bound)" marks the histogram upper bound used when not.'
        )
        out += ["", markdown_table(overload_table(results)), ""]
    return out
