"""deploy/cloudrun/bluegreen.sh in --dry-run: the gcloud sequence of a release and of its rollbacks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "cloudrun" / "bluegreen.sh"
ARGS = ["--dry-run", "--project", "demo", "--region", "europe-west1", "--image", "img:2", "--tag", "green2"]


def _run(*extra: str, simulate: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BLUEGREEN_SIMULATE_FAILURE"}
    if simulate is not None:
        env["BLUEGREEN_SIMULATE_FAILURE"] = simulate
    return subprocess.run(
        ["bash", str(SCRIPT), *ARGS, *extra], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def _commands(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The printed commands (`+ ...` lines), without the arguments every gcloud call shares."""
    lines = [line[2:] for line in result.stderr.splitlines() if line.startswith("+ ")]
    return [line.replace(" --region europe-west1 --project demo", "").replace(" --quiet", "") for line in lines]


def test_bluegreen_dry_run_prints_the_release_sequence_when_all_checks_pass() -> None:
    result = _run()
    assert result.returncode == 0, result.stderr
    steps = [c for c in _commands(result) if not c.startswith("gcloud logging read")]
    assert steps == [
        "gcloud run services describe tabserve --format=json",
        "gcloud run deploy tabserve --image img:2 --no-traffic --tag green2 --revision-suffix green2",
        "gcloud run services describe tabserve --format=json",
        "gcloud auth print-identity-token",
        "curl -fsS https://green2---tabserve-xxxxxxxxxx-europe-west1.a.run.app/ready",
        f"curl -fsS -X POST --data @{REPO}/deploy/cloudrun/../smoke/co2.json"
        " https://green2---tabserve-xxxxxxxxxx-europe-west1.a.run.app/predict",
        "gcloud run services update-traffic tabserve --to-revisions tabserve-green2=10,tabserve-blue=90",
        "sleep 120",
        "gcloud run services update-traffic tabserve --to-revisions tabserve-green2=50,tabserve-blue=50",
        "sleep 120",
        "gcloud run services update-traffic tabserve --to-revisions tabserve-green2=100",
        "sleep 120",
    ]
    reads = [c for c in _commands(result) if c.startswith("gcloud logging read")]
    assert len(reads) == 3
    assert all('resource.labels.revision_name="tabserve-green2"' in r for r in reads)
    assert "update-traffic tabserve --region europe-west1 --project demo --to-revisions tabserve-blue=100" in (
        result.stderr
    ), "the rollback command is printed for the operator"


def test_bluegreen_dry_run_rolls_back_when_the_50_percent_step_fails() -> None:
    result = _run(simulate="50")
    assert result.returncode == 1
    commands = _commands(result)
    shifts = [c for c in commands if "update-traffic" in c]
    assert shifts == [
        "gcloud run services update-traffic tabserve --to-revisions tabserve-green2=10,tabserve-blue=90",
        "gcloud run services update-traffic tabserve --to-revisions tabserve-green2=50,tabserve-blue=50",
        "gcloud run services update-traffic tabserve --to-revisions tabserve-blue=100",
        "gcloud run services update-traffic tabserve --remove-tags green2",
    ]
    assert "5xx ratio 100/100 above 0.01 at 50 %" in result.stderr


def test_bluegreen_dry_run_shifts_no_traffic_when_the_smoke_test_fails() -> None:
    result = _run(simulate="smoke")
    assert result.returncode == 1
    commands = _commands(result)
    assert not any("tabserve-green2=" in c for c in commands)
    assert commands[-2:] == [
        "gcloud run services update-traffic tabserve --to-revisions tabserve-blue=100",
        "gcloud run services update-traffic tabserve --remove-tags green2",
    ]


@pytest.mark.parametrize("tag", ["Green", "1abc", "a_b"])
def test_bluegreen_rejects_tag_when_not_a_valid_revision_suffix(tag: str) -> None:
    result = _run("--tag", tag)
    assert result.returncode == 2
    assert "--tag must be" in result.stderr
