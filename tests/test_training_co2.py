"""co2: export parity, the committed artifact's manifest, unknown categories, targets, data cleaning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import data_dir
from tabserve.artifacts import VerifiedModel, verify_model_dir
from tabserve.features.validation import InstanceValidator
from tabserve.manifest import CategoryInput, NumericInput, OrdinalColumn, RegressionOutput
from tabserve.runtime import OnnxModel

pytest.importorskip("lightgbm")

from tabserve.training import co2
from tabserve.training.co2_data import CONSUMPTION, DATA_FILES, OFFICIAL_COLUMNS, load, temporal_split
from tabserve.training.co2_features import ALL_PATTERNS, INPUT_ORDER, input_values, mask_pattern
from tabserve.training.options import TrainOptions

REPO = Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "models" / "co2" / "2.0.0"


@pytest.fixture(scope="module")
def verified() -> VerifiedModel:
    return verify_model_dir(ARTIFACT)


@pytest.fixture(scope="module")
def model(verified: VerifiedModel) -> OnnxModel:
    return OnnxModel(verified)


def _request(model: OnnxModel, **changes: Any) -> dict[str, Any]:
    row = dict(model.manifest.example_request)
    row.update(make="TOYOTA", vehicle_class="SPORT UTILITY VEHICLE SMALL")
    row.update(changes)
    return row


@pytest.mark.training
def test_onnx_matches_estimator_every_pattern_and_retrain_reproduces_metrics_same_seed(tmp_path: Path) -> None:
    options = TrainOptions(data_dir=data_dir(), out_root=tmp_path, version="2.0.0", plots=False)
    result = co2.train_and_export(options)
    onnx_model = OnnxModel(verify_model_dir(result.path))
    values = input_values(result.split.test)
    rows = len(result.split.test)
    worst = 0.0
    for pattern in ALL_PATTERNS:
        x = onnx_model.encoder.encode_columns(mask_pattern(values, pattern), rows)
        diff = np.abs(onnx_model.run(x).astype(np.float64) - result.recipe.predict(x).astype(np.float64))
        worst = max(worst, float(diff.max()))
    assert worst <= 0.01
    # a batch mixing every pattern goes through the row dispatch in one run
    mixed = np.vstack(
        [
            onnx_model.encoder.encode_columns(mask_pattern(values, p), rows)[i :: len(ALL_PATTERNS)]
            for i, p in enumerate(ALL_PATTERNS)
        ]
    )
    diff = np.abs(onnx_model.run(mixed).astype(np.float64) - result.recipe.predict(mixed).astype(np.float64))
    assert float(diff.max()) <= 0.01
    # same data + seed -> the committed artifact's metrics (timing aside)
    retrained = {k: v for k, v in onnx_model.manifest.metrics.items() if k != "timing"}
    committed = {k: v for k, v in verify_model_dir(ARTIFACT).manifest.metrics.items() if k != "timing"}
    assert retrained == committed
    # the same bytes of the ONNX graph (reproducible training: same data, same seed)
    assert onnx_model.manifest.files["model.onnx"] == verify_model_dir(ARTIFACT).manifest.files["model.onnx"]


def test_manifest_complete_for_committed_artifact(verified: VerifiedModel) -> None:
    manifest = verified.manifest
    assert manifest.name == "co2" and manifest.version == "2.0.0"
    assert [spec.name for spec in manifest.inputs] == list(INPUT_ORDER)
    required = {spec.name for spec in manifest.inputs if spec.required}
    assert required == {"make", "model", "vehicle_class", "engine_size_l", "cylinders", "transmission", "fuel_type"}
    assert set(manifest.reference_histograms) == set(INPUT_ORDER)
    assert set(manifest.example_request) == set(INPUT_ORDER)
    for spec in manifest.inputs:
        assert spec.description
        if isinstance(spec, NumericInput):
            assert spec.plausible.min <= spec.training.min <= spec.training.max <= spec.plausible.max
            assert spec.unit in spec.units
        if isinstance(spec, CategoryInput):
            assert spec.categories
    fuel = manifest.input("fuel_type")
    assert isinstance(fuel, CategoryInput)
    assert set(fuel.categories) == {"X", "Z", "D", "E", "N"}
    assert fuel.aliases["E85"] == "E" and fuel.aliases["DIESEL"] == "D"
    vehicle_class = manifest.input("vehicle_class")
    assert isinstance(vehicle_class, CategoryInput)
    assert vehicle_class.aliases["SUV SMALL"] == "SPORT UTILITY VEHICLE SMALL"
    assert isinstance(manifest.output, RegressionOutput)
    assert (manifest.output.name, manifest.output.unit) == ("co2_emissions", "g/km")
    conformal = manifest.conformal
    assert conformal.pattern_inputs == list(CONSUMPTION)
    assert set(conformal.quantiles) == set(ALL_PATTERNS) == set(conformal.pattern_names)
    assert {0.5, 0.8, 0.9, 0.95} <= set(conformal.levels)
    for table in conformal.quantiles.values():
        assert all(math.isfinite(q) and q > 0 for q in table.values())
    assert {entry.path for entry in manifest.training_data} == {
        "fuel_consumption_ratings_1995_2014_5cycle.csv",
        "fuel_consumption_ratings_2015_2020.csv",
        "fuel_consumption_ratings_2021_2022.csv",
    }
    assert {"lightgbm", "onnxruntime", "numpy"} <= set(manifest.library_versions)
    assert {"MODEL_CARD.md", "model.onnx", "residuals.png", "coverage.png"} <= set(manifest.files)
    assert verified.onnx_path.stat().st_size < 5 * 1024 * 1024
    card = (verified.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Contains information licensed under the Open Government Licence – Canada" in card


def test_unknown_make_and_transmission_get_unknown_code_and_finite_prediction(model: OnnxModel) -> None:
    known = _request(model)
    unknown = _request(model, make="ZZYZX MOTORS", transmission="AS11")
    row = model.encoder.encode_row(unknown)
    for index, column in enumerate(model.manifest.columns):
        if isinstance(column, OrdinalColumn) and column.input in {"make", "transmission"}:
            assert row[0, index] == column.unknown
    for case in (unknown, {**unknown, **dict.fromkeys(CONSUMPTION)}):
        prediction = float(model.predict_rows([case])[0])
        assert math.isfinite(prediction)
        assert 50.0 < prediction < 700.0
    # with all three figures given, the unknown codes barely matter (physics carries the answer)
    both = model.predict_rows([known, unknown])
    assert abs(float(both[0]) - float(both[1])) < 15.0


def test_example_request_predicts_close_to_its_rating(model: OnnxModel) -> None:
    request = _request(model)
    with_figures = float(model.predict_rows([request])[0])
    specs_only = float(model.predict_rows([{**request, **dict.fromkeys(CONSUMPTION)}])[0])
    expected = request["fuel_consumption_comb_l_per_100km"] * 23.4
    tables = model.manifest.conformal.quantiles
    relative = model.manifest.conformal.score == "relative"
    assert abs(with_figures - expected) <= tables["111"]["0.95"] * (with_figures if relative else 1.0)
    assert abs(specs_only - expected) <= tables["000"]["0.99"] * (specs_only if relative else 1.0)


def test_committed_metrics_meet_accuracy_targets(verified: VerifiedModel) -> None:
    temporal = verified.manifest.metrics["temporal"]["model"]
    assert temporal["111"]["mae"] <= 1.5
    assert temporal["000"]["mae"] <= 14.0
    assert temporal["111"]["rmse"] < 3.36 and temporal["111"]["r2"] > 0.9973  # published anchor
    assert verified.manifest.metrics["export_parity_max_abs_g_per_km"] <= 0.01
    grouped = verified.manifest.metrics["grouped"]
    assert grouped["groups_in_both"] == 0
    # with the combined figure the model IS the physics term (a residual model made it worse): never worse
    assert grouped["model"]["111"]["mae"] <= grouped["physics"]["mae"]
    assert temporal["111"]["mae"] <= verified.manifest.metrics["temporal"]["physics"]["mae"]
    assert grouped["model"]["000"]["mae"] < 0.3 * grouped["naive"]["mae"]
    # one figure alone: the residual model must beat the fitted-ratio physics guess by a clear margin
    assert temporal["100"]["mae"] < 6.0 and temporal["110"]["mae"] < 1.5


def test_committed_backtest_table_is_complete_and_its_summary_and_targets_follow_from_it(
    verified: VerifiedModel,
) -> None:
    backtest = verified.manifest.metrics["backtest"]
    table = backtest["table"]
    assert list(table) == ["2018", "2019", "2020", "2021", "2022"]
    for row in table.values():
        assert set(row) == {"111", "001", "000"}
        for cell in row.values():
            assert {"0.8", "0.9", "0.95", "mae", "rmse", "rows"} <= set(cell)
            assert cell["0.8"]["coverage"] <= cell["0.9"]["coverage"] <= cell["0.95"]["coverage"]
    for pattern, summary in backtest["summary"].items():
        cov = [row[pattern]["0.9"]["coverage"] for row in table.values()]
        assert summary["coverage_90_min"] == min(cov) and summary["coverage_90_max"] == max(cov)
        assert summary["coverage_90_mean"] == pytest.approx(sum(cov) / len(cov), abs=1e-4)
    targets = verified.manifest.metrics["targets"]
    assert targets["with_fuel_consumption_mae_ok"] and targets["specs_only_mae_ok"]
    assert targets["coverage_90_mean_ok"]
    # the chosen scheme is the candidate with the smallest mean coverage gap over all origins
    gaps = {k: c["mean_abs_coverage_gap_90"] for k, c in backtest["candidates"].items()}
    assert gaps[backtest["chosen"]] == min(gaps.values())
    assert verified.manifest.conformal.score == backtest["score"]


@pytest.mark.xfail(
    strict=True,
    reason="known: 90 % backtest coverage leaves 0.87–0.93 in two cells: origin 2018 with the combined figure "
    "(0.9335, calibrated on 2017, the 2nd year of the 2016 factor regime) and origin 2019 specs only (0.8693); "
    "every mean over origins is inside 0.89–0.91 (docs/models.md)",
)
def test_committed_backtest_coverage_at_90_within_band_every_origin_and_pattern(verified: VerifiedModel) -> None:
    table = verified.manifest.metrics["backtest"]["table"]
    assert all(0.87 <= c["0.9"]["coverage"] <= 0.93 for row in table.values() for c in row.values())


def test_committed_coverage_rises_with_level_and_stays_near_nominal(verified: VerifiedModel) -> None:
    coverage = verified.manifest.metrics["coverage_temporal_test"]
    for pattern in ALL_PATTERNS:
        table = coverage[pattern]
        levels = sorted(table, key=float)
        values = [table[level]["coverage"] for level in levels]
        assert values == sorted(values)
        assert all(abs(table[level]["coverage"] - float(level)) <= 0.06 for level in levels)


def test_evaluate_reproduces_manifest_metrics_from_artifact(verified: VerifiedModel) -> None:
    report = co2.evaluate(verified, data_dir(), backtest=False)
    for pattern in ALL_PATTERNS:
        assert report["model"][pattern]["mae"] == pytest.approx(report["manifest_model"][pattern]["mae"], abs=1e-3)
        stored = report["manifest_coverage"][pattern]["0.9"]["coverage"]
        assert report["coverage"][pattern]["0.9"]["coverage"] == pytest.approx(stored, abs=1e-4)


def test_load_canonicalises_classes_and_drops_duplicates() -> None:
    data = load(data_dir())
    frame = data.frame
    classes = set(frame["vehicle_class"].dropna())
    assert "SPORT UTILITY VEHICLE SMALL" in classes and "SUV SMALL" not in classes
    assert not any(c.islower() for c in "".join(frame["make"]))
    assert data.duplicates_dropped >= 3
    assert data.unknown_class_rows == 1
    assert (
        frame.duplicated(
            subset=[
                "model_year",
                "make",
                "model_key",
                "vehicle_class",
                "transmission",
                "fuel_type",
                "engine_size_l",
                *CONSUMPTION,
                "co2",
            ]
        ).sum()
        == 0
    )
    split = temporal_split(frame)
    assert split.train["model_year"].max() == 2022 and not split.train["outlier"].any()
    assert split.calibration_train["model_year"].max() == 2021
    assert set(split.calibration["model_year"]) == {2022} == set(split.test["model_year"])


def test_extra_rows_with_empty_fuel_columns_join_training(tmp_path: Path) -> None:
    extra = tmp_path / "extra.csv"
    header = ",".join(OFFICIAL_COLUMNS)
    extra.write_text(f"{header}\n2022,Toyota,RAV4 AWD,Sport utility vehicle: Small,2.5,4,AS8,X,,,,,190,,\n")
    data = load(data_dir(), extra)
    rows = data.frame[data.frame["source"] == "extra"]
    assert len(rows) == 1
    assert rows[list(CONSUMPTION)].isna().all(axis=None)
    split = temporal_split(data.frame)
    assert (split.train["source"] == "extra").sum() == 1
    assert (split.test["source"] == "extra").sum() == 0


def _request_rows(frame: Any) -> list[dict[str, Any]]:
    """Dataset rows as API requests (original spellings: the validator canonicalises them)."""
    values = input_values(frame)
    rows = []
    for i in range(len(frame)):
        row = {name: values[name][i] for name in INPUT_ORDER}
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def test_ood_flag_spares_the_newest_year_and_catches_rows_built_out_of_range(verified: VerifiedModel) -> None:
    validator = InstanceValidator(verified.manifest)
    frame = load(data_dir()).frame
    newest = frame[frame["model_year"] == 2022].reset_index(drop=True)
    rows = _request_rows(newest)
    flagged = [validator.one(row).out_of_distribution for row in rows]
    assert sum(flagged) / len(flagged) <= 0.10
    # two model years past the newest training year are normal use, not flagged by the year alone
    plain = rows[flagged.index(False)]
    assert not validator.one({**plain, "model_year": 2024}).out_of_distribution
    assert validator.one({**plain, "model_year": 2025}).out_of_distribution
    built = (
        [{**row, "engine_size_l": 9.0} for row in rows[:100]]
        + [{**row, "cylinders": 16} for row in rows[100:200]]
        + [{**row, "fuel_type": "H"} for row in rows[200:300]]
        + [{**row, "vehicle_class": "Hovercraft"} for row in rows[300:400]]
    )
    assert sum(validator.one(row).out_of_distribution for row in built) / len(built) >= 0.95


def test_a_data_file_with_other_bytes_than_published_is_refused(tmp_path: Path) -> None:
    for name in DATA_FILES:
        (tmp_path / name).write_bytes((data_dir() / name).read_bytes())
    tampered = tmp_path / DATA_FILES[-1]
    tampered.write_bytes(tampered.read_bytes().replace(b",184,", b",185,", 1))
    with pytest.raises(ValueError, match="sha256"):
        load(tmp_path)
