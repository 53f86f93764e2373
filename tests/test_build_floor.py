"""A regression target that is never negative (a price, a count, an emission) gets ``output.floor = 0``: no prediction
or interval bound below it, in the build's test figures and when served, so a 99 % interval of a small value does
not reach into negative prices. ``[model] floor`` sets another floor, or none (``false``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from specbuild import build_with_spec
from tabserve.cli import main

pytestmark = pytest.mark.training
SPEC = """[model]
target = "y"
"""


def _skewed(seed: int = 11, rows: int = 1500, shift: float = 0.0) -> pd.DataFrame:
    """A positive, right-skewed target (an exponential's spread grows with x): absolute intervals at 0.99 are wide."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 4.0, rows)
    y = rng.exponential(1.0 + x) + shift
    return pd.DataFrame({"x": x.round(3), "z": rng.normal(0.0, 1.0, rows).round(3), "y": y.round(3)})


def _scored(tmp_path: Path, name: str, frame: pd.DataFrame) -> pd.DataFrame:
    data = tmp_path / f"{name}-rows.csv"
    frame.drop(columns=["y"]).to_csv(data, index=False)
    out = tmp_path / f"{name}-scored.parquet"
    args = ["score", str(data), str(out), "--model", name, "--models", str(tmp_path), "--level", "0.99"]
    assert main(args) == 0
    return pq.read_table(out).to_pandas()


def test_a_never_negative_target_is_never_answered_below_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _skewed()
    floored = build_with_spec(tmp_path, "floored", frame, SPEC)
    free = build_with_spec(tmp_path, "free", frame, SPEC + "floor = false")
    assert floored["output"]["floor"] == 0.0
    assert free["output"].get("floor") is None
    low = frame.nsmallest(200, "x")  # small predictions: where ± q crosses zero
    unfloored = _scored(tmp_path, "free", low)
    assert (unfloored["interval_lower"] < 0).mean() > 0.5  # the wart the floor removes
    answered = _scored(tmp_path, "floored", low)
    assert (answered["interval_lower"] >= 0).all() and (answered["prediction"] >= 0).all()
    assert np.allclose(answered["interval_upper"], unfloored["interval_upper"])  # only the floor moved
    # the build's test figures are of the floored answers: narrower at 0.99, the same coverage (no y below 0)
    for key, entry in floored["metrics"]["test"].items():
        other = free["metrics"]["test"][key]
        assert entry["coverage"] == other["coverage"]
        assert entry["mean_width"]["0.99"] < other["mean_width"]["0.99"]

    # and so is what is served: evaluated on every row, the same coverage and a narrower 99 % interval
    data = tmp_path / "all.csv"
    frame.to_csv(data, index=False)
    reports: dict[str, dict[str, Any]] = {}
    for name in ("floored", "free"):
        capsys.readouterr()
        assert main(["evaluate", name, "--data", str(data), "--models", str(tmp_path), "--level", "0.99"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)["overall"]
    assert reports["floored"]["coverage"] == reports["free"]["coverage"]
    assert reports["floored"]["mean_width"]["0.99"] < reports["free"]["mean_width"]["0.99"]


def test_a_target_with_negative_values_gets_no_floor_and_a_spec_sets_one(tmp_path: Path) -> None:
    frame = _skewed(shift=-2.0)
    assert (frame["y"] < 0).any()
    assert build_with_spec(tmp_path, "signed", frame, SPEC)["output"].get("floor") is None
    assert build_with_spec(tmp_path, "given", frame, SPEC + "floor = -5")["output"]["floor"] == -5.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('floor = "zero"', "[model] floor must be a number or false, not 'zero'"),
        ("floor = true", "[model] floor must be a number or false, not True"),
    ],
)
def test_a_bad_floor_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str) -> None:
    data = tmp_path / "t.csv"
    _skewed(rows=300).to_csv(data, index=False)
    spec = tmp_path / "t.toml"
    spec.write_text(SPEC + line + "\n", "utf-8")
    args = ["build", "--data", str(data), "--name", "t", "--spec", str(spec), "--models-dir", str(tmp_path)]
    assert main(args) == 1
    assert message in capsys.readouterr().err
