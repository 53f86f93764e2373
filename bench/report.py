"""The benchmark's verdict: ratios, target checks (pass / fail / n/a), and the Markdown + JSON report.

Input is the JSON-able ``results`` dict that bench/main.py builds (``servers``, ``points``, ``overload``,
``sigterm``, ``meta``); everything here is pure so the tests can feed it hand-made results.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.overload import overload_checks, overload_markdown
from bench.verdict import Check, markdown_table
from bench.verdict import fmt as _fmt
from bench.verdict import le as _le
from bench.verdict import verdict as _verdict

PEERS = ("typical", "mlserver")

# the targets of issue 5
RATIO_BEST_PEER = 20.0
SHARE_OF_FLOOR = 0.25
P99_MS = 5.0
P50_1CONN_MS = 0.5
LOG_ON_MAX_SLOWDOWN = 0.10
BATCH_ROWS_PER_S = 500_000.0
COLD_START_S = 1.0
RSS_MB = 120.0


def point(results: dict[str, Any], server: str, key: str) -> dict[str, Any] | None:
    """A measured point's summary, or None when it was not run (or failed)."""
    value = results.get("points", {}).get(server, {}).get(key)
    return value if isinstance(value, dict) else None


def rps(results: dict[str, Any], server: str, key: str = "c16") -> float | None:
    found = point(results, server, key)
    return None if found is None else float(found["ok_rps"])


def latency(results: dict[str, Any], server: str, key: str, pct: str) -> float | None:
    found = point(results, server, key)
    if found is None:
        return None
    value = found.get("latency_ms", {}).get(pct)
    return None if value is None else float(value)


BATCH_FORMS = (("batch", "/predict rows"), ("batch_v2", "V2 columns"))
"""tabserve's batch points: the same 1,000 vehicles as JSON rows and as MLServer's V2 request (one tensor per
input); each form is checked against the target on its own row."""


def batch_rows_per_s(results: dict[str, Any], server: str, rows: int, key: str = "batch") -> float | None:
    found = point(results, server, key)
    return None if found is None else float(found["ok_rps"]) * rows


def same_request(results: dict[str, Any], key: str, summary: dict[str, Any]) -> dict[str, Any] | None:
    """tabserve's point for the request a peer's point measured: the one with the same body (MLServer's V2
    batch -> tabserve's ``batch_v2``), else the one with the same key (the single vehicle in its own form)."""
    points = results.get("points", {}).get("tabserve", {})
    body = summary.get("body")
    for found in points.values():
        if isinstance(found, dict) and body is not None and found.get("body") == body:
            return found
    found = points.get(key)
    return found if isinstance(found, dict) else None


def best_peer(results: dict[str, Any]) -> tuple[str, float] | None:
    """The peer with the highest 2xx req/s at 16 connections."""
    found = [(name, r) for name in PEERS if (r := rps(results, name)) is not None]
    return max(found, key=lambda item: item[1]) if found else None


