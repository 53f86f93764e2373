"""The co2 model (vehicle CO₂ g/km): ``train`` (fit, calibrate, evaluate, export, seal) and ``evaluate``.

Temporal design: train on model years 1995–2022; calibrate the conformal tables with the newest year (2022)
scored by a sibling fitted on ≤ 2021; the rule is judged by the rolling-origin backtest (``co2_backtest``).
The temporal metrics are the ≤ 2021 sibling's on 2022 (the shipped model has no later year). A sibling
fitted on a grouped split (no make+model on both sides) only contributes evaluation figures. Data: ``co2_data``;
encoding: ``co2_features``; estimator + ONNX: ``co2_model``; metrics/conformal: ``co2_eval``; card: ``co2_card``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from tabserve.artifacts import VerifiedModel, write_manifest
from tabserve.runtime import OnnxModel, session_options, text_tokens
from tabserve.training.co2_backtest import Backtest, calibration_scores, choose_scheme, scheme_quantiles
from tabserve.training.co2_backtest import run as run_backtest
from tabserve.training.co2_card import write_card_and_plots
from tabserve.training.co2_data import (
    CALIBRATION_TRAIN_LAST_YEAR,
    COMB,
    CONSUMPTION,
    TARGET,
    TEST_FIRST_YEAR,
    TRAIN_LAST_YEAR,
    LoadedData,
    TemporalSplit,
    load,
    temporal_split,
)
from tabserve.training.co2_eval import (
    Predictor,
    choose_levels,
    coverage_table,
    pattern_predictions,
    physics_baseline,
    regression_metrics,
)
from tabserve.training.co2_features import (
    ALL_PATTERNS,
    CATEGORY_INPUTS,
    INPUT_ORDER,
    NUMERIC_INPUTS,
    PATTERN_NAMES,
    build_inputs,
    encode,
    input_values,
    mask_pattern,
)
from tabserve.training.co2_model import FACTOR_REGIME_YEAR, ML_OPSET, OPSET, OUTPUT_NAME, to_onnx
from tabserve.training.co2_recipe import Recipe, fit_recipe
from tabserve.training.describe import category_shares, data_file_entry, library_versions, numeric_histogram
from tabserve.training.options import TrainOptions

NAME = "co2"
PARITY_TOLERANCE = 0.01
GROUP_TEST_SIZE = 0.2
MAE_WITH_FUEL_MAX = 1.5
MAE_SPECS_MAX = 14.0
COVERAGE_90 = (0.87, 0.93)
COVERAGE_90_MEAN = (0.89, 0.91)
WITH = "111"
SPECS = "000"


def _pattern_metrics(y: npt.NDArray[Any], by_pattern: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    return {p: regression_metrics(y, pred) for p, pred in by_pattern.items()}


def _physics_metrics(frame: pd.DataFrame, recipe: Recipe) -> dict[str, Any]:
    pred = physics_baseline(
        recipe.fuel_factors,
        recipe.old_fuel_factors,
        frame["fuel_type"].tolist(),
        frame["model_year"],
        frame[COMB],
        FACTOR_REGIME_YEAR,
    )
    return regression_metrics(frame[TARGET], pred)


def _naive_metrics(y: npt.NDArray[Any], mean: float) -> dict[str, Any]:
    return regression_metrics(y, np.full(y.size, mean))


def _grouped_split(data: LoadedData, seed: int) -> dict[str, Any]:
    frame = data.frame[data.frame["source"] == "nrcan"].reset_index(drop=True)
    splitter = GroupShuffleSplit(n_splits=1, test_size=GROUP_TEST_SIZE, random_state=seed)
    train_idx, test_idx = next(splitter.split(frame, groups=frame["group"]))
    train = frame.iloc[train_idx]
    train = train[~train["outlier"]].reset_index(drop=True)
    test = frame.iloc[test_idx].reset_index(drop=True)
    recipe = fit_recipe(train, seed)
    y = test[TARGET].to_numpy(dtype=np.float64)
    by_pattern = pattern_predictions(recipe.predict, recipe.encoder, input_values(test))
    shared = set(train["group"]) & set(test["group"])
    return {
        "description": f"GroupShuffleSplit on normalised make+model, {GROUP_TEST_SIZE:.0%} of groups held out, all "
        "years 1995–2022; a sibling model with the same recipe (not the shipped artifact).",
        "train_rows": len(train),
        "test_rows": len(test),
        "groups_in_both": len(shared),
        "model": _pattern_metrics(y, by_pattern),
        "physics": _physics_metrics(test, recipe),
        "naive": _naive_metrics(y, float(train[TARGET].mean())),
    }


def _latency(onnx_path: Path, x: npt.NDArray[np.float32], x_specs: npt.NDArray[np.float32]) -> dict[str, float]:
    session = ort.InferenceSession(str(onnx_path), sess_options=session_options(1), providers=["CPUExecutionProvider"])

    def timed(batch: npt.NDArray[np.float32], repeats: int) -> float:
        session.run([OUTPUT_NAME], {"X": batch})
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run([OUTPUT_NAME], {"X": batch})
            samples.append(time.perf_counter() - start)
        return float(np.median(samples)) * 1e6

    rows = np.ascontiguousarray(np.resize(x, (1000, x.shape[1])))
    specs = np.ascontiguousarray(np.resize(x_specs, (1000, x.shape[1])))
    return {
        "one_row_p50_us": round(timed(rows[:1], 2000), 1),
        "one_row_specs_only_p50_us": round(timed(specs[:1], 2000), 1),
        "rows_1000_p50_us": round(timed(rows, 200), 1),
        "rows_1000_specs_only_p50_us": round(timed(specs, 200), 1),
    }


def _onnx_predictor(onnx_path: Path) -> Predictor:
    session = ort.InferenceSession(str(onnx_path), sess_options=session_options(1), providers=["CPUExecutionProvider"])

    def predict(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(session.run([OUTPUT_NAME], {"X": x})[0], dtype=np.float32).reshape(-1)

    return predict


def _reference_histograms(train: pd.DataFrame) -> dict[str, Any]:
    histograms: dict[str, Any] = {}
    values = input_values(train)
    for name in INPUT_ORDER:
        if name in NUMERIC_INPUTS:
            histograms[name] = numeric_histogram(np.array([np.nan if v is None else v for v in values[name]]))
        elif name in CATEGORY_INPUTS:
            histograms[name] = category_shares(values[name])
        else:  # model (text): shares of its first word, the 50 most common, the rest as "(other)"
            first = [min(text_tokens(v) or {"(none)"}, key=lambda w, v=v: (v.upper().find(w), w)) for v in values[name]]
            common = set(pd.Series(first).value_counts().index[:50])
            histograms[name] = category_shares([w if w in common else "(other)" for w in first])
    return histograms


def _example_request(test: pd.DataFrame) -> dict[str, Any]:
    hit = test[(test["make"] == "TOYOTA") & (test["model_key"] == "RAV4 AWD") & (test["model_year"] == TRAIN_LAST_YEAR)]
    row = (hit if len(hit) else test).iloc[0]
    request: dict[str, Any] = {"make": "Toyota", "model": str(row["model"])}
    request.update(
        {
            "vehicle_class": "Sport utility vehicle: Small"
            if row["vehicle_class"] == "SPORT UTILITY VEHICLE SMALL"
            else str(row["vehicle_class"]),
            "engine_size_l": float(row["engine_size_l"]),
            "cylinders": int(row["cylinders"]),
            "transmission": str(row["transmission"]),
            "fuel_type": str(row["fuel_type"]),
            "model_year": int(row["model_year"]),
        }
    )
    for name in CONSUMPTION:
        request[name] = float(row[name])
    return request


@dataclass(frozen=True, slots=True)
class TrainResult:
    path: Path
    """The sealed version folder."""
    recipe: Recipe
    """The shipped estimator (tests compare the ONNX export against it)."""
    split: TemporalSplit


def train(options: TrainOptions) -> Path:
    return train_and_export(options).path


def train_and_export(options: TrainOptions) -> TrainResult:
    """Fit, calibrate, evaluate, export and seal ``<out>/co2/<version>/``."""
    started = time.perf_counter()
    if options.data_dir is None:
        raise ValueError("tabserve train co2 needs --data DIR (the NRCan CSV folder)")
    data = load(options.data_dir, options.extra)
    split = temporal_split(data.frame)
    recipe = fit_recipe(split.train, options.seed)
    # the rolling-origin backtest chooses the conformal scheme; its recipe fitted on ≤ 2021 is the sibling
    # whose horizon-1 scores on 2022 calibrate the shipped model (see co2_data.temporal_split)
    bt = Backtest(data.frame[data.frame["source"] == "nrcan"].reset_index(drop=True), options.seed)
    scheme, backtest = choose_scheme(bt)
    score = scheme.score
    sibling = bt.recipe(CALIBRATION_TRAIN_LAST_YEAR)
    cal_values = input_values(split.calibration)
    cal_y = split.calibration[TARGET].to_numpy(dtype=np.float64)
    cal_pred = pattern_predictions(sibling.predict, sibling.encoder, cal_values)
    levels = choose_levels(len(cal_y))
    quantiles = {p: _finite(scheme_quantiles(bt, TRAIN_LAST_YEAR, p, scheme, levels)) for p in ALL_PATTERNS}
    calibration_rows = {p: int(calibration_scores(bt, TRAIN_LAST_YEAR, p, scheme)[0].size) for p in ALL_PATTERNS}
    # the sibling's own test (2022, after its training), calibrated by the same rule one year earlier
    sibling_quantiles = {
        p: _finite(scheme_quantiles(bt, CALIBRATION_TRAIN_LAST_YEAR, p, scheme, levels)) for p in ALL_PATTERNS
    }
    sibling_coverage = coverage_table(cal_y, cal_pred, sibling_quantiles, score)

    out_dir = options.out_root / NAME / options.version
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.is_file():
            stale.unlink()
    width = recipe.encoder.width
    onnx_path = out_dir / "model.onnx"
    onnx.save(to_onnx(recipe.estimator, width), onnx_path)

    # everything below is measured on the exported graph (parity-checked against the estimator first)
    test_values = input_values(split.test)
    test_y = split.test[TARGET].to_numpy(dtype=np.float64)
    onnx_predict = _onnx_predictor(onnx_path)
    parity = 0.0
    for pattern in ALL_PATTERNS:
        x = encode(recipe.encoder, mask_pattern(test_values, pattern))
        parity = max(parity, float(np.max(np.abs(onnx_predict(x).astype(np.float64) - recipe.predict(x)))))
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from the estimator by {parity:.4g} g/km")
    shipped_pred = pattern_predictions(onnx_predict, recipe.encoder, test_values)
    shipped = {
        "description": f"the shipped ONNX graph on {TRAIN_LAST_YEAR}, a year it is fitted on (in-sample; what "
        "`tabserve evaluate co2` re-scores)",
        "model": _pattern_metrics(test_y, shipped_pred),
        "coverage": coverage_table(test_y, shipped_pred, quantiles, score),
    }
    test_pred = cal_pred
    coverage = sibling_coverage
    inlier = ~split.test["outlier"].to_numpy()
    train_mean = float(split.calibration_train[TARGET].mean())
    metrics: dict[str, Any] = {
        "temporal": {
            "description": f"the calibration sibling (same recipe, model years ≤ {CALIBRATION_TRAIN_LAST_YEAR}, "
            f"outliers dropped) tested on {TEST_FIRST_YEAR} (all rows, outliers kept), its intervals calibrated "
            "by the same rule one year earlier: the backtest origin "
            f"{TEST_FIRST_YEAR} for all 8 patterns. The shipped model is fitted on every year ≤ {TRAIN_LAST_YEAR} "
            "and has no later year to be tested on here",
            "shipped_train_rows": len(split.train),
            "train_rows": len(split.calibration_train),
            "calibration_rows": len(split.calibration),
            "test_rows": len(split.test),
            "test_outliers": int((~inlier).sum()),
            "model": _pattern_metrics(test_y, test_pred),
            "physics": _physics_metrics(split.test, sibling),
            "naive": _naive_metrics(test_y, train_mean),
            "model_with_fuel_consumption_without_outliers": regression_metrics(test_y[inlier], test_pred[WITH][inlier]),
        },
        "grouped": _grouped_split(data, options.seed),
        "coverage_temporal_test": coverage,
        "shipped_in_sample": shipped,
        "conformal_score_choice": backtest["candidates"],
        "backtest": backtest,
        "export_parity_max_abs_g_per_km": round(parity, 6),
        "fuel_factors_g_per_l_per_100km": {k: round(v, 4) for k, v in recipe.fuel_factors.items()},
        "fuel_factors_before_2016": {k: round(v, 4) for k, v in recipe.old_fuel_factors.items()},
        "physics_ratios": {
            "comb_per_city": recipe.estimator.physics.ratio_city,
            "comb_per_hwy": recipe.estimator.physics.ratio_hwy,
        },
        "cleaning": {
            "duplicates_dropped": data.duplicates_dropped,
            "unknown_class_rows": data.unknown_class_rows,
            "outliers_flagged": int(data.frame["outlier"].sum()),
        },
    }
    summary = backtest["summary"]
    low, high = COVERAGE_90
    mean_low, mean_high = COVERAGE_90_MEAN
    metrics["targets"] = {
        "judged_by": "rolling-origin backtest, origins 2018–2022 (metrics.backtest)",
        "with_fuel_consumption_mae_max_from_2020": summary["001"]["mae_max_from_2020"],
        "with_fuel_consumption_mae_ok": all(
            summary[p]["mae_max_from_2020"] <= MAE_WITH_FUEL_MAX for p in ("111", "001")
        ),
        "specs_only_mae_max_from_2020": summary[SPECS]["mae_max_from_2020"],
        "specs_only_mae_ok": summary[SPECS]["mae_max_from_2020"] <= MAE_SPECS_MAX,
        "coverage_90_min": min(s["coverage_90_min"] for s in summary.values()),
        "coverage_90_max": max(s["coverage_90_max"] for s in summary.values()),
        "coverage_90_ok": all(low <= s["coverage_90_min"] and s["coverage_90_max"] <= high for s in summary.values()),
        "coverage_90_mean_ok": all(mean_low <= s["coverage_90_mean"] <= mean_high for s in summary.values()),
    }
    metrics["timing"] = {
        **_latency(
            onnx_path,
            encode(recipe.encoder, test_values),
            encode(recipe.encoder, mask_pattern(test_values, SPECS)),
        ),
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    conformal = {
        "method": "split",
        "score": score,
        "levels": levels,
        "pattern_inputs": list(CONSUMPTION),
        "pattern_names": dict(PATTERN_NAMES),
        "quantiles": quantiles,
        "calibration_rows": calibration_rows,
    }
    write_card_and_plots(out_dir, metrics, conformal, test_y, test_pred, data, options.plots)
    manifest = {
        "name": NAME,
        "version": options.version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "description": "Tailpipe CO₂ (g/km, combined cycle) of a light-duty vehicle sold in Canada, from its specs "
        "and, when given, any of its 5-cycle city/highway/combined fuel consumption figures (NRCan ratings).",
        "training_data": [data_file_entry(path, rows) for path, rows in data.file_rows.items()],
        "seed": options.seed,
        "inputs": build_inputs(split.train, recipe.columns),
        "output": {
            "task": "regression",
            "name": "co2_emissions",
            "unit": "g/km",
            "description": "CO₂ emissions, combined cycle (55 % city / 45 % highway), g/km",
        },
        "columns": recipe.columns,
        "onnx": {"file": onnx_path.name, "input_name": "X", "output_name": OUTPUT_NAME, "opset": OPSET},
        "conformal": conformal,
        "example_request": _example_request(split.test),
        "metrics": metrics,
        "reference_histograms": _reference_histograms(split.train),
        "library_versions": library_versions(),
    }
    _check_finite(manifest)
    write_manifest(out_dir, manifest)
    print(f"co2: ONNX opset {OPSET} (ai.onnx.ml {ML_OPSET}), {width} columns, metrics {metrics['targets']}")
    return TrainResult(path=out_dir, recipe=recipe, split=split)


def _finite(table: dict[str, float]) -> dict[str, float]:
    for key, q in table.items():
        if not math.isfinite(q):
            raise ValueError(f"conformal quantile at level {key} is not finite")
    return {k: round(v, 6) for k, v in table.items()}


def _check_finite(value: Any, where: str = "manifest") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds a non-finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}[{i}]")


def evaluate(verified: VerifiedModel, data_dir: Path | None, backtest: bool = True) -> dict[str, Any]:
    """Re-score the committed artifact through OnnxModel on its newest year (all 8 patterns; in-sample for a
    version fitted on it), and replay the rolling-origin backtest (``co2_backtest``, ≈ 1 min) unless told not."""
    if data_dir is None:
        raise ValueError("tabserve evaluate co2 needs --data DIR (the NRCan CSV folder)")
    model = OnnxModel(verified)
    manifest = verified.manifest
    split = temporal_split(load(data_dir).frame)
    y = split.test[TARGET].to_numpy(dtype=np.float64)
    by_pattern = pattern_predictions(model.run, model.encoder, input_values(split.test))
    quantiles = manifest.conformal.quantiles
    return {
        "model": _pattern_metrics(y, by_pattern),
        "coverage": coverage_table(y, by_pattern, quantiles, manifest.conformal.score),
        "manifest_model": manifest.metrics["shipped_in_sample"]["model"],
        "manifest_coverage": manifest.metrics["shipped_in_sample"]["coverage"],
        **({"backtest": run_backtest(data_dir, manifest.seed)} if backtest else {}),
    }
