"""The shipped co2 model is its packaged spec plus the generic build: ``tabserve train co2`` rebuilds the committed
co2 3.0.1 bit for bit from the published NRCan files; 3.0.1 answers what 3.0.0 answered, bit for bit (the same
trees in a leaner graph); and they are better than 2.0.0 (the last version made by the co2-specific trainer) on
the same 2022 rows, tested by the same rule (a sibling fitted on the years before); the canonical table it is built
from (``training/co2_data.py``); ``tabserve evaluate`` on a committed version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import MODELS, data_dir
from tabserve.artifacts import verify_model_dir
from tabserve.cli import main
from tabserve.runtime import OnnxModel
from tabserve.training.co2_data import (
    CONSUMPTION,
    DATA_FILES,
    DATA_SHA256,
    OFFICIAL_COLUMNS,
    TABLE_COLUMNS,
    TABLE_TARGET,
    load,
    write_table,
)

pytestmark = pytest.mark.training

SHIPPED = MODELS / "co2" / "3.0.1"
SAME_TREES = MODELS / "co2" / "3.0.0"
"""Sealed before the build's graph grouped rows by a counting sort (and before it recorded a floor)."""
LEGACY = MODELS / "co2" / "2.0.0"


def _manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def test_train_co2_rebuilds_the_committed_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "co2", "--data", str(data_dir()), "--out", str(tmp_path), "--version", "3.0.1"])
    assert code == 0, capsys.readouterr().err
    built = tmp_path / "co2" / "3.0.1"
    assert (built / "model.onnx").read_bytes() == (SHIPPED / "model.onnx").read_bytes()
    new, old = _manifest(built), _manifest(SHIPPED)
    for key in ("inputs", "output", "columns", "onnx", "conformal", "example_request", "training_data", "seed"):
        assert new[key] == old[key], key
    assert new["metrics"]["test"] == old["metrics"]["test"]
    # the training data recorded are the published files (not the canonical table written for the build)
    assert {e["path"]: e["sha256"] for e in new["training_data"]} == DATA_SHA256
    assert not list(tmp_path.glob(".tabserve-*")), "the build's private folders are gone"


def test_3_0_1_answers_what_3_0_0_answered_bit_for_bit_on_every_pattern() -> None:
    """The same trees, grouped by pattern in fewer nodes: every row's answer is unchanged, alone or in a batch
    of every pattern mixed, and so are the conformal tables and test figures (only the floor is new)."""
    lean, sealed = verify_model_dir(SHIPPED), verify_model_dir(SAME_TREES)
    new, old = _manifest(SHIPPED), _manifest(SAME_TREES)
    for key in ("inputs", "columns", "conformal", "example_request", "training_data", "seed"):
        assert new[key] == old[key], key
    assert new["metrics"]["test"] == old["metrics"]["test"]
    assert new["output"] == {**old["output"], "floor": 0.0}
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 3.0, (20_000, len(new["columns"]))).astype(np.float32)
    fuel = [i for i, c in enumerate(new["columns"]) if c["input"].startswith("fuel_consumption")]
    x[:, fuel] = rng.uniform(3.0, 25.0, (x.shape[0], len(fuel))).astype(np.float32)
    for column in fuel:
        x[rng.random(x.shape[0]) < 0.5, column] = np.nan  # every one of the 8 patterns, shuffled
    x[rng.random(x.shape[0]) < 0.1, 0] = np.nan  # model year absent too
    a, b = OnnxModel(lean), OnnxModel(sealed)
    for rows in (x, x[:1], x[7:10], x[:0]):
        assert np.array_equal(a.run(rows).view(np.uint32), b.run(rows).view(np.uint32))


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


