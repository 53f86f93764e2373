"""The command line: verify, predict, drift report and prune against a real prediction log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fastapi.testclient import TestClient

from conftest import MODELS, TABSERVE
from tabserve.api import create_app
from tabserve.cli import build_parser
from tabserve.config import Settings


def run(*args: str, data: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if data is not None:
        env["TABSERVE_DATA_DIR"] = str(data)
    return subprocess.run([str(TABSERVE), *args], env=env, capture_output=True, text=True, check=False)


def test_verify_passes_on_the_committed_models() -> None:
    result = run("verify", str(MODELS))
    assert result.returncode == 0, result.stderr
    assert "ok co2 1.0.0" in result.stdout
    assert "ok penguins 1.0.0" in result.stdout


def test_predict_offline_equals_the_service(tmp_path: Path) -> None:
    example = json.loads((MODELS / "penguins" / "1.0.0" / "manifest.json").read_text())["example_request"]
    request = tmp_path / "request.json"
    request.write_text(json.dumps(example))
    offline = json.loads(run("predict", "penguins", "--input", str(request), "--models", str(MODELS)).stdout)
    with TestClient(create_app(Settings(models_dir=MODELS, data_dir=tmp_path / "d"))) as client:
        served = client.post("/models/penguins/predict", json=example).json()
    assert offline["probabilities"] == served["probabilities"]
    assert offline["prediction_set"] == served["prediction_set"]


def test_drift_report_and_prune_read_the_prediction_log(tmp_path: Path) -> None:
    data = tmp_path / "var"
    example = json.loads((MODELS / "penguins" / "1.0.0" / "manifest.json").read_text())["example_request"]
    shifted = {**example, "body_mass_g": 6200}
    with TestClient(create_app(Settings(models_dir=MODELS, data_dir=data))) as client:
        batch = client.post("/models/penguins/predict", json={"instances": [shifted] * 600}).json()
        for index in range(3):  # feedback: the drift report's coverage section counts it
            body = {"request_id": batch["request_id"], "index": index, "actual": "Gentoo" if index else "Nope"}
            assert client.post("/feedback", json=body).status_code == 200
    out = tmp_path / "report"
    result = run("drift", "--model", "penguins", "--models", str(MODELS), "--since", "1d", "--out", str(out), data=data)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 600
    assert "body_mass_g" in summary["drift"]
    assert (out / "drift.json").exists()
    assert "<img" in (out / "drift.html").read_text()
    (cell,) = json.loads((out / "drift.json").read_text())["coverage"]["cells"]
    covered = sum(1 for label in ("Nope", "Gentoo", "Gentoo") if label in batch["predictions"][0]["prediction_set"])
    assert (cell["samples"], cell["covered"]) == (3, covered)
    assert "<h2>Coverage</h2>" in (out / "drift.html").read_text()
    kept = run("prune", "--days", "1", data=data)
    assert kept.returncode == 0, kept.stderr
    assert "pruned 0 rows" in kept.stdout
    bad = run("export", "--since", "yesterday", data=data)
    assert bad.returncode == 2
    assert "--since" in bad.stderr


def test_every_command_is_in_the_readme() -> None:
    readme = (MODELS.parent / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"`tabserve {name}" in readme, name


def test_a_command_whose_extra_is_missing_names_the_install_line(tmp_path: Path) -> None:
    """The serving image carries no training libraries: `tabserve build` there says which extra to install."""
    csv = tmp_path / "t.csv"
    csv.write_text("x,y\n1,2\n2,3\n")
    script = (
        "import sys; sys.modules['pandas'] = None; from tabserve.cli import main; "
        f"raise SystemExit(main(['build', '--data', {str(csv)!r}, '--target', 'y', '--name', 't', "
        f"'--models-dir', {str(tmp_path / 'models')!r}]))"
    )
    python = TABSERVE.parent / "python"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert "tabserve build: needs the 'train' extra (module 'pandas' is not installed)" in result.stderr
    assert "pip install 'tabserve[train]'" in result.stderr
    assert "Traceback" not in result.stderr
