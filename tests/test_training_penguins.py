"""The penguins model: data handling, export parity, reproducibility, targets, and the committed artifact."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tabserve.artifacts import VerifiedModel, verify_model_dir
from tabserve.manifest import CategoryInput, NumericInput
from tabserve.runtime import OnnxModel
from tabserve.training.options import TrainOptions
from tabserve.training.penguins import evaluate, train
from tabserve.training.penguins_data import (
    CLASSES,
    CSV_COLUMNS,
    clean,
    encode,
    masked,
    package_csv,
    pattern_keys,
    read_frame,
    split,
)
from tabserve.training.penguins_metrics import served_sets
from tabserve.training.penguins_model import choose_temperature, estimator_probabilities, fit_pipeline

COMMITTED = Path(__file__).resolve().parents[1] / "models" / "penguins" / "1.0.0"
SEED = 20261126


@pytest.fixture(scope="module")
def committed() -> VerifiedModel:
    return verify_model_dir(COMMITTED)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> VerifiedModel:
    out = tmp_path_factory.mktemp("penguins")
    path = train(TrainOptions(data_dir=None, out_root=out, version="1.0.0", seed=SEED, plots=False))
    return verify_model_dir(path)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def test_clean_drops_rows_missing_a_measurement() -> None:
    frame, package_rows = read_frame()
    data = clean(frame)
    assert package_rows == 344
    assert (data.rows, data.dropped) == (342, 2)
    assert sorted(set(data.columns["island"])) == ["BISCOE", "DREAM", "TORGERSEN"]


def test_clean_normalises_sex_aliases_and_missing() -> None:
    row = {"species": "Adelie", "island": "torgersen island", "bill_length_mm": 39.0, "bill_depth_mm": 18.0}
    row |= {"flipper_length_mm": 180.0, "body_mass_g": 3700.0}
    data = clean(_frame([row | {"sex": "m"}, row | {"sex": " F "}, row | {"sex": None}]))
    assert data.columns["sex"] == ["MALE", "FEMALE", None]
    assert data.columns["island"] == ["TORGERSEN"] * 3


def test_clean_rejects_unknown_species() -> None:
    row = {"species": "Emperor", "island": "Dream", "bill_length_mm": 50.0, "bill_depth_mm": 20.0}
    row |= {"flipper_length_mm": 220.0, "body_mass_g": 9000.0, "sex": "male"}
    with pytest.raises(ValueError, match="Emperor"):
        clean(_frame([row]))


def test_masked_pattern_excludes_rows_missing_a_given_input() -> None:
    data = clean(read_frame()[0])
    with_sex = masked(data, "11")
    without_sex = masked(data, "10")
    assert with_sex.rows == data.rows - 9
    assert without_sex.rows == data.rows
    assert set(without_sex.columns["sex"]) == {None}
    assert set(masked(data, "00").columns["island"]) == {None}


def test_split_is_stratified_and_disjoint_for_seed() -> None:
    data = clean(read_frame()[0])
    train_rows, calibration, test = split(data, SEED)
    assert train_rows.rows + calibration.rows + test.rows == data.rows
    for part in (train_rows, calibration, test):
        shares = np.bincount(part.labels, minlength=3) / part.rows
        assert np.allclose(shares, np.bincount(data.labels) / data.rows, atol=0.02)


@pytest.mark.training
def test_onnx_export_matches_estimator_on_test_split(committed: VerifiedModel) -> None:
    data = clean(read_frame()[0])
    train_rows, _, test = split(data, committed.manifest.seed)
    pipeline = fit_pipeline(train_rows)
    temperature = choose_temperature(train_rows, committed.manifest.seed).temperature
    model = OnnxModel(committed)
    for key in pattern_keys():
        rows = masked(test, key)
        expected = estimator_probabilities(pipeline, temperature, encode(rows))
        served = np.asarray(model.run(model.encoder.encode_columns(rows.columns, rows.rows)), dtype=np.float64)
        assert served.shape == (rows.rows, len(CLASSES))
        assert np.array_equal(served.argmax(axis=1), expected.argmax(axis=1)), key
        assert float(np.max(np.abs(served - expected))) <= 1e-4, key


@pytest.mark.training
def test_retrain_with_same_seed_reproduces_committed_metrics(
    retrained: VerifiedModel, committed: VerifiedModel
) -> None:
    # the model and its conformal tables bit for bit; the reported metrics to 1e-12 relative: numpy's SIMD
    # summation order depends on the CPU, so an out-of-fold mean can differ in its last digit between machines
    assert (retrained.path / "model.onnx").read_bytes() == (committed.path / "model.onnx").read_bytes()
    assert retrained.manifest.conformal == committed.manifest.conformal
    assert _close(retrained.manifest.metrics, committed.manifest.metrics), retrained.manifest.metrics


def _close(got: object, want: object) -> bool:
    """Equal structure and values, floats to 1e-12 relative."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_close, got, want))
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0)
    return got == want


