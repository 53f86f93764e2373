"""The shipped co2 model is its packaged spec plus the generic build: ``tabserve train co2`` rebuilds the committed
co2 3.0.0 bit for bit from the published NRCan files, and 3.0.0 is better than 2.0.0 (the last version made by the
co2-specific trainer) on the same 2022 rows, tested by the same rule (a sibling fitted on the years before)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import MODELS, data_dir
from tabserve.cli import main
from tabserve.training.co2_data import DATA_SHA256

pytestmark = pytest.mark.training

SHIPPED = MODELS / "co2" / "3.0.0"
LEGACY = MODELS / "co2" / "2.0.0"


def _manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def test_train_co2_rebuilds_the_committed_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "co2", "--data", str(data_dir()), "--out", str(tmp_path), "--version", "3.0.0"])
    assert code == 0, capsys.readouterr().err
    built = tmp_path / "co2" / "3.0.0"
    assert (built / "model.onnx").read_bytes() == (SHIPPED / "model.onnx").read_bytes()
    new, old = _manifest(built), _manifest(SHIPPED)
    for key in ("inputs", "output", "columns", "onnx", "conformal", "example_request", "training_data", "seed"):
        assert new[key] == old[key], key
    assert new["metrics"]["test"] == old["metrics"]["test"]
    # the training data recorded are the published files (not the canonical table written for the build)
    assert {e["path"]: e["sha256"] for e in new["training_data"]} == DATA_SHA256
    assert not list(tmp_path.glob(".tabserve-*")), "the build's private folders are gone"


def test_3_0_0_is_better_than_2_0_0_on_every_pattern_by_the_same_rule() -> None:
    new, old = _manifest(SHIPPED)["metrics"], _manifest(LEGACY)["metrics"]
    assert new["split"]["rows"]["test"] == old["temporal"]["test_rows"]  # the same 2022 rows
    for key, entry in old["temporal"]["model"].items():
        assert new["test"][key]["mae"] < entry["mae"], key
        assert new["test"][key]["rmse"] < entry["rmse"], key
    for entry in new["test"].values():
        assert 0.87 <= entry["coverage"]["0.9"] <= 0.94


def test_model_year_is_optional_and_the_next_two_years_are_normal_use() -> None:
    from tabserve.artifacts import verify_model_dir
    from tabserve.features.validation import InstanceValidator
    from tabserve.runtime import OnnxModel

    verified = verify_model_dir(SHIPPED)
    model, validator = OnnxModel(verified), InstanceValidator(verified.manifest)
    example = dict(verified.manifest.example_request)
    specs = {k: v for k, v in example.items() if not k.startswith("fuel_consumption")}
    for body in (example, specs):
        with_year = float(model.run(model.encoder.encode_row(validator.one(body).values))[0])
        undated = {k: v for k, v in body.items() if k != "model_year"}
        without = float(model.run(model.encoder.encode_row(validator.one(undated).values))[0])
        assert abs(without - with_year) < 0.08 * with_year, (body, with_year, without)  # trained with it absent
    newest = int(next(i for i in verified.manifest.inputs if i.name == "model_year").training.max)  # type: ignore[union-attr]
    assert newest == 2022
    assert not validator.one({**example, "model_year": newest + 2}).out_of_distribution
    assert validator.one({**example, "model_year": newest + 3}).out_of_distribution
