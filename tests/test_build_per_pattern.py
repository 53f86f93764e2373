"""``estimator = "per_pattern"``: one LightGBM per missing-input pattern, optionally proportional to given inputs,
in one ONNX graph that dispatches each row to its pattern's trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from specbuild import build_with_spec
from tabserve.artifacts import verify_model_dir
from tabserve.cli import main
from tabserve.features.validation import InstanceValidator
from tabserve.runtime import OnnxModel

pytestmark = pytest.mark.training

OPTIONAL = '["usage", "region"]'


def _table(n: int = 3000, seed: int = 11) -> pd.DataFrame:
    """A target proportional to ``usage`` (a factor per ``kind``), which ``size`` predicts only roughly."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["A", "B", "C"], n)
    size = rng.uniform(1.0, 10.0, n).round(3)
    usage = (2.0 * size * rng.lognormal(0.0, 0.15, n)).round(3)
    factor = np.select([kind == "A", kind == "B"], [1.0, 1.3], 0.8)
    region = rng.choice(["NORTH", "SOUTH"], n)
    y = usage * factor * np.where(region == "NORTH", 1.05, 1.0) * rng.lognormal(0.0, 0.01, n)
    frame = pd.DataFrame({"kind": kind, "size": size, "usage": usage, "region": region, "y": y.round(4)})
    frame.loc[rng.random(n) < 0.3, "usage"] = np.nan
    frame.loc[rng.random(n) < 0.2, "region"] = None
    return frame


def _build(tmp_path: Path, name: str, model_lines: str) -> dict[str, Any]:
    spec = f'[model]\ntarget = "y"\noptional = {OPTIONAL}\nscore = "relative"\n{model_lines}'
    return build_with_spec(tmp_path, name, _table(), spec)


def test_proportional_submodels_beat_one_model_and_dispatch_every_row_to_its_pattern(tmp_path: Path) -> None:
    one = _build(tmp_path, "one", "")
    per = _build(tmp_path, "per", 'estimator = "per_pattern"\nproportional_to = ["usage"]')
    assert per["metrics"]["model"]["link"] == "log"
    assert set(per["metrics"]["model"]["patterns"]) == {"11", "10", "01", "00"}
    weights = per["metrics"]["model"]["patterns"]["11"]["base_weights"]["usage"]
    assert 0.9 < weights < 1.2  # least squares of y on usage through the origin: the mean factor
    assert per["metrics"]["model"]["patterns"]["01"]["base_weights"] == {"usage": 0.0}
    # usage given: the ratio is a function of kind and region (a ±2.5 % the model cannot know when region is absent)
    for key, share in (("11", 0.4), ("10", 0.75)):
        assert per["metrics"]["test"][key]["mae"] < share * one["metrics"]["test"][key]["mae"]
    for entry in per["metrics"]["test"].values():
        assert 0.8 <= entry["coverage"]["0.9"] <= 0.97
    # every row once per pattern it can stand for (a row without usage cannot stand for a pattern giving it)
    frame = _table()
    given = {"11": frame["usage"].notna() & frame["region"].notna(), "10": frame["usage"].notna()}
    given |= {"01": frame["region"].notna(), "00": frame["y"].notna()}
    assert per["metrics"]["parity"]["rows"] == sum(int(mask.sum()) for mask in given.values())

    verified = verify_model_dir(tmp_path / "per" / "1.0.0")
    model = OnnxModel(verified)
    validator = InstanceValidator(verified.manifest)
    bodies = [
        {"kind": "A", "size": 4.0, "usage": 8.0, "region": "NORTH"},
        {"kind": "B", "size": 4.0},
        {"kind": "C", "size": 4.0, "usage": 8.0},
        {"kind": "B", "size": 7.0, "region": "SOUTH"},
        {"kind": "A", "size": 4.0, "usage": 8.0, "region": "north"},
    ]
    rows = [validator.one(body).values for body in bodies]
    one_by_one = [float(model.run(model.encoder.encode_row(row))[0]) for row in rows]
    batch = model.run(np.vstack([model.encoder.encode_row(row) for row in rows]))
    assert np.asarray(batch, dtype=np.float64).reshape(-1).tolist() == one_by_one
    assert one_by_one[0] == one_by_one[4]
    assert one_by_one[0] == pytest.approx(8.0 * 1.05, rel=0.03)  # the proportional answer: usage × factor
    assert one_by_one[2] == pytest.approx(8.0 * 0.8, rel=0.03)
    empty = model.run(np.zeros((0, model.encoder.width), dtype=np.float32))
    assert np.asarray(empty).size == 0


