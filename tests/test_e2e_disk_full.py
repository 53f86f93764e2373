"""The disk of the prediction log full under a running ``tabserve serve``: its data directory (SQLite log,
spill file) on a small tmpfs of its own, filled to the last byte by the test while requests flow, then
freed. Predictions go on (all 200), the loss is loud (an ERROR line naming the count, the
``tabserve_prediction_log_lost_rows_total`` metric), the server does not crash, logging resumes once there
is room, every served prediction is either in the database or counted as lost, and the database passes
``PRAGMA integrity_check`` afterwards.

Mounting a tmpfs needs root (or CAP_SYS_ADMIN), as on CI here; without it the test skips, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess
from test_e2e_postgres_outage import metric
from traffic import Traffic

pytestmark = pytest.mark.e2e
DISK_BYTES = 16 * 1024 * 1024
"""Room for the rows of the seconds before and after the fill, below SQLite's first WAL checkpoint (16 MB)."""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted at ``tmp_path/disk`` (unmounted after the test)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem has no byte left (ENOSPC)."""
    filler = folder / "filler.bin"
    block = b"\0" * 65536
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        with contextlib.suppress(OSError):  # the last partial block
            while True:
                handle.write(b"\0" * 512)
    return filler


def log_figures(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    names = ("written", "spilled", "replayed", "lost")
    return {n: metric(text, f"tabserve_prediction_log_{n}_rows_total") for n in names}


def test_predictions_go_on_and_the_log_stays_sound_when_its_disk_is_full(
    server_factory: Callable[..., ServerProcess], small_disk: Path
) -> None:
    data = small_disk / "var"
    env = {"TABSERVE_DATA_DIR": str(data), "TABSERVE_ACCESS_LOG": "false", "TABSERVE_LOG_FORMAT": "json"}
    server = server_factory(env, subdir="full")
    traffic = Traffic(server.url)
    with traffic.running():
        time.sleep(1.0)
        filler = fill(small_disk)
        at_full = len(traffic.served)
        at_full_figures = log_figures(server)
        time.sleep(3.0)
        served_while_full = len(traffic.served) - at_full
        full_figures = log_figures(server)
        filler.unlink()
        time.sleep(2.5)
    deadline = time.monotonic() + 20
    figures = log_figures(server)
    while time.monotonic() < deadline:
        figures = log_figures(server)
        if figures["written"] + figures["replayed"] + figures["lost"] >= len(traffic.served):
            break
        time.sleep(0.2)
    alive = server.process.poll() is None
    assert server.stop() == 0
    output = server.log()
    with sqlite3.connect(data / "predictions.sqlite") as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        logged = [row[0] for row in conn.execute("SELECT request_id FROM predictions")]
    loss_lines = [json.loads(line) for line in output.splitlines() if "PREDICTION LOG DATA LOSS" in line]
    print(  # the figures quoted in docs/reliability.md (pytest -s)
        f"disk full: served={len(traffic.served)} served_while_full={served_while_full} "
        f"lost while full={full_figures['lost'] - at_full_figures['lost']:.0f} final {figures}; "
        f"rows in SQLite={len(logged)}; loss lines={len(loss_lines)}; integrity={integrity}"
    )
    assert traffic.failures == []
    assert alive
    assert served_while_full > 50
    assert full_figures["lost"] > at_full_figures["lost"]  # the metric counts what the full disk cost
    assert loss_lines and all(line["severity"] == "ERROR" for line in loss_lines)
    assert any("No space left on device" in line["message"] or "full" in line["message"] for line in loss_lines)
    assert figures["written"] > full_figures["written"]  # logging resumed once there was room
    assert integrity == [("ok",)]
    assert len(logged) == len(set(logged)) and set(logged) <= set(traffic.served)
    assert len(logged) + figures["lost"] == len(traffic.served)  # every prediction: logged or counted lost
