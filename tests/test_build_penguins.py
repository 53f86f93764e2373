"""The penguins model as a spec file (``specs/penguins.toml``) through the generic ``tabserve build``, compared with
the shipped penguins 1.0.0 (which stays the served artifact: see docs/own-model.md for why)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabserve.cli import main
from tabserve.training.penguins_data import package_csv

pytestmark = pytest.mark.training

REPO = Path(__file__).resolve().parents[1]


def test_penguins_from_its_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "build",
        "--data",
        str(package_csv()),
        "--name",
        "penguins",
        "--spec",
        str(REPO / "specs" / "penguins.toml"),
    ]
    assert main([*args, "--models-dir", str(tmp_path)]) == 0, capsys.readouterr().err
    built = json.loads((tmp_path / "penguins" / "1.0.0" / "manifest.json").read_text(encoding="utf-8"))
    shipped = json.loads((REPO / "models" / "penguins" / "1.0.0" / "manifest.json").read_text(encoding="utf-8"))
    assert [i["name"] for i in built["inputs"]] == [
        "island",
        "bill_length_mm",
        "bill_depth_mm",
        "flipper_length_mm",
        "body_mass_g",
        "sex",
    ]
    assert {i["name"]: i["required"] for i in built["inputs"]} == {i["name"]: i["required"] for i in shipped["inputs"]}
    assert built["conformal"]["pattern_inputs"] == shipped["conformal"]["pattern_inputs"] == ["island", "sex"]
    assert built["output"]["classes"] == shipped["output"]["classes"]
    for key, entry in built["metrics"]["test"].items():
        assert entry["accuracy"] >= 0.97, key
        assert entry["log_loss"] < 0.05, key
        assert entry["set_coverage"]["0.9"] >= 0.9 - 0.15, key
