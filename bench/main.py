"""The benchmark driver: start each server pinned, measure its points with wrk, overload + SIGTERM, report.

``python -m bench.main [--only tabserve,floor,...]`` from the repo root (bench/run.sh does the setup first).
Sections: tabserve, tabserve-log, floor, typical, mlserver, overload, sigterm. A section that cannot run (e.g.
``tabserve serve`` is missing) is reported as an error and the rest still runs; every server is killed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.bodies import write_bodies
from bench.loadgen import LoadError, LoadSettings, run_point
from bench.overload import run_overload
from bench.procs import (
    Server,
    ServerStartError,
    free_port,
    install_cleanup,
    rss_mb,
    start_server,
    stop,
)
from bench.profile import profile_under_load
from bench.report import write_report
from bench.sigterm import sigterm_under_load
from bench.targets import BATCH_ROWS, C16, REPO, WORK, Target, all_targets
from bench.verdict import point_line
from bench.wrkresult import WrkOutputError

SECTIONS = ("tabserve", "tabserve-log", "floor", "typical", "mlserver", "overload", "sigterm")
SERVER_CORE, CLIENT_CORE = 0, 1
PY_SPY = REPO / "bench" / ".venv-tools" / "bin" / "py-spy"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__)
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(SECTIONS)}")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per point (3)")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per point (10)")
    parser.add_argument("--cold-starts", type=int, default=3, help="starts per server for the cold start median (3)")
    parser.add_argument("--overload-connections", type=int, default=160, help="connections of the overload point")
    parser.add_argument(
        "--overload-in-flight", type=int, default=64, help="TABSERVE_MAX_IN_FLIGHT when overloaded (64, the default)"
    )
    parser.add_argument(
        "--overload-queue-ms",
        type=float,
        default=15.0,
        help="TABSERVE_MAX_QUEUE_MS when overloaded (15: admitted requests also wait about one loop turn in their "
        "socket, so about half the latency target of 5 × the unloaded p99)",
    )
    parser.add_argument("--overload-target", default="tabserve", choices=("tabserve", "floor"))
    parser.add_argument(
        "--overload-baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also measure an overload server with this extra environment, reported side by side (repeatable: one "
        "server each), e.g. TABSERVE_SHED_AT_PARSE=false,TABSERVE_MAX_QUEUE_MS=20",
    )
    parser.add_argument("--sigterm-target", default="tabserve-log", choices=("tabserve", "tabserve-log", "floor"))
    parser.add_argument(
        "--tabserve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every tabserve server (repeatable), e.g. TABSERVE_ACCESS_LOG=false",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy profile of tabserve (under --profile-point)")
    parser.add_argument(
        "--profile-point",
        default=C16.key,
        choices=("c16", "c1", "batch", "batch_v2"),
        help="the load the profile is taken under (c16: the single vehicle at 16 connections)",
    )
    parser.add_argument("--list-sections", action="store_true", help="print the selected sections and exit")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="report folder")
    return parser.parse_args(argv)


def selected_sections(only: str, skip: str) -> list[str]:
    """The sections to run, in the canonical order; unknown names are an error."""
    wanted = [s.strip() for s in only.split(",") if s.strip()] or list(SECTIONS)
    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    unknown = (set(wanted) | skipped) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in wanted and s not in skipped]


def _cmd_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine_meta() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (_cmd_out(["wrk", "-v"]).splitlines() or ["?"])[0],
        "commit": _cmd_out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "dirty": bool(_cmd_out(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "models"])),
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def env_pairs(pairs: list[str], option: str) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` as a dict; anything else is a usage error naming ``option``."""
    extra: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} wants KEY=VALUE, got {pair!r}")
        extra[key] = value
    return extra


def with_tabserve_env(targets: dict[str, Target], pairs: list[str]) -> dict[str, Target]:
    """Apply ``--tabserve-env KEY=VALUE`` to every tabserve target."""
    extra = env_pairs(pairs, "--tabserve-env")
    if not extra:
        return targets
    return {
        name: replace(t, env={**t.env, **extra}, notes=f"{t.notes}; {' '.join(pairs)}") if t.kind == "tabserve" else t
        for name, t in targets.items()
    }


