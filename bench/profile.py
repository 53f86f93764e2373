"""Where the time goes: py-spy samples a server under the 16-connection load (``--profile``).

The profile run is separate from the measured points (sampling costs the server a few per cent). py-spy's
``raw`` output (collapsed stacks, ``frame;frame;... count``) is kept under ``bench/results/raw/`` and
summarised as the functions with the most self time and the most inclusive time, so a report can say
where a target's missing time went. py-spy lives in ``bench/.venv-tools`` (run.sh installs it on
``--profile``); it needs ptrace on the server process (root, or CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench.loadgen import LoadSettings, run_wrk

# leaves of threads blocked waiting (py-spy's idle detection misses some lock waits): not CPU time
IDLE_LEAVES = frozenset(
    {
        "Condition.wait (threading.py)",
        "Event.wait (threading.py)",
        "_wait_for_tstate_lock (threading.py)",
        "Queue.get (queue.py)",
        "_worker (concurrent/futures/thread.py)",
    }
)
BACKGROUND_ROOT = "Thread._bootstrap (threading.py)"
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_LINENO = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """``"predict (tabserve/service.py:42)"`` -> ``"predict (tabserve/service.py)"``."""
    return _LINENO.sub(")", frame.strip())


def parse_collapsed(text: str) -> Counter[tuple[str, ...]]:
    """Collapsed stacks -> sample counts (line numbers dropped, the process/thread root frames kept)."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        frames = tuple(frame_name(f) for f in match["stack"].split(";") if f.strip())
        if frames:
            stacks[frames] += int(match["count"])
    return stacks


def top_functions(stacks: Counter[tuple[str, ...]], n: int = 25) -> dict[str, Any]:
    """The ``n`` functions with the most self (leaf) samples and the most inclusive samples, as shares.

    Samples of threads blocked in a wait are dropped first, so the shares are of the CPU-busy samples.
    """
    idle = sum(count for frames, count in stacks.items() if frames[-1] in IDLE_LEAVES)
    stacks = Counter({frames: count for frames, count in stacks.items() if frames[-1] not in IDLE_LEAVES})
    total = sum(stacks.values())
    background = sum(count for frames, count in stacks.items() if frames[0] == BACKGROUND_ROOT)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    counts = {"samples": total, "idle_samples_dropped": idle, "background_thread_share": 0.0}
    if total == 0:
        return {**counts, "self": [], "inclusive": []}
    counts["background_thread_share"] = round(background / total, 4)

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(count / total, 4)] for name, count in counter.most_common(n)]

    # the trunk every main-thread stack shares (main(), uvicorn's run, the event loop) says nothing
    main_total = total - background
    trunk = Counter[str]()
    for frames, count in stacks.items():
        if frames[0] != BACKGROUND_ROOT:
            for name in set(frames):
                trunk[name] += count
    for name, count in trunk.items():
        if count == main_total and count == inclusive[name]:
            del inclusive[name]
    return {**counts, "self": shares(own), "inclusive": shares(inclusive)}


def profile_under_load(
    pid: int, url: str, body: Path, connections: int, settings: LoadSettings, raw_dir: Path, py_spy: Path, name: str
) -> dict[str, Any]:
    """Run wrk for ``settings.duration_s`` and py-spy on ``pid`` meanwhile; summarise the samples."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    out_path = raw_dir / f"{name}.pyspy.txt"
    seconds = max(1, settings.duration_s - 2)
    cmd = [str(py_spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw", "-o", str(out_path)]
    result: dict[str, Any] = {}

    def load() -> None:
        try:
            res = run_wrk(url, body, connections, settings.duration_s, settings, raw_dir / f"{name}.wrk.txt")
            result["load_rps_while_sampled"] = round(res.ok_rps, 1)
        except Exception as exc:  # reported; the profile is still useful
            result["load_error"] = str(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 30)
    thread.join(timeout=settings.duration_s + 40)
    if done.returncode != 0 or not out_path.exists():
        return {**result, "error": f"py-spy exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    summary = top_functions(parse_collapsed(out_path.read_text(encoding="utf-8", errors="replace")))
    return {**result, **summary, "raw": out_path.name, "seconds": seconds, "rate_hz": 250}