def compute_checks(results: dict[str, Any]) -> list[Check]:
    """Every target of issue 5 as a Check; n/a where the run did not measure it."""
    rows = int(results.get("meta", {}).get("batch_rows", 1000))
    checks: list[Check] = []
    ts = rps(results, "tabserve")
    peer = best_peer(results)
    ratio = None if ts is None or peer is None or peer[1] <= 0 else ts / peer[1]
    checks.append(
        Check(
            "req/s vs best peer",
            f"≥ {RATIO_BEST_PEER:.0f}×",
            "—" if ratio is None or peer is None else f"{ratio:.1f}× ({peer[0]})",
            _verdict(None if ratio is None else ratio >= RATIO_BEST_PEER),
        )
    )
    floor = rps(results, "floor")
    share = None if ts is None or not floor else ts / floor
    checks.append(
        Check(
            "req/s vs no-op floor",
            f"≥ {SHARE_OF_FLOOR:.0%}",
            "—" if share is None else f"{share:.1%}",
            _verdict(None if share is None else share >= SHARE_OF_FLOOR),
        )
    )
    for server in ("tabserve", "tabserve-log"):
        p99 = latency(results, server, "c16", "99")
        checks.append(
            Check(f"p99 at 16 conns ({server})", f"≤ {P99_MS:g} ms", _fmt(p99, 3, " ms"), _verdict(_le(p99, P99_MS)))
        )
    p50 = latency(results, "tabserve", "c1", "50")
    checks.append(
        Check("p50 at 1 conn", f"≤ {P50_1CONN_MS:g} ms", _fmt(p50, 3, " ms"), _verdict(_le(p50, P50_1CONN_MS)))
    )
    log_on = rps(results, "tabserve-log")
    slowdown = None if ts is None or log_on is None or ts <= 0 else 1.0 - log_on / ts
    checks.append(
        Check(
            "log on vs off (req/s)",
            f"≤ {LOG_ON_MAX_SLOWDOWN:.0%} slower",
            "—" if slowdown is None else f"{slowdown:+.1%} slower",
            _verdict(_le(slowdown, LOG_ON_MAX_SLOWDOWN)),
        )
    )
    for key, form in BATCH_FORMS:
        batch = batch_rows_per_s(results, "tabserve", rows, key)
        checks.append(
            Check(
                f"batch of {rows:,} rows ({form})",
                f"≥ {BATCH_ROWS_PER_S:,.0f} rows/s",
                _fmt(batch, 0, " rows/s"),
                _verdict(None if batch is None else batch >= BATCH_ROWS_PER_S),
            )
        )
    servers = results.get("servers", {})
    cold = [servers[s]["cold_start_median_s"] for s in ("tabserve", "tabserve-log") if s in servers]
    cold_max = max((float(c) for c in cold if c is not None), default=None)
    checks.append(
        Check(
            "cold start (exec → /ready 200)",
            f"≤ {COLD_START_S:g} s",
            _fmt(cold_max, 3, " s"),
            _verdict(_le(cold_max, COLD_START_S)),
        )
    )
    rss = [servers[s].get("rss_mb", {}).get("tree") for s in ("tabserve", "tabserve-log") if s in servers]
    rss_max = max((float(r) for r in rss if r is not None), default=None)
    checks.append(Check("RSS after load", f"≤ {RSS_MB:g} MB", _fmt(rss_max, 1, " MB"), _verdict(_le(rss_max, RSS_MB))))
    checks.append(_statuses_check(results))
    checks.extend(overload_checks(results.get("overload")))
    checks.extend(sigterm_checks(results.get("sigterm")))
    return checks


def _statuses_check(results: dict[str, Any]) -> Check:
    """Outside the overload test every response must be 2xx and nothing may time out."""
    bad: list[str] = []
    seen = 0
    for server, points in results.get("points", {}).items():
        for key, summary in points.items():
            if not isinstance(summary, dict):
                continue
            seen += 1
            if summary["non_2xx"] or summary["timeouts"] or summary["socket_errors"] or not summary["counts_agree"]:
                bad.append(f"{server}/{key}")
    measured = "none" if not bad else ", ".join(bad)
    return Check("non-2xx / timeouts / socket errors", "none", measured, _verdict(None if seen == 0 else not bad))


def sigterm_checks(sig: dict[str, Any] | None) -> list[Check]:
    """Zero failed requests among those sent before SIGTERM; exit 0 within the grace period."""
    if not sig or "failed_before_signal" not in sig:
        return [Check("SIGTERM under load", "0 failed, exit 0 in grace", "—", "n/a")]
    exit_s = sig.get("exit_after_signal_s")
    exited_ok = sig.get("exit_code") == 0 and exit_s is not None and exit_s <= float(sig["grace_s"])
    return [
        Check(
            "SIGTERM: failed among sent before signal",
            "0",
            f"{sig['failed_before_signal']} of {sig['sent_before_signal']:,}",
            _verdict(sig["failed_before_signal"] == 0 and sig["sent_before_signal"] > 0),
        ),
        Check(
            "SIGTERM: exit code and time",
            f"0 within {sig['grace_s']:g} s",
            f"exit {sig.get('exit_code')} after {_fmt(exit_s, 2, ' s')}",
            _verdict(exited_ok),
        ),
    ]