def trim_log(path: Path, keep: int = 200_000) -> None:
    """Keep the head and tail of a big server log (an access log at 10k req/s grows by MBs per second)."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > 4 * keep:
            data = path.read_bytes()
            marker = f"\n... {len(data) - 2 * keep:,} bytes trimmed by bench ...\n".encode()
            path.write_bytes(data[:keep] + marker + data[-keep:])


def tabserve_available() -> str | None:
    """None when ``tabserve serve`` exists, else why not."""
    exe = REPO / ".venv" / "bin" / "tabserve"
    if not exe.exists():
        return f"{exe} not found"
    done = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, check=False, timeout=60)
    return None if done.returncode == 0 else f"`tabserve serve --help` exited {done.returncode}: {done.stderr[-300:]}"


def start(target: Target, raw: Path, label: str) -> Server:
    port = free_port()
    if target.prepare is not None:
        target.prepare(port)
    return start_server(
        target.name,
        target.argv(port),
        port=port,
        ready_path=target.ready_path,
        log_path=raw / f"{label}.server.log",
        env=target.env,
        cwd=REPO,
        core=SERVER_CORE,
    )


def smoke(server: Server, path: str, body: Path) -> dict[str, Any]:
    """One request before the load, so a wrong body format shows up as an error rather than 100 % non-2xx."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", path, body=body.read_bytes(), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        return {"status": response.status, "body": text[:400]}
    finally:
        conn.close()


