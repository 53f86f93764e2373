"""``[split] refit``: serve a model fitted on every period, with intervals from a sibling's horizon-one scores and
test figures from that sibling; temporal cuts fall on a change of the time value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specbuild import build_with_spec
from tabserve.cli import main

pytestmark = pytest.mark.training

YEARS = list(range(2010, 2020))
SPEC = """[model]
target = "y"
time_column = "year"
time_input = true
[split]
calibration = 0.1
test = 0.1
"""


def _drifting(seed: int = 5) -> pd.DataFrame:
    """A target whose level climbs 2 a year: trees cannot extrapolate, so the error grows with the horizon."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(250, 350, len(YEARS))  # uneven periods: the share cuts must move to a year boundary
    year = np.repeat(YEARS, sizes)
    x = rng.uniform(0.0, 10.0, year.size)
    y = 3.0 * x + 2.0 * (year - YEARS[0]) + rng.normal(0.0, 0.5, year.size)
    return pd.DataFrame({"year": year, "x": x.round(3), "y": y.round(3)}).sample(frac=1.0, random_state=seed)


def test_refit_serves_every_period_and_tests_a_sibling_one_period_ahead(tmp_path: Path) -> None:
    frame = _drifting()
    counts = frame["year"].value_counts()
    held = build_with_spec(tmp_path, "held", frame, SPEC)
    refit = build_with_spec(tmp_path, "refit", frame, SPEC + "refit = true")

    for manifest in (held, refit):  # the cuts fall on years: 2019 tested, 2018 calibrates
        assert manifest["metrics"]["split"]["rows"]["test"] == counts[2019]
        assert manifest["metrics"]["split"]["rows"]["calibration"] == counts[2018]
    report = refit["metrics"]["refit"]
    n = len(frame)
    assert report["served"]["train_rows"] + report["served"]["validation_rows"] == n
    assert report["tester"]["train_rows"] + report["tester"]["validation_rows"] == n - counts[2019]
    assert list(refit["conformal"]["calibration_rows"].values()) == [counts[2019]]  # the tester's 2019 scores
    year = {i["name"]: i for i in refit["inputs"]}["year"]
    assert year["training"]["max"] == 2019  # the served model (and its drift reference) saw the newest year
    assert {i["name"]: i for i in held["inputs"]}["year"]["training"]["max"] < 2018

    # held out: fitted ≤ 2017, calibrated on 2018 (one year ahead), tested on 2019 (two): too narrow and staler
    h, r = held["metrics"]["test"]["all"], refit["metrics"]["test"]["all"]
    assert r["mae"] < 0.75 * h["mae"]
    assert h["coverage"]["0.9"] < 0.6
    assert 0.75 <= r["coverage"]["0.9"] <= 1.0
    assert (tmp_path / "refit" / "1.0.0" / "model.onnx").read_bytes() != (
        tmp_path / "held" / "1.0.0" / "model.onnx"
    ).read_bytes()


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        (SPEC.replace('time_column = "year"\n', "") + "refit = true", [], "refit fits the served model again"),
        (SPEC + "refit = true", ["--onnx", "given.onnx"], "refit fits the served model again"),
        (SPEC + "refit = 1", [], "[split] refit must be true or false"),
    ],
)
def test_refit_refusals_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, extra: list[str], message: str
) -> None:
    frame = _drifting()
    data = tmp_path / "t.csv"
    frame.to_csv(data, index=False)
    (tmp_path / "given.onnx").write_bytes(b"")
    (tmp_path / "t.toml").write_text(spec + "\n", "utf-8")
    args = ["build", "--data", str(data), "--name", "t", "--spec", str(tmp_path / "t.toml")]
    code = main(
        [*args, "--models-dir", str(tmp_path), *[str(tmp_path / e) if e.endswith(".onnx") else e for e in extra]]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("tabserve build:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_temporal_cuts_move_to_a_change_of_time_value_only_within_half_a_split() -> None:
    from tabserve.training.build.table import temporal_cuts

    years = pd.DataFrame({"year": [2012] * 95 + [2010] * 300 + [2011] * 105})  # in time: 300, 105, 95
    order, cal_start, test_start = temporal_cuts(years, "year", 100, 100)
    assert (cal_start, test_start) == (300, 405)  # 2011 calibrates, 2012 tests
    assert sorted(years["year"].iloc[order[test_start:]].unique()) == [2012]
    big = pd.DataFrame({"year": [2010] * 10 + [2011] * 1000})  # the nearest change is 899 rows off: cut as asked
    assert temporal_cuts(big, "year", 101, 101)[1:] == (808, 909)