@pytest.mark.training
def test_evaluate_recomputes_manifest_metrics_from_artifact(committed: VerifiedModel) -> None:
    report = evaluate(committed, None)
    for key in ("test", "baseline_majority", "ece_bins"):
        assert report[key] == committed.manifest.metrics[key], key
    assert report["data"]["matches_training_data"] is True


def test_committed_model_meets_accuracy_and_ece_targets(committed: VerifiedModel) -> None:
    metrics = committed.manifest.metrics["test"]
    assert set(metrics) == set(pattern_keys())
    for key, table in metrics.items():
        assert table["accuracy"] >= 0.98, key
        assert table["ece"] <= 0.03, key
        assert table["accuracy"] > committed.manifest.metrics["baseline_majority"]["accuracy"], key


def test_committed_conformal_tables_cover_required_levels_finitely(committed: VerifiedModel) -> None:
    conformal = committed.manifest.conformal
    assert {0.5, 0.8, 0.9, 0.95} <= set(conformal.levels)
    assert sorted(conformal.quantiles) == ["00", "01", "10", "11"]
    assert conformal.pattern_inputs == ["island", "sex"]
    for table in conformal.quantiles.values():
        values = [table[f"{level:g}"] for level in conformal.levels]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
        assert values == sorted(values)
    text = (committed.path / "manifest.json").read_text(encoding="utf-8")
    assert "Infinity" not in text
    assert "NaN" not in text


def test_committed_schema_rejects_100kg_penguin_and_lists_categories(committed: VerifiedModel) -> None:
    mass = committed.manifest.input("body_mass_g")
    assert isinstance(mass, NumericInput)
    assert mass.unit == "g"
    assert "kg" in mass.units
    assert mass.plausible.max < 100_000 < 1e9
    assert mass.plausible.min < mass.training.min <= mass.training.max < mass.plausible.max
    sex = committed.manifest.input("sex")
    assert isinstance(sex, CategoryInput)
    assert not sex.required
    assert sex.aliases["M"] == "MALE"
    for name in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island", "sex"):
        assert name in committed.manifest.reference_histograms


def test_committed_unknown_island_scores_like_absent_island(committed: VerifiedModel) -> None:
    model = OnnxModel(committed)
    base = {"bill_length_mm": 46.5, "bill_depth_mm": 17.9, "flipper_length_mm": 192.0, "body_mass_g": 3500.0}
    proba = model.predict_rows([base | {"island": "ATLANTIS", "sex": "FEMALE"}, base | {"sex": "FEMALE"}])
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(proba[0], proba[1])


def test_committed_example_request_is_an_adelie(committed: VerifiedModel) -> None:
    example = dict(committed.manifest.example_request)
    example["island"] = example["island"].upper()
    example["sex"] = example["sex"].upper()
    proba = OnnxModel(committed).predict_rows([example])
    assert committed.manifest.output.model_dump()["classes"][int(proba[0].argmax())] == "Adelie"


def test_committed_training_data_is_the_package_csv(committed: VerifiedModel) -> None:
    entries = committed.manifest.training_data
    assert [(e.path, e.rows) for e in entries] == [("penguins.csv", 344)]
    assert entries[0].sha256 == "f204db2c753b0937caac3cb35258562c14f073e4bbc76be24b4c51ce22767a93"
    assert package_csv().name == "penguins.csv"


@pytest.mark.training
def test_train_with_extra_csv_records_second_data_file(tmp_path: Path) -> None:
    source = package_csv().read_text(encoding="utf-8").splitlines()
    extra = tmp_path / "extra.csv"
    extra.write_text("\n".join([source[0], *source[1:4]]) + "\n", encoding="utf-8")
    out = train(TrainOptions(data_dir=None, out_root=tmp_path / "models", version="9.9.9", extra=extra, plots=False))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [entry["rows"] for entry in manifest["training_data"]] == [344, 3]
    assert manifest["metrics"]["split"]["cleaned_rows"] == 345


def test_served_sets_fall_back_to_top_class_when_lac_set_is_empty() -> None:
    mask = np.array([[False, False, False], [True, True, False]])
    served = served_sets(mask, np.array([2, 0]))
    assert served.tolist() == [[False, False, True], [True, True, False]]