def run_target(
    target: Target,
    bodies: dict[str, Path],
    settings: LoadSettings,
    raw: Path,
    starts: int,
    py_spy: Path | None = None,
    profile_point: str = C16.key,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cold starts, a smoke request, then every point, then (with ``py_spy``) a profile under the load of
    ``profile_point``; returns (server info, point summaries)."""
    info: dict[str, Any] = {"title": target.title, "notes": target.notes, "error": None}
    points: dict[str, Any] = {}
    cold: list[float] = []
    server: Server | None = None
    try:
        for i in range(max(starts, 1)):
            server = start(target, raw, f"{target.name}.start{i}")
            cold.append(round(server.cold_start_s, 4))
            if i < starts - 1:
                stop(server.proc)
                server = None
        info["cold_start_s"] = cold
        info["cold_start_median_s"] = sorted(cold)[len(cold) // 2]
        if server is None:
            raise ServerStartError("no server left running")
        for p in target.points:
            info[f"smoke_{p.body}"] = check = smoke(server, target.path(p), bodies[p.body])
            if check["status"] != 200:
                points[p.key] = f"smoke request answered {check['status']}"
                continue
            url = f"http://127.0.0.1:{server.port}{target.path(p)}"
            try:
                result = run_point(f"{target.name}.{p.key}", url, p.body, bodies[p.body], p.connections, settings, raw)
                points[p.key] = result.summary()
            except (LoadError, WrkOutputError) as exc:
                points[p.key] = f"load failed: {exc}"
            print(f"  {target.name}.{p.key}: {point_line(points[p.key])}", flush=True)
        info["rss_mb"] = rss_mb(server.pid)
        if py_spy is not None:
            p = next((q for q in target.points if q.key == profile_point), C16)
            url = f"http://127.0.0.1:{server.port}{target.path(p)}"
            info["profile"] = profile_under_load(
                server.pid, url, bodies[p.body], p.connections, settings, raw, py_spy, f"{target.name}.profile"
            )
            info["profile"]["point"] = p.key
        info["exit_code"] = stop(server.proc)
        trim_log(server.log_path)
    except (ServerStartError, OSError) as exc:
        info["error"] = str(exc)
        if cold:
            info["cold_start_s"] = cold
            info["cold_start_median_s"] = sorted(cold)[len(cold) // 2]
    finally:
        if server is not None:
            stop(server.proc)
    return info, points


def run_sigterm(base: Target, bodies: dict[str, Path], raw: Path) -> dict[str, Any]:
    server = start(base, raw, "sigterm")
    grace = float(base.env.get("TABSERVE_SHUTDOWN_GRACE_S", "10"))
    try:
        result = sigterm_under_load(
            server.pid,
            server.port,
            base.predict_path,
            bodies["single"],
            grace_s=grace,
            wait_exit=lambda t: server.proc.wait(timeout=t),
        )
    finally:
        stop(server.proc)
    result["target"] = base.name
    print(
        f"  sigterm: {result['failed_before_signal']} failed of {result['sent_before_signal']} sent before "
        f"the signal, exit {result['exit_code']} after {result['exit_after_signal_s']} s",
        flush=True,
    )
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sections = selected_sections(args.only, args.skip)
    if args.list_sections:
        print(" ".join(sections))
        return 0
    install_cleanup()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {CLIENT_CORE})
    settings = LoadSettings(warmup_s=args.warmup, duration_s=args.duration, core=CLIENT_CORE)
    raw = args.out / "raw"
    bodies = write_bodies(WORK / "bodies", BATCH_ROWS)
    results: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "bash bench/run.sh" + ("" if not argv else " " + shlex.join(argv)),
            "sections": sections,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "cold_starts": args.cold_starts,
            "batch_rows": BATCH_ROWS,
            "loadavg_before": loadavg(),
            **machine_meta(),
        },
        "servers": {},
        "points": {},
    }
    targets = with_tabserve_env(all_targets(), args.tabserve_env)
    results["meta"]["tabserve_env"] = args.tabserve_env
    missing = (
        tabserve_available()
        if any(s.startswith("tabserve") or s in ("overload", "sigterm") for s in sections)
        else None
    )
    t0 = time.perf_counter()
    for name in sections:
        if name in ("overload", "sigterm"):
            continue
        target = targets[name]
        print(f"[bench] {target.title}", flush=True)
        if target.kind == "tabserve" and missing:
            results["servers"][name] = {"title": target.title, "notes": target.notes, "error": missing}
            continue
        py_spy = PY_SPY if args.profile and target.kind == "tabserve" else None
        info, points = run_target(target, bodies, settings, raw, args.cold_starts, py_spy, args.profile_point)
        results["servers"][name] = info
        results["points"][name] = points
    if "overload" in sections:
        print("[bench] overload", flush=True)
        base = targets[args.overload_target]
        results["overload"] = (
            {"error": missing}
            if base.kind == "tabserve" and missing
            else _guard(lambda: run_overload(base, args, bodies, settings, raw, start, trim=trim_log))
        )
        if not (base.kind == "tabserve" and missing):
            for i, variant in enumerate(args.overload_baseline):
                extra = env_pairs([pair for pair in variant.split(",") if pair], "--overload-baseline")
                print(f"[bench] overload baseline {i + 1} ({variant})", flush=True)
                results.setdefault("overload_baselines", []).append(
                    _guard(
                        lambda extra=extra, i=i: run_overload(
                            base, args, bodies, settings, raw, start, f"overload-baseline{i + 1}", extra, trim_log
                        )
                    )
                )
    if "sigterm" in sections:
        print("[bench] SIGTERM under load", flush=True)
        base = targets[args.sigterm_target]
        results["sigterm"] = (
            {"error": missing}
            if base.kind == "tabserve" and missing
            else _guard(lambda: run_sigterm(base, bodies, raw))
        )
    results["meta"]["loadavg_after"] = loadavg()
    results["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
    json_path, md_path = write_report(results, args.out)
    checks = json.loads(json_path.read_text())["checks"]
    for check in checks:
        print(f"  [{check['status']:>4}] {check['name']}: {check['measured']} (target {check['target']})")
    print(f"[bench] wrote {md_path} and {json_path.name} in {results['meta']['elapsed_s']} s")
    return 0


def _guard(fn: Any) -> dict[str, Any]:
    try:
        out: dict[str, Any] = fn()
        return out
    except (ServerStartError, LoadError, WrkOutputError, OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
