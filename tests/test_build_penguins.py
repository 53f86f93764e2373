"""The shipped penguins model is its packaged spec plus the generic build: ``tabserve train penguins`` rebuilds the
committed penguins 1.1.0 bit for bit, and 1.1.0 is the same or better than 1.0.0 (the last version made by the
penguins-only trainer) on the very same test rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tabserve.cli import main

pytestmark = pytest.mark.training

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "penguins"
SEED = 20261126


def _manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def test_train_penguins_rebuilds_the_committed_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "penguins", "--out", str(tmp_path), "--version", "1.1.0"]) == 0, capsys.readouterr().err
    built, shipped = tmp_path / "penguins" / "1.1.0", SHIPPED / "1.1.0"
    assert (built / "model.onnx").read_bytes() == (shipped / "model.onnx").read_bytes()
    new, old = _manifest(built), _manifest(shipped)
    for key in ("inputs", "output", "columns", "onnx", "conformal", "example_request", "training_data", "seed"):
        assert new[key] == old[key], key
    for pattern, entry in old["metrics"]["test"].items():
        for metric in ("accuracy", "log_loss", "ece"):
            assert new["metrics"]["test"][pattern][metric] == pytest.approx(entry[metric], rel=1e-12, abs=1e-15)
    assert new["metrics"]["temperature"] == old["metrics"]["temperature"]


def _stratified_split_of_1_0_0(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The penguins-only trainer's split (removed with it): train 40 %, then the rest halved into calibration and
    test, stratified, seeded."""
    from sklearn.model_selection import train_test_split

    index = np.arange(labels.size)
    _, rest = train_test_split(index, test_size=0.6, stratify=labels, random_state=SEED)
    calibration, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=SEED + 1)
    return np.sort(calibration), np.sort(test)


def test_spec_build_is_the_same_or_better_than_1_0_0_on_the_same_rows() -> None:
    import pandas as pd

    from tabserve.training.build.infer import infer_schema
    from tabserve.training.build.read import read_table
    from tabserve.training.build.shipped import default_data, spec_path
    from tabserve.training.build.spec import read_spec
    from tabserve.training.build.table import normalise, split

    spec = read_spec(spec_path("penguins"))
    frame: pd.DataFrame = read_table(default_data("penguins"))
    schema, frame = infer_schema(frame, "species", spec, None, None)
    rows = normalise(frame, schema, spec)
    splits = split(frame, rows, schema, SEED, (spec.calibration_share, spec.test_share), validation=False)
    calibration, test = _stratified_split_of_1_0_0(rows.labels)
    index = {int(r): i for i, r in enumerate(rows.file_rows)}
    assert [index[int(r)] for r in splits.test.file_rows] == test.tolist()
    assert [index[int(r)] for r in splits.calibration.file_rows] == calibration.tolist()

    new, old = _manifest(SHIPPED / "1.1.0")["metrics"]["test"], _manifest(SHIPPED / "1.0.0")["metrics"]["test"]
    assert set(new) == set(old) == {"11", "10", "01", "00"}
    for pattern, before in old.items():
        after = new[pattern]
        assert after["rows"] == before["rows"], pattern
        assert after["accuracy"] >= before["accuracy"], pattern
        # float32 graphs of the same model (a folded MatMul before, skl2onnx's scaler + linear now): 1e-5 apart
        assert after["log_loss"] <= before["log_loss"] + 1e-5, pattern
        assert after["ece"] <= before["ece"] + 1e-5, pattern
        for level, covered in before["set_coverage"].items():
            assert after["set_coverage"][level] >= covered, (pattern, level)
            assert after["mean_set_size"][level] <= before["mean_set_size"][level] + 1e-12, (pattern, level)


def test_train_penguins_adds_an_exported_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--extra`` appends rows with the data's columns (an exported prediction log with feedback) to the build."""
    from tabserve.training.build.shipped import default_data

    header, *lines = default_data("penguins").read_text(encoding="utf-8").splitlines()
    extra = tmp_path / "feedback.csv"
    extra.write_text("\n".join([header, *lines[4:64]]) + "\n", encoding="utf-8")
    assert main(["train", "penguins", "--out", str(tmp_path / "m"), "--extra", str(extra)]) == 0
    manifest = _manifest(tmp_path / "m" / "penguins" / "1.0.0")
    assert [(d["path"], d["rows"]) for d in manifest["training_data"]] == [("penguins.csv", 344), ("feedback.csv", 60)]
    assert sum(manifest["metrics"]["split"]["rows"].values()) == 342 + 60
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("species,island\nAdelie,Dream\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "penguins", "--out", str(tmp_path / "m"), "--extra", str(wrong)]) != 0
    assert "wrong.csv: its columns differ from penguins.csv's; lacks ['bill_length_mm'" in capsys.readouterr().err
