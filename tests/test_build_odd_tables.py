"""Tables no code here was written for (found by probing): booleans, non-Latin and symbol categories, near-duplicate
names, categoricals with unused levels, time columns with offsets or day-first dates, inputs named like outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tabserve.artifacts import verify_model_dir
from tabserve.cli import main
from tabserve.errors import RequestValidationError
from tabserve.features.text import normalise_key
from tabserve.features.validation import InstanceValidator

pytestmark = pytest.mark.training


def _table(n: int = 400, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, n).round(4)
    flag = rng.random(n) < 0.5
    return pd.DataFrame({"x": x, "flag": flag, "y": (2.0 * x + np.where(flag, 3.0, 0.0) + rng.normal(0, 0.3, n))})


def test_normalised_keys_keep_letters_of_every_script() -> None:
    assert normalise_key(" suv - small ") == "SUV SMALL"
    assert normalise_key("Москва") == "МОСКВА" and normalise_key("東京") == "東京"
    assert normalise_key("ＡＢＣ") == "ABC" and normalise_key("Ünïcødé") == "ÜNÏCØDÉ"
    assert normalise_key("🙂") == "" and normalise_key("snake_case") == "SNAKE CASE"


def test_a_boolean_column_is_served_and_scored_from_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "flags.parquet"
    _table().to_parquet(data)
    assert main(["build", "--data", str(data), "--name", "odd", "--models-dir", str(tmp_path), "--target", "y"]) == 0
    verified = verify_model_dir(tmp_path / "odd" / "1.0.0")
    validator = InstanceValidator(verified.manifest)
    assert validator.one({"x": 0.5, "flag": True}).values["flag"] == "TRUE"
    assert validator.one({"x": 0.5, "flag": "false"}).values["flag"] == "FALSE"
    for body, message in (  # x has no unit: the messages say nothing of units
        ({"flag": True}, "x is required"),
        ({"x": "a"}, "x must be a number; got str"),
        ({"x": {"value": 1, "unit": "cm"}}, "unknown unit 'cm' for x; allowed units: none (send a bare number)"),
    ):
        with pytest.raises(RequestValidationError) as caught:
            validator.one(body)
        assert caught.value.errors[0].message == message
    pytest.importorskip("pyarrow")
    capsys.readouterr()
    out_file = tmp_path / "out.parquet"
    code = main(["score", str(data), str(out_file), "--model", "odd", "--models", str(tmp_path), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    import pyarrow.parquet as pq

    scored = pq.read_table(out_file)
    assert scored.num_rows == 400
    assert len((tmp_path / "out.rejects.csv").read_text(encoding="utf-8").splitlines()) == 1  # the header only


def test_non_latin_categories_are_kept_and_merged_spellings_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _table().drop(columns="flag")
    rng = np.random.default_rng(2)
    frame["city"] = rng.choice(["Москва", "東京", "Αθήνα"], len(frame))
    frame["income"] = rng.choice(["<=50K", ">50K"], len(frame))
    data = tmp_path / "cities.csv"
    frame.to_csv(data, index=False)
    assert main(["build", "--data", str(data), "--name", "odd", "--models-dir", str(tmp_path), "--target", "y"]) == 0
    err = capsys.readouterr().err
    assert "column 'income': '<=50K', '>50K' are one category ('50K')" in err
    manifest = json.loads((tmp_path / "odd" / "1.0.0" / "manifest.json").read_text(encoding="utf-8"))
    city = next(i for i in manifest["inputs"] if i["name"] == "city")
    assert sorted(city["categories"]) == sorted(["ΑΘΉΝΑ", "МОСКВА", "東京"])
    validator = InstanceValidator(verify_model_dir(tmp_path / "odd" / "1.0.0").manifest)
    assert validator.one({"x": 0.1, "city": "москва", "income": ">50K"}).warnings == []


def test_a_feature_merged_by_spelling_is_no_leak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(4)
    n = 400
    frame = pd.DataFrame({"x": rng.normal(0, 1, n), "other": rng.choice(["<=50K", ">50K"], n)})
    frame["y"] = np.where(frame["x"] + rng.normal(0, 0.5, n) > 0, ">50K", "<=50K")
    data = tmp_path / "adult.csv"
    frame.to_csv(data, index=False)
    assert main(["build", "--data", str(data), "--name", "odd", "--models-dir", str(tmp_path), "--target", "y"]) == 0
    assert "a leak, refused" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        ("a,a ,y\n" + "1,2,3\n" * 200, "duplicated column names ['a'] (after trimming spaces around names)"),
        ("x,y\n" + "1,True\n2,False\n" * 100, "target column 'y' is boolean (true/false); regression needs numbers"),
        ("prediction,y\n" + "".join(f"{i % 7},{i * 0.5}\n" for i in range(200)), "input column(s) ['prediction']"),
        (
            "t,x,y\n" + "".join(f"0{1 + i % 9}/0{1 + i % 9}/2021,{i % 5},{i * 0.5}\n" for i in range(200)),
            "time column 't': dates like '01/01/2021' could be day-first or month-first",
        ),
    ],
)
def test_refusals_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str], csv: str, expected: str) -> None:
    data = tmp_path / "data.csv"
    data.write_text(csv, encoding="utf-8")
    extra = ["--task", "regression"] + (["--time-column", "t"] if csv.startswith("t,") else [])
    assert (
        main(["build", "--data", str(data), "--name", "odd", "--models-dir", str(tmp_path), "--target", "y", *extra])
        == 1
    )
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_unused_categories_and_mixed_offsets_are_read_as_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 400
    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"x": rng.normal(0, 1, n)})
    frame["y"] = pd.Categorical(np.where(frame["x"] > 0, "yes", "no"), categories=["yes", "no", "maybe"])
    frame["t"] = [f"2021-01-{1 + i % 28:02d}T00:00:00{'+01:00' if i % 2 else '+00:00'}" for i in range(n)]
    data = tmp_path / "cats.parquet"
    frame.to_parquet(data)
    args = ["build", "--data", str(data), "--name", "odd", "--models-dir", str(tmp_path), "--target", "y"]
    assert main([*args, "--time-column", "t"]) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "odd" / "1.0.0" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["output"]["classes"] == ["no", "yes"]
    assert manifest["metrics"]["split"]["temporal"] is True


def test_numbers_with_symbols_and_a_shifting_class_mix_are_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 400
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "day": pd.date_range("2021-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "x": x,
            "price": [f"${v:,.2f}" for v in rng.uniform(1, 5000, n)],
            # the positive class grows from ~10 % to ~90 % of the rows over time
            "y": np.where(rng.random(n) < np.linspace(0.1, 0.9, n), "late", "early"),
        }
    )
    data = tmp_path / "drift.csv"
    frame.to_csv(data, index=False)
    args = ["build", "--data", str(data), "--name", "odd", "--models-dir", str(tmp_path), "--target", "y"]
    assert main([*args, "--time-column", "day"]) == 0
    err = capsys.readouterr().err
    assert "column 'price' holds numbers written with symbols or separators (e.g. '$" in err
    assert "the class shares shift between the calibration rows and the newer test rows" in err