def main_table(results: dict[str, Any]) -> list[list[str]]:
    """Rows of the side-by-side table: one per (server, point)."""
    header = ["server", "point", "conns", "req/s", "p50 ms", "p99 ms", "non-2xx", "timeouts", "cold start s", "RSS MB"]
    header += ["vs floor", "tabserve ÷ this"]
    rows = [header]
    floor = rps(results, "floor")
    servers = results.get("servers", {})
    for server, points in results.get("points", {}).items():
        info = servers.get(server, {})
        for key, summary in points.items():
            if not isinstance(summary, dict):
                rows.append([info.get("title", server), key, "—", f"failed: {summary}"] + ["—"] * 8)
                continue
            ok = float(summary["ok_rps"])
            same = same_request(results, key, summary)
            ts = None if same is None else float(same["ok_rps"])
            rows.append(
                [
                    info.get("title", server),
                    key,
                    str(summary["connections"]),
                    f"{ok:,.0f}",
                    _fmt(summary["latency_ms"].get("50"), 3),
                    _fmt(summary["latency_ms"].get("99"), 3),
                    str(summary["non_2xx"]),
                    str(summary["timeouts"]),
                    _fmt(info.get("cold_start_median_s"), 3),
                    _fmt(info.get("rss_mb", {}).get("tree"), 1),
                    "—" if not floor or key != "c16" else f"{ok / floor:.1%}",
                    "—" if ts is None or ok <= 0 or server.startswith("tabserve") else f"{ts / ok:,.1f}×",
                ]
            )
    return rows


