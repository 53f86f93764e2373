"""``tabserve train penguins`` / ``tabserve evaluate penguins``: the Palmer penguin species model.

Train: load and clean the package data (+ ``--extra``), split train/calibration/test (stratified,
seeded), fit on the training split, pick a temperature out-of-fold, export ONNX, then compute the
conformal tables and every test metric *through the exported graph and the serving encoder*, write the
card and plots, and seal the folder with the manifest. Evaluate: re-split with the manifest's seed and
re-compute the metrics from the committed artifact through ``OnnxModel``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tabserve.artifacts import VerifiedModel, sha256_file, write_manifest
from tabserve.runtime import OnnxModel, session_options
from tabserve.training.describe import category_shares, data_file_entry, library_versions, numeric_histogram
from tabserve.training.options import TrainOptions
from tabserve.training.penguins_card import write_card_and_plots
from tabserve.training.penguins_data import (
    CLASSES,
    MEASUREMENTS,
    OPTIONAL_INPUTS,
    PATTERN_NAMES,
    PenguinData,
    clean,
    column_specs,
    encoder,
    input_specs,
    package_csv,
    read_frame,
    split,
)
from tabserve.training.penguins_metrics import Predict, all_metrics, conformal_tables
from tabserve.training.penguins_model import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    choose_temperature,
    export_onnx,
    fit_pipeline,
)

NAME = "penguins"
ONNX_FILE = "model.onnx"
EXAMPLE_REQUEST: dict[str, Any] = {
    # a real Adelie from the data (Torgersen, 2007), as a client would send it
    "bill_length_mm": 39.1,
    "bill_depth_mm": 18.7,
    "flipper_length_mm": 181,
    "body_mass_g": 3750,
    "island": "Torgersen",
    "sex": "male",
}
DESCRIPTION = (
    "Species of a Palmer Archipelago penguin (Adelie, Chinstrap, Gentoo) from bill length, bill depth, flipper "
    "length and body mass, optionally island and sex; calibrated class probabilities and conformal prediction sets."
)


def _float64(proba: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(proba, dtype=np.float64)


def onnx_predictor(onnx_path: Path) -> Predict:
    """Probabilities of the exported graph on normalised rows, through the serving encoder."""
    session = ort.InferenceSession(str(onnx_path), sess_options=session_options(1), providers=["CPUExecutionProvider"])
    enc = encoder()

    def predict(data: PenguinData) -> npt.NDArray[np.float64]:
        matrix = enc.encode_columns(data.columns, data.rows)
        return _float64(session.run([OUTPUT_NAME], {INPUT_NAME: matrix})[0])

    return predict


def model_predictor(model: OnnxModel) -> Predict:
    def predict(data: PenguinData) -> npt.NDArray[np.float64]:
        return _float64(model.run(model.encoder.encode_columns(data.columns, data.rows)))

    return predict


def _histograms(train: PenguinData) -> dict[str, Any]:
    out: dict[str, Any] = {name: numeric_histogram(train.columns[name]) for name, *_ in MEASUREMENTS}
    for name in OPTIONAL_INPUTS:
        out[name] = category_shares(train.columns[name])
    return out


def _load(extra: Path | None, seed: int) -> tuple[PenguinData, tuple[PenguinData, PenguinData, PenguinData], int]:
    frame, package_rows = read_frame(extra)
    data = clean(frame)
    return data, split(data, seed), package_rows


def train(options: TrainOptions) -> Path:
    """Train, calibrate, export and document ``penguins/<version>``; returns the written folder."""
    started = time.perf_counter()
    data, (train_rows, calibration, test), package_rows = _load(options.extra, options.seed)
    out = options.out_root / NAME / options.version
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    pipeline = fit_pipeline(train_rows)
    choice = choose_temperature(train_rows, options.seed)
    export_onnx(pipeline, choice.temperature, out / ONNX_FILE)
    predict: Callable[[PenguinData], npt.NDArray[np.float64]] = onnx_predictor(out / ONNX_FILE)

    levels, tables = conformal_tables(predict, calibration)
    metrics = all_metrics(predict, train_rows, test, levels, tables["quantiles"])
    metrics["split"] = {
        "seed": options.seed,
        "stratified_by": "species",
        "fractions": {"train": 0.4, "calibration": 0.3, "test": 0.3},
        "rows": {"train": train_rows.rows, "calibration": calibration.rows, "test": test.rows},
        "raw_rows": data.raw_rows,
        "cleaned_rows": data.rows,
        "dropped_rows": data.dropped,
    }
    metrics["temperature"] = {
        "applied": choice.temperature,
        "fitted_out_of_fold": choice.fitted,
        "oof_ece_raw": choice.oof_ece_raw,
        "oof_ece_scaled": choice.oof_ece_scaled,
        "oof_log_loss_raw": choice.oof_log_loss_raw,
        "oof_log_loss_scaled": choice.oof_log_loss_scaled,
    }

    training_data = [data_file_entry(package_csv(), package_rows)]
    if options.extra is not None:
        training_data.append(data_file_entry(options.extra, data.raw_rows - package_rows))
    write_card_and_plots(
        out,
        options=options,
        metrics=metrics,
        levels=levels,
        training_data=training_data,
        predict=predict,
        test=test,
    )

    manifest: dict[str, object] = {
        "name": NAME,
        "version": options.version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "description": DESCRIPTION,
        "training_data": training_data,
        "seed": options.seed,
        "inputs": input_specs(train_rows),
        "output": {
            "task": "classification",
            "name": "species",
            "description": "Penguin species (genus Pygoscelis)",
            "classes": list(CLASSES),
        },
        "columns": column_specs(),
        "onnx": {"file": ONNX_FILE, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "opset": OPSET},
        "conformal": {
            "method": "split",
            "score": "lac",
            "levels": levels,
            "pattern_inputs": list(OPTIONAL_INPUTS),
            "pattern_names": PATTERN_NAMES,
            **tables,
        },
        "example_request": EXAMPLE_REQUEST,
        "metrics": metrics,
        "reference_histograms": _histograms(train_rows),
        "library_versions": library_versions(),
    }
    write_manifest(out, manifest)
    print(f"penguins: trained and sealed {out} in {time.perf_counter() - started:.1f} s")
    return out


def evaluate(verified: VerifiedModel, data_dir: Path | None) -> dict[str, Any]:
    """Re-compute the test metrics from the committed artifact (``OnnxModel``) on the manifest's split.

    ``data_dir`` is unused for penguins (the data is the package's); a version trained with ``--extra``
    cannot be re-split from here, which the report states.
    """
    manifest = verified.manifest
    _, (train_rows, _, test), _ = _load(None, manifest.seed)
    package_sha = sha256_file(package_csv())
    levels = list(manifest.conformal.levels)
    report = all_metrics(
        model_predictor(OnnxModel(verified)), train_rows, test, levels, dict(manifest.conformal.quantiles)
    )
    report["data"] = {
        "package_csv_sha256": package_sha,
        "matches_training_data": [f.sha256 for f in manifest.training_data] == [package_sha],
        "data_dir_used": False if data_dir is None else "ignored (penguins reads the palmerpenguins package)",
    }
    return report