def test_without_optional_inputs_one_submodel_answers_every_row(tmp_path: Path) -> None:
    """No pattern inputs: one pattern (every input given), no grouping in the graph, its answers the booster's."""
    frame = _table().dropna().drop(columns=["region"])
    spec = '[model]\ntarget = "y"\nestimator = "per_pattern"\nproportional_to = ["usage"]\nscore = "relative"'
    manifest = build_with_spec(tmp_path, "plain", frame, spec)
    assert list(manifest["metrics"]["model"]["patterns"]) == ["all"]
    assert manifest["metrics"]["parity"]["rows"] > 0  # checked against the booster at build, within tolerance
    verified = verify_model_dir(tmp_path / "plain" / "1.0.0")
    model = OnnxModel(verified)
    row = InstanceValidator(verified.manifest).one({"kind": "A", "size": 4.0, "usage": 8.0}).values
    matrix = np.vstack([model.encoder.encode_row(row)] * 3)
    assert float(model.run(matrix[:1])[0]) == pytest.approx(8.0, rel=0.05)
    assert np.asarray(model.run(matrix)).tolist() == [float(model.run(matrix[:1])[0])] * 3


@pytest.mark.parametrize(
    ("model_lines", "frame_change", "message"),
    [
        ('proportional_to = ["usage"]', None, 'proportional_to needs estimator = "per_pattern" and a regression task'),
        (
            'estimator = "per_pattern"\nproportional_to = ["kind"]',
            None,
            "proportional_to names ['kind'], which are not",
        ),
        ('estimator = "per_pattern"\nproportional_to = ["usage"]', "negative", "needs a positive target"),
        ('estimator = "per_pattern"\ntask = "classification"', "classes", "per_pattern fits regression only"),
        ('estimator = "per_pattern"\n[columns.region]\ntype = "text"', None, "['region'] are text (no absent code)"),
        ('pattern_names = { "1" = "usage" }', None, "spec pattern_names has keys ['1']; the patterns of usage, region"),
    ],
)
def test_per_pattern_refusals_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_lines: str, frame_change: str | None, message: str
) -> None:
    frame = _table(600)
    if frame_change == "negative":
        frame.loc[3, "y"] = -1.0
    elif frame_change == "classes":
        frame["y"] = np.where(frame["size"] > 5.0, "big", "small")
    data = tmp_path / "t.csv"
    frame.to_csv(data, index=False)
    spec = tmp_path / "t.toml"
    spec.write_text(f'[model]\ntarget = "y"\noptional = {OPTIONAL}\n{model_lines}\n', "utf-8")
    code = main(["build", "--data", str(data), "--name", "t", "--spec", str(spec), "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("tabserve build:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_spec_pattern_names_and_normal_ahead_reach_the_manifest(tmp_path: Path) -> None:
    names = '{ "11" = "both", "10" = "usage only", "01" = "region only", "00" = "neither" }'
    spec = f'[model]\ntarget = "y"\noptional = {OPTIONAL}\npattern_names = {names}\n[columns.size]\nnormal_ahead = 2.5'
    manifest = build_with_spec(tmp_path, "named", _table(600), spec)
    assert manifest["conformal"]["pattern_names"] == {
        "11": "both",
        "10": "usage only",
        "01": "region only",
        "00": "neither",
    }
    assert [entry["name"] for entry in manifest["metrics"]["test"].values()] == [
        "both",
        "usage only",
        "region only",
        "neither",
    ]
    size = {i["name"]: i for i in manifest["inputs"]}["size"]
    assert size["in_distribution"] == {"min": size["training"]["min"], "max": size["training"]["max"] + 2.5}
    assert {i["name"]: i for i in manifest["inputs"]}["usage"].get("in_distribution") is None