def render_markdown(results: dict[str, Any], checks: list[Check]) -> str:
    """The whole report as Markdown (bench/results/latest.md)."""
    meta = results.get("meta", {})
    rows = int(meta.get("batch_rows", 1000))
    out = [f"# tabserve benchmark — {meta.get('started', '?')}", ""]
    out.append(f"Command: `{meta.get('command', 'bash bench/run.sh')}` · commit `{meta.get('commit', '?')}`  ")
    out.append(
        f"Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores; server pinned to core "
        f"{meta.get('server_core', 0)}, wrk (1 thread) to core {meta.get('client_core', 1)}; "
        f"{meta.get('warmup_s', 3)} s warm-up + {meta.get('duration_s', 10)} s measured per point.  "
    )
    out.append(
        f"Load average before / after: {meta.get('loadavg_before', '?')} / {meta.get('loadavg_after', '?')} "
        "(the bench itself keeps both cores busy, so 'after' includes about 2 of its own; 'before' shows whether "
        "anything else was running).  "
    )
    out += ["", "## Side by side (same request: the co2 example vehicle, all fields)", ""]
    out += [markdown_table(main_table(results)), ""]
    out.append(
        "req/s counts 2xx responses only; p50/p99 from wrk's histogram; cold start = median of "
        f"{meta.get('cold_starts', 3)} starts (exec → readiness 200, polled every 20 ms); RSS = process tree "
        "after the load. `batch` = one request of "
        f"{rows:,} vehicles per call (rows/s = req/s × {rows:,})."
    )
    out.append(
        "`batch_v2` = the same vehicles as MLServer's V2 request (one tensor per input) to `/v2/models/co2/infer`; "
        "`tabserve ÷ this` compares a peer with tabserve's point for the same body when there is one."
    )
    forms = [
        ("rows to /predict", [(s, batch_rows_per_s(results, s, rows)) for s in ("tabserve", "tabserve-log")]),
        (
            "V2 columns",
            [(s, batch_rows_per_s(results, s, rows, "batch_v2")) for s in ("tabserve", "tabserve-log")]
            + [("mlserver", batch_rows_per_s(results, "mlserver", rows))],
        ),
    ]
    lines = [
        f"{form}: " + ", ".join(f"{s} {b:,.0f}" for s, b in found)
        for form, batches in forms
        if (found := [(s, b) for s, b in batches if b is not None])
    ]
    if lines:
        out += ["", "Batch rows/s: " + "; ".join(lines)]
    out += ["", "## Targets (issue 5)", ""]
    table = [["check", "target", "measured", "verdict"]]
    table += [[c.name, c.target, c.measured, c.status.upper() if c.status == "fail" else c.status] for c in checks]
    out += [markdown_table(table), ""]
    out += overload_markdown(results)
    sig = results.get("sigterm")
    if sig and "failed_before_signal" in sig:
        out += ["## SIGTERM under load", ""]
        out.append(
            f"{sig['connections']} client connections; {sig['sent_before_signal']:,} requests sent before the "
            f"signal, {sig['failed_before_signal']} failed ({sig['failed_before_signal_kinds']}); "
            f"{sig['in_flight_at_signal']} in flight at the signal, {sig['in_flight_completed_2xx']} of them "
            f"completed 2xx; after the signal: {sig['after_signal_kinds']}; exit code {sig.get('exit_code')} "
            f"after {_fmt(sig.get('exit_after_signal_s'), 2)} s."
        )
        out.append("")
    errors = {k: v["error"] for k, v in results.get("servers", {}).items() if v.get("error")}
    for key in ("overload", "sigterm"):
        section = results.get(key)
        if isinstance(section, dict) and section.get("error"):
            errors[key] = section["error"]
    for i, section in enumerate(results.get("overload_baselines", [])):
        if isinstance(section, dict) and section.get("error"):
            errors[f"overload baseline {i + 1}"] = section["error"]
    if errors:
        out += ["## Errors", ""] + [f"- {k}: {v}" for k, v in errors.items()] + [""]
    for name, info in results.get("servers", {}).items():
        out += profile_section(name, info.get("profile"))
    notes = {k: v.get("notes", "") for k, v in results.get("servers", {}).items()}
    out += ["## Configurations", ""] + [f"- {k}: {v}" for k, v in notes.items() if v] + [""]
    return "\n".join(out)


def profile_section(name: str, profile: dict[str, Any] | None, n: int = 15) -> list[str]:
    """Markdown for one py-spy profile: top self-time and inclusive-time functions."""
    if not profile:
        return []
    if profile.get("error"):
        return [f"## Profile: {name}", "", f"py-spy failed: {profile['error']}", ""]
    out = [
        f"## Profile: {name} (py-spy, {profile['samples']:,} busy samples under the "
        f"{profile.get('point', 'c16')} load, "
        f"{profile.get('background_thread_share', 0.0):.0%} of them in background threads)",
        "",
    ]
    table = [["self %", "function (self time)", "inclusive %", "function (inclusive)"]]
    own, incl = profile.get("self", [])[:n], profile.get("inclusive", [])[:n]
    for i in range(max(len(own), len(incl))):
        a = own[i] if i < len(own) else ["", None]
        b = incl[i] if i < len(incl) else ["", None]
        table.append(
            [
                "" if a[1] is None else f"{a[1]:.1%}",
                f"`{a[0]}`" if a[0] else "",
                "" if b[1] is None else f"{b[1]:.1%}",
                f"`{b[0]}`" if b[0] else "",
            ]
        )
    return [*out, markdown_table(table), ""]


def write_report(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Compute the checks and write ``latest.json`` and ``latest.md`` under ``out_dir``."""
    checks = compute_checks(results)
    results = {**results, "checks": [asdict(c) for c in checks]}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "latest.json", out_dir / "latest.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(results, checks), encoding="utf-8")
    return json_path, md_path
