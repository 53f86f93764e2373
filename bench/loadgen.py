"""Driving wrk: one point = a warm-up run then a measured run, wrk pinned to its own core, output kept raw.

Every run is bounded by its duration (plus a hard subprocess timeout) and targets 127.0.0.1 only.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import rss_mb
from bench.wrkresult import WrkResult, parse_wrk_output

LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"


class LoadError(RuntimeError):
    """wrk failed or printed no result."""


@dataclass(frozen=True)
class LoadSettings:
    """How long and where the load generator runs."""

    warmup_s: int = 3
    duration_s: int = 10
    wrk_timeout_s: int = 2
    core: int = 1


@dataclass
class PointResult:
    """One point: the warm-up and the measured run."""

    name: str
    connections: int
    body: str
    warmup: WrkResult
    measured: WrkResult
    rss_samples_mb: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {"connections": self.connections, "body": self.body, **self.measured.summary()}
        out["warmup"] = {
            "requests": self.warmup.requests,
            "non_2xx": self.warmup.non_2xx,
            "timeouts": self.warmup.timeouts,
            "socket_errors": self.warmup.socket_errors,
        }
        if self.rss_samples_mb:
            out["rss_samples_mb"] = self.rss_samples_mb
        return out


def wrk_command(url: str, connections: int, duration_s: int, settings: LoadSettings) -> list[str]:
    """``taskset -c <core> wrk -t1 -c<n> -d<d>s --timeout <t>s --latency -s post.lua <url>``."""
    return [
        "taskset",
        "-c",
        str(settings.core),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={settings.wrk_timeout_s}s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]


def run_wrk(
    url: str,
    body_path: Path,
    connections: int,
    duration_s: int,
    settings: LoadSettings,
    raw_path: Path,
    *,
    tagged: bool = False,
) -> WrkResult:
    """Run wrk once, keep its stdout under ``raw_path`` and parse the result line. ``tagged``: every request
    carries its own X-Request-Id and post.lua times each one (exact latency per status, see wrkresult)."""
    env = dict(os.environ)
    env["BENCH_BODY"] = str(body_path)
    env["BENCH_TAG"] = "1" if tagged else "0"
    cmd = wrk_command(url, connections, duration_s, settings)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=duration_s + 30, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish: {' '.join(cmd)}") from exc
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(f"$ {' '.join(cmd)}\n{done.stdout}\n--- stderr ---\n{done.stderr}", encoding="utf-8")
    if done.returncode != 0:
        raise LoadError(f"wrk exited {done.returncode}: {done.stderr.strip()[:300]}")
    return parse_wrk_output(done.stdout)


class RssSampler:
    """Samples the RSS of a process tree once a second in a background thread (for the memory-flat check)."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb(self.pid)["tree"])
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_point(
    name: str,
    url: str,
    body_key: str,
    body_path: Path,
    connections: int,
    settings: LoadSettings,
    raw_dir: Path,
    sample_pid: int | None = None,
    tagged: bool = False,
) -> PointResult:
    """Warm up for ``warmup_s`` then measure for ``duration_s`` at ``connections``."""
    warm_path, path = raw_dir / f"{name}.warmup.txt", raw_dir / f"{name}.txt"
    warm = run_wrk(url, body_path, connections, settings.warmup_s, settings, warm_path, tagged=tagged)
    time.sleep(0.2)
    if sample_pid is None:
        measured = run_wrk(url, body_path, connections, settings.duration_s, settings, path, tagged=tagged)
        return PointResult(name, connections, body_key, warm, measured)
    with RssSampler(sample_pid) as sampler:
        measured = run_wrk(url, body_path, connections, settings.duration_s, settings, path, tagged=tagged)
    return PointResult(name, connections, body_key, warm, measured, sampler.samples)
