"""The soak's CI version (``make soak`` is the 10-minute one): bench/soak.py for 60 s at half the capacity it
measures first, in 15 s windows. Zero errors, p99 of the last window within 20 % of the first, RSS growth
under 5 % after the warm-up, no growth in open files, a prediction-log row for every 200. When other processes
took the server's core for much longer in one of the two windows than in the other, the p99 comparison is not
judged and the test is reported as skipped, saying so, after every other check passed (docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.soak]


def test_sixty_seconds_at_half_capacity_stay_flat(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "bench.soak", "--duration", "60", "--window", "15", "--warmup", "10"]
    argv += ["--capacity-seconds", "5", "--data-root", str(tmp_path), "--out", str(out)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    print(  # the figures quoted in docs/reliability.md (pytest -s)
        f"soak 60 s: capacity {summary['capacity_rps']:.0f} req/s, rate {summary['rate_rps']:.0f} req/s; "
        + "; ".join(f"{name}: {check['measured']}" for name, check in summary["checks"].items())
    )
    failed = {name: check for name, check in summary["checks"].items() if check["pass"] is False}
    assert failed == {}, json.dumps(summary, indent=2)[-6000:]
    assert summary["server_exit_code"] == 0
    assert summary["rate_rps"] > 100  # a real load, not a trickle
    assert result.returncode == 0, result.stderr[-3000:]
    inconclusive = [check["inconclusive"] for check in summary["checks"].values() if check["pass"] is None]
    if inconclusive:  # every other check passed; the p99 comparison says nothing about the server on this run
        pytest.skip(f"p99 stability not judged: {inconclusive[0]}")
