"""Free-text columns in ``tabserve build`` (spec ``type = "text"``): token features chosen from the training rows and
the spec's word groups, served as the shipped co2 model serves its model names; and a time column as an input."""

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
from tabserve.training.build.spec import ColumnSpec
from tabserve.training.build.tokens import choose_tokens, first_words

pytestmark = pytest.mark.training

GROUPS = 'token_groups = { awd = ["AWD", "4WD"] }'


def _table(n: int = 2000, seed: int = 4) -> pd.DataFrame:
    """``price`` = size + 10 for AWD/4WD names − 20 for HYBRID names; the names also carry words that tell nothing."""
    rng = np.random.default_rng(seed)
    brand = rng.choice(["Alto", "Brio", "Cora", "Dune"], n)
    awd = rng.choice(["", " AWD", " 4WD"], n, p=[0.6, 0.2, 0.2])
    hybrid = rng.random(n) < 0.3
    names = [
        f"{b} {rng.integers(100, 999)}{a}{' Hybrid' if h else ''} {rng.choice(['LX', 'SE', 'GT'])}"
        for b, a, h in zip(brand, awd, hybrid, strict=True)
    ]
    size = rng.uniform(0.0, 50.0, n).round(2)
    year = rng.integers(2000, 2020, n)
    price = 100.0 + size + np.where(awd != "", 10.0, 0.0) - np.where(hybrid, 20.0, 0.0) + rng.normal(0.0, 1.0, n)
    return pd.DataFrame({"year": year, "name": names, "size": size, "price": price.round(3)})


def _build(tmp_path: Path, name: str, spec_text: str) -> dict[str, Any]:
    return build_with_spec(tmp_path, name, _table(), f'[model]\ntarget = "price"\n{spec_text}')


def test_text_words_become_token_features_the_server_reads(tmp_path: Path) -> None:
    words = _build(tmp_path, "words", f'[columns.name]\ntype = "text"\ntokens = 3\n{GROUPS}')
    without = _build(tmp_path, "without", 'drop = ["name"]')
    text_input = next(i for i in words["inputs"] if i["name"] == "name")
    assert text_input["type"] == "text" and text_input["required"] is True and text_input["max_length"] == 200
    tokens = [c["tokens"] for c in words["columns"] if c["kind"] == "token"]
    assert tokens[0] == ["AWD", "4WD"]  # the group first, then the 3 words that tell most: HYBRID among them
    assert len(tokens) == 4 and ["HYBRID"] in tokens
    assert words["metrics"]["test"]["all"]["mae"] < 0.3 * without["metrics"]["test"]["all"]["mae"]
    assert words["reference_histograms"]["name"]["kind"] == "category"  # first words, for the card

    verified = verify_model_dir(tmp_path / "words" / "1.0.0")
    model = OnnxModel(verified)
    validator = InstanceValidator(verified.manifest)

    def price(name: str) -> float:
        row = validator.one({"name": name, "size": 20.0, "year": 2010}).values
        return float(model.run(model.encoder.encode_row(row))[0])

    plain = price("Zephyr 123 XR")  # a name never seen: served, not refused
    assert price("zephyr 123 4wd xr") - plain == pytest.approx(10.0, abs=2.5)
    assert price("Zephyr 123 Hybrid XR") - plain == pytest.approx(-20.0, abs=2.5)


def test_choose_tokens_keeps_groups_first_and_skips_rare_and_universal_words() -> None:
    values = ["A X Y"] * 30 + ["B X Y"] * 30 + ["C Y"] * 5
    labels = np.array([10.0] * 30 + [0.0] * 30 + [50.0] * 5)
    grouped = ColumnSpec(kind="text", tokens=5, token_groups={"ab": ("A", "B")})
    # C is in 5 rows (fewer than 20), Y in every row (tells nothing): neither is a column
    assert choose_tokens(values, labels, "regression", grouped) == {"group_ab": ["A", "B"], "word_X": ["X"]}
    # alone, the word whose rows depart most from the mean (8.46) times √rows: B (|0 − 8.46|·√30 > |10 − 8.46|·√30)
    assert choose_tokens(values, labels, "regression", ColumnSpec(kind="text", tokens=1)) == {"word_B": ["B"]}
    classes = np.array([0] * 30 + [1] * 30 + [1] * 5)
    assert choose_tokens(values, classes, "classification", ColumnSpec(kind="text", tokens=1)) == {"word_A": ["A"]}
    assert first_words(["b a", None, "c"], keep=1) == ["B", None, "(other)"]


def test_time_input_makes_the_time_column_an_input(tmp_path: Path) -> None:
    kept = _build(tmp_path, "kept", 'time_column = "year"\ntime_input = true\ndrop = ["name"]')
    plain = _build(tmp_path, "plain", 'time_column = "year"\ndrop = ["name"]')
    assert "year" in [i["name"] for i in kept["inputs"]]
    assert "year" not in [i["name"] for i in plain["inputs"]]
    assert kept["metrics"]["split"]["temporal"] is True


@pytest.mark.parametrize(
    ("spec_text", "extra", "message"),
    [
        ("[columns.name]\ntokens = 3", [], 'tokens needs type = "text"'),
        ('[columns.name]\ntype = "text"\ntokens = -1', [], "tokens must be a whole number of words from 0 to 500"),
        ('[columns.name]\ntype = "text"\ntoken_groups = { a = [] }', [], "token_groups must map a name to a list"),
        ("[model]\ntime_input = 1", [], "time_input must be true or false"),
    ],
)
def test_text_spec_refusals_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec_text: str, extra: list[str], message: str
) -> None:
    data = tmp_path / "cars.csv"
    _table(300).to_csv(data, index=False)
    spec = tmp_path / "s.toml"
    body = spec_text if spec_text.startswith("[model]") else f'[model]\ntarget = "price"\n{spec_text}'
    spec.write_text(body + "\n", "utf-8")
    args = ["build", "--data", str(data), "--name", "s", "--target", "price", "--spec", str(spec)]
    code = main([*args, "--models-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("tabserve build:")]
    assert len(lines) == 1 and message in lines[0], err