def test_evaluate_reproduces_2_0_0s_recorded_figures_from_the_committed_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The generic ``tabserve evaluate`` on 2022's rows of the canonical table re-scores the version the legacy
    trainer made to the figures it recorded (its shipped graph on 2022, per fuel-figure pattern)."""
    table = tmp_path / "co2.csv"
    write_table(data_dir(), None, table)
    newest = pd.read_csv(table)
    newest = newest[newest["model_year"] == 2022]
    data = tmp_path / "2022.parquet"
    newest.to_parquet(data, index=False)
    capsys.readouterr()
    args = ["evaluate", "co2", "--data", str(data), "--models", str(MODELS), "--version", "2.0.0", "--every-pattern"]
    assert main([*args, "--level", "0.9"]) == 0
    report = json.loads(capsys.readouterr().out)
    recorded = _manifest(LEGACY)["metrics"]["shipped_in_sample"]["model"]
    assert set(report["patterns"]) == set(recorded)
    for key, entry in recorded.items():
        assert report["patterns"][key]["rows"] == entry["rows"] == len(newest)
        assert report["patterns"][key]["mae"] == pytest.approx(entry["mae"], abs=1e-3), key


def test_the_table_canonicalises_classes_and_drops_duplicates(tmp_path: Path) -> None:
    data = load(data_dir())
    frame = data.frame
    classes = set(frame["vehicle_class"].dropna())
    assert "SPORT UTILITY VEHICLE SMALL" in classes and "SUV SMALL" not in classes
    assert not any(c.islower() for c in "".join(frame["make"]))
    assert data.duplicates_dropped >= 3
    assert data.unknown_class_rows == 1
    key = ["model_year", "make", "model_key", "vehicle_class", "transmission", "fuel_type", "engine_size_l"]
    assert frame.duplicated(subset=[*key, *CONSUMPTION, "co2"]).sum() == 0
    out = tmp_path / "table.csv"
    read = write_table(data_dir(), None, out)
    assert [(p.name, n) for p, n in read] == [(p.name, n) for p, n in data.file_rows.items()]
    table = pd.read_csv(out)
    assert list(table.columns) == [*TABLE_COLUMNS, TABLE_TARGET] and len(table) == len(frame)


def test_extra_rows_with_empty_fuel_columns_join_the_table(tmp_path: Path) -> None:
    extra = tmp_path / "extra.csv"
    header = ",".join(OFFICIAL_COLUMNS)
    extra.write_text(f"{header}\n2022,Toyota,RAV4 AWD,Sport utility vehicle: Small,2.5,4,AS8,X,,,,,190,,\n")
    rows = load(data_dir(), extra).frame
    rows = rows[rows["source"] == "extra"]
    assert len(rows) == 1
    assert rows[list(CONSUMPTION)].isna().all(axis=None)
    assert rows["vehicle_class"].tolist() == ["SPORT UTILITY VEHICLE SMALL"]


def test_a_data_file_with_other_bytes_than_published_is_refused(tmp_path: Path) -> None:
    for name in DATA_FILES:
        (tmp_path / name).write_bytes((data_dir() / name).read_bytes())
    tampered = tmp_path / DATA_FILES[-1]
    tampered.write_bytes(tampered.read_bytes().replace(b",184,", b",185,", 1))
    with pytest.raises(ValueError, match="sha256"):
        load(tmp_path)


def test_ood_flag_spares_the_newest_year_and_catches_rows_built_out_of_range(tmp_path: Path) -> None:
    from tabserve.artifacts import verify_model_dir
    from tabserve.features.validation import InstanceValidator

    validator = InstanceValidator(verify_model_dir(SHIPPED).manifest)
    out = tmp_path / "table.csv"
    write_table(data_dir(), None, out)
    newest = pd.read_csv(out).drop(columns=[TABLE_TARGET])
    newest = newest[newest["model_year"] == 2022]
    rows = [{k: v for k, v in row.items() if not pd.isna(v)} for row in newest.to_dict("records")]
    flagged = [validator.one(row).out_of_distribution for row in rows]
    assert sum(flagged) / len(flagged) <= 0.10
    built = (
        [{**row, "engine_size_l": 9.0} for row in rows[:100]]
        + [{**row, "fuel_consumption_city_l_per_100km": 38.0} for row in rows[100:200]]
        + [{**row, "fuel_type": "H"} for row in rows[200:300]]
        + [{**row, "vehicle_class": "Hovercraft"} for row in rows[300:400]]
    )
    assert sum(validator.one(row).out_of_distribution for row in built) / len(built) >= 0.95
    # the generic build flags values outside those trained on (2.0.0 flagged beyond 12 cylinders; 16 is trained on)
    assert not validator.one({**rows[0], "cylinders": 16}).out_of_distribution
