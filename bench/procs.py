"""Server processes under test: start pinned to a core, cold start to readiness, RSS of the tree, stop.

Every server started here is registered so that :func:`stop_all` (called from ``finally`` blocks, ``atexit``
and the SIGINT/SIGTERM handlers installed by :func:`install_cleanup`) kills whatever is still running.
RSS comes from ``/proc`` (psutil is not a dependency).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

POLL_S = 0.020
_LIVE: list[subprocess.Popen[bytes]] = []


class ServerStartError(RuntimeError):
    """A server exited or never answered its readiness route."""


@dataclass
class Server:
    """A running server: its process (the exec'd command, pinned with taskset), port and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    cold_start_s: float
    ready_polls: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


def http_status(port: int, method: str, path: str, timeout: float = 1.0, body: bytes | None = None) -> int:
    """One request to 127.0.0.1:port; the status code, or -1 when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return -1
    finally:
        conn.close()


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    ready_path: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    core: int = 0,
    timeout_s: float = 90.0,
) -> Server:
    """Exec ``taskset -c core argv`` and poll ``GET ready_path`` every 20 ms from exec until it answers 200.

    The cold start is the time from just before exec to the first 200. The poll schedule is anchored at
    exec (k * 20 ms), so a slow answer does not shift later polls.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    _LIVE.append(proc)
    pidfile = os.environ.get("BENCH_PIDFILE")
    if pidfile:  # bench/run.sh's trap kills these process groups even if this driver dies hard
        with Path(pidfile).open("a", encoding="utf-8") as fh:
            fh.write(f"{proc.pid}\n")
    polls = 0
    while True:
        polls += 1
        if http_status(port, "GET", ready_path, timeout=2.0) == 200:
            return Server(name, proc, port, log_path, time.perf_counter() - t0, polls)
        if proc.poll() is not None:
            raise ServerStartError(f"{name} exited with {proc.returncode} before ready; see {log_path}")
        elapsed = time.perf_counter() - t0
        if elapsed > timeout_s:
            stop(proc)
            raise ServerStartError(f"{name} not ready after {timeout_s:.0f} s; see {log_path}")
        next_tick = (int(elapsed / POLL_S) + 1) * POLL_S
        time.sleep(max(0.0, next_tick - (time.perf_counter() - t0)))


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    # children left behind in the group (e.g. a worker process) go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc in _LIVE:
        _LIVE.remove(proc)
    return proc.returncode


def stop_all() -> None:
    """Kill every server this process started that is still registered."""
    for proc in list(_LIVE):
        stop(proc, grace_s=3.0)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Kill the servers on normal exit, Ctrl-C and SIGTERM."""
    atexit.register(stop_all)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def children_of(pid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    out: list[int] = []
    for task in (proc_root / str(pid) / "task").glob("*"):
        with contextlib.suppress(OSError):
            out.extend(int(x) for x in (task / "children").read_text().split())
    return out


def process_tree(pid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """``pid`` and all its descendants."""
    seen: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.append(current)
        stack.extend(children_of(current, proc_root))
    return seen


def parse_status_kb(text: str, key: str) -> int | None:
    """A ``kB`` figure (e.g. ``VmRSS``) out of a ``/proc/<pid>/status`` text."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 else None
    return None


def rss_mb(pid: int, proc_root: Path = Path("/proc")) -> dict[str, float]:
    """RSS in MiB: ``tree`` (sum over the process tree), ``max_process`` and ``processes`` (count)."""
    values: list[int] = []
    for member in process_tree(pid, proc_root):
        with contextlib.suppress(OSError):
            kb = parse_status_kb((proc_root / str(member) / "status").read_text(), "VmRSS")
            if kb is not None:
                values.append(kb)
    return {
        "tree": round(sum(values) / 1024.0, 1),
        "max_process": round(max(values, default=0) / 1024.0, 1),
        "processes": float(len(values)),
    }


def pss_mb(pid: int, proc_root: Path = Path("/proc")) -> float:
    """Proportional set size of the process tree in MiB (``smaps_rollup``): a page shared by k processes (a fork
    server's imports in its workers) counts 1/k in each, so the sum is the memory the tree really holds."""
    total = 0
    for member in process_tree(pid, proc_root):
        with contextlib.suppress(OSError):
            kb = parse_status_kb((proc_root / str(member) / "smaps_rollup").read_text(), "Pss")
            total += kb or 0
    return round(total / 1024.0, 1)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that are free right now (all bound at once, then released)."""
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]
