"""``tabserve evaluate``: a version re-scored on a labelled file through the serving path, per missing-input pattern;
its figures agree with the build's own test figures on the same rows, and bad input gets a message naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import MODELS, data_dir
from specbuild import build_with_spec
from tabserve.cli import main

SPEC = """[model]
target = "y"
time_column = "year"
time_input = true
[split]
calibration = 0.15
test = 0.15
"""
YEARS = list(range(2012, 2020))


def _table(seed: int = 3) -> pd.DataFrame:
    """y from x, a colour and an optional z (absent in a quarter of the rows): two missing-input patterns."""
    rng = np.random.default_rng(seed)
    year = np.repeat(YEARS, 300)
    x = rng.uniform(0.0, 10.0, year.size)
    z = rng.uniform(-1.0, 1.0, year.size)
    colour = rng.choice(["red", "green", "blue"], year.size)
    y = 3.0 * x + 4.0 * z + np.where(colour == "red", 5.0, 0.0) + rng.normal(0.0, 0.7, year.size)
    frame = pd.DataFrame({"year": year, "x": x.round(3), "colour": colour, "z": z.round(3), "y": y.round(3)})
    frame.loc[rng.random(year.size) < 0.25, "z"] = np.nan
    return frame


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["evaluate", *args]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


@pytest.mark.training
def test_every_pattern_on_the_test_rows_reproduces_the_builds_test_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _table()
    manifest = build_with_spec(tmp_path, "tiny", frame, SPEC)
    assert manifest["conformal"]["pattern_inputs"] == ["z"]
    test_rows = manifest["metrics"]["split"]["rows"]["test"]
    newest = frame[frame["year"] == YEARS[-1]]
    assert len(newest) == test_rows  # the temporal test split is the newest year
    data = tmp_path / "newest.parquet"
    newest.to_parquet(data, index=False)
    models = str(tmp_path)
    report = _evaluate(capsys, "tiny", "--data", str(data), "--models", models, "--every-pattern")
    assert report["mode"] == "every_pattern" and report["rows"]["scored"] == test_rows
    stored = manifest["metrics"]["test"]
    assert set(report["patterns"]) == set(stored) == {"1", "0"}
    for key, entry in report["patterns"].items():
        expected = stored[key]
        assert entry["rows"] == expected["rows"]
        # the service rounds a prediction to 3 decimals: the error moves by at most 0.0005
        assert entry["mae"] == pytest.approx(expected["mae"], abs=6e-4)
        assert entry["rmse"] == pytest.approx(expected["rmse"], abs=6e-4)
        for level, covered in expected["coverage"].items():
            assert entry["coverage"][level] == pytest.approx(covered, abs=1.5 / entry["rows"])
            assert entry["mean_width"][level] == pytest.approx(expected["mean_width"][level], abs=2e-3)

    # rows as given: grouped by the pattern each row was answered with, and an overall line that sums them
    given = _evaluate(capsys, "tiny", "--data", str(data), "--models", models, "--level", "0.9")
    assert given["levels"] == [0.9]
    parts = given["patterns"]
    assert parts["1"]["rows"] == int(newest["z"].notna().sum())
    assert parts["0"]["rows"] == int(newest["z"].isna().sum())
    overall = given["overall"]
    assert overall["rows"] == test_rows
    weighted = sum(p["mae"] * p["rows"] for p in parts.values()) / test_rows
    assert overall["mae"] == pytest.approx(weighted, rel=1e-9)
    assert 0.7 <= overall["coverage"]["0.9"] <= 1.0
    # the same figures from a CSV (read as text) as from Parquet
    csv = tmp_path / "newest.csv"
    newest.to_csv(csv, index=False)
    again = _evaluate(capsys, "tiny", "--data", str(csv), "--models", models, "--level", "0.9")
    assert again["overall"] == overall


def _penguins_labelled() -> pd.DataFrame:
    return pd.read_csv(data_dir() / "palmer_penguins.csv")


def test_classification_figures_agree_with_the_scored_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = _penguins_labelled()
    lacking = int(frame["bill_length_mm"].isna().sum())  # the data set's two unmeasured birds: rejected
    frame.loc[10, "bill_length_mm"] = 9999.0  # implausible: rejected with its row, not judged
    frame.loc[5, "species"] = None  # no true value: scored, not judged
    data = tmp_path / "penguins.csv"
    frame.to_csv(data, index=False)
    report = _evaluate(capsys, "penguins", "--data", str(data), "--models", str(MODELS), "--level", "0.9")
    assert report["task"] == "classification" and report["target"] == "species"
    rejected = lacking + 1
    assert report["rows"] == {
        "read": len(frame),
        "scored": len(frame) - rejected,
        "rejected": rejected,
        "unlabelled": 1,
    }
    quoted = {r["row"]: r["reason"] for r in report["rejects"]}
    assert len(quoted) == rejected and "bill_length_mm" in quoted[11]

    out = tmp_path / "scored.parquet"
    assert main(["score", str(data), str(out), "--model", "penguins", "--models", str(MODELS), "--level", "0.9"]) == 0
    scored = pq.read_table(out).to_pandas()
    judged = scored[scored["species"].notna()]
    accuracy = float((judged["prediction"] == judged["species"]).mean())
    inside = [label in json.loads(s) for label, s in zip(judged["species"], judged["prediction_set"], strict=True)]
    overall = report["overall"]
    assert overall["rows"] == len(judged)
    assert overall["accuracy"] == pytest.approx(accuracy)
    assert overall["set_coverage"]["0.9"] == pytest.approx(float(np.mean(inside)))
    assert 0.0 < overall["log_loss"] < 0.5
    assert overall["accuracy"] > 0.9
    assert sum(p["rows"] for p in report["patterns"].values()) == len(judged)


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (lambda f: f.drop(columns=["species"]), [], "no target column 'species'"),
        (lambda f: f, ["--target", "island"], "the target column 'island' is an input of penguins"),
        (lambda f: f.head(0), [], "no row could be judged (0 rows read"),
        (
            lambda f: f.assign(species=None),
            [],
            "no row could be judged (344 rows read, 2 rejected, 342 without a true value",
        ),
        (lambda f: f, ["--out", "/nonexistent/r.json"], "--out /nonexistent/r.json: No such file or directory"),
        (lambda f: f, ["--level", "0.77"], "level 0.77 is not available; allowed levels: 0.5, 0.8, 0.9, 0.95, 0.99"),
    ],
)
def test_bad_input_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, args: list[str], message: str
) -> None:
    data = tmp_path / "penguins.csv"
    change(_penguins_labelled()).to_csv(data, index=False)
    capsys.readouterr()
    assert main(["evaluate", "penguins", "--data", str(data), "--models", str(MODELS), *args]) == 1
    assert message in capsys.readouterr().err


def test_a_regression_target_that_is_not_a_number_names_its_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = json.loads((MODELS / "co2" / "3.0.0" / "manifest.json").read_text("utf-8"))["example_request"]
    table = pd.DataFrame([example] * 20).assign(co2_emissions="200")
    table.loc[3, "engine_size_l"] = 99.0  # a rejected row before it: the row number is still the file's
    table.loc[7, "co2_emissions"] = "lots"
    table.loc[9, "co2_emissions"] = "nan"  # not known: the row is scored, not judged
    data = tmp_path / "co2.csv"
    table.to_csv(data, index=False)
    capsys.readouterr()
    assert main(["evaluate", "co2", "--data", str(data), "--models", str(MODELS), "--version", "3.0.0"]) == 1
    assert "row 8: target column 'co2_emissions' holds 'lots', not a finite number" in capsys.readouterr().err
    table.loc[7, "co2_emissions"] = "201"
    table.to_csv(data, index=False)
    report = _evaluate(capsys, "co2", "--data", str(data), "--models", str(MODELS), "--version", "3.0.0")
    assert report["rows"] == {"read": 20, "scored": 19, "rejected": 1, "unlabelled": 1}
    assert report["rejects"][0]["row"] == 4
    table.loc[7, "co2_emissions"] = "inf"
    table.to_csv(data, index=False)
    assert main(["evaluate", "co2", "--data", str(data), "--models", str(MODELS), "--version", "3.0.0"]) == 1
    assert "row 8: target column 'co2_emissions' holds 'inf', not a finite number" in capsys.readouterr().err
