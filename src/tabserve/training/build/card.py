"""The model card of a built version: what was built from what, its test metrics and coverage, and its plots.

Text comes from the build's own facts (schema, splits, metrics); plots use the generic helpers of
``training/card.py``. Written before the manifest, so the card and the PNGs are sealed with the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.manifest import level_key
from tabserve.training.build.infer import Schema
from tabserve.training.build.table import Rows, Splits
from tabserve.training.card import (
    ModelCard,
    Plot,
    bullets,
    markdown_table,
    plot_confusion_matrix,
    plot_coverage_by_level,
    plot_predicted_vs_actual,
    plot_reliability,
    plot_residuals,
    write_card,
)


def _metric_rows(schema: Schema, metrics: dict[str, Any]) -> str:
    if schema.task == "classification":
        headers = ["pattern", "rows", "accuracy", "log loss", "ECE"]
        rows = [[m["name"], m["rows"], m.get("accuracy"), m.get("log_loss"), m.get("ece")] for m in metrics.values()]
    else:
        headers = ["pattern", "rows", "MAE", "RMSE", "R²"]
        rows = [[m["name"], m["rows"], m.get("mae"), m.get("rmse"), m.get("r2")] for m in metrics.values()]
    return markdown_table(headers, rows)


def _coverage_rows(schema: Schema, metrics: dict[str, Any], levels: list[float]) -> str:
    cover_key, size_key = (
        ("set_coverage", "mean_set_size") if schema.task == "classification" else ("coverage", "mean_width")
    )
    size_name = "mean set size" if schema.task == "classification" else "mean width"
    headers = ["pattern", *[f"{lv:g}: coverage / {size_name}" for lv in levels]]
    rows = [
        [m["name"], *[f"{m[cover_key][level_key(lv)]:.3f} / {m[size_key][level_key(lv)]:.4g}" for lv in levels]]
        for m in metrics.values()
        if cover_key in m
    ]
    return markdown_table(headers, rows)


def write_build_card(
    out: Path,
    *,
    name: str,
    version: str,
    description: str,
    schema: Schema,
    splits: Splits,
    source: str,
    metrics: dict[str, Any],
    levels: list[float],
    test_output: npt.NDArray[np.float64],
    test: Rows,
    unit: str,
    notes: list[str],
) -> None:
    """Write the plots and MODEL_CARD.md into ``out``."""
    plots: list[Plot] = []
    tests = metrics["test"]
    cover_key = "set_coverage" if schema.task == "classification" else "coverage"
    curves = {m["name"]: {lv: m[cover_key][level_key(lv)] for lv in levels} for m in tests.values() if cover_key in m}
    plot_coverage_by_level(out / "coverage.png", curves)
    plots.append(Plot("coverage.png", "Empirical vs nominal coverage on the test split, per input pattern"))
    if schema.task == "classification":
        plot_reliability(out / "reliability.png", test_output, test.labels)
        plots.append(
            Plot("reliability.png", "Reliability of the top-class probability (test split, every input given)")
        )
        k = len(schema.classes)
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (test.labels, test_output.argmax(axis=1)), 1)
        plot_confusion_matrix(out / "confusion_matrix.png", matrix, schema.classes)
        plots.append(Plot("confusion_matrix.png", "Confusion matrix (test split, every input given)"))
    else:
        plot_predicted_vs_actual(out / "predicted_vs_actual.png", test_output, test.labels, unit)
        plot_residuals(out / "residuals.png", test_output, test.labels, unit)
        plots.append(Plot("predicted_vs_actual.png", "Predicted vs actual (test split, every input given)"))
        plots.append(Plot("residuals.png", "Residuals vs predicted (test split, every input given)"))
    inputs = [
        f"`{f.name}`: {f.kind}"
        + (f", {len(f.categories)} categories" if f.kind == "category" else "")
        + (f", missing in {f.missing} rows" if f.missing else "")
        for f in schema.features
    ]
    dropped = [f"`{column}`: {reason}" for column, reason in schema.dropped.items()] or ["none"]
    sizes = splits.sizes()
    split_text = (
        f"{'Temporal (by `' + str(schema.time_column) + '`)' if splits.temporal else 'Seeded random'} split: "
        + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + " rows."
    )
    card = ModelCard(
        title=f"{name} {version}",
        summary=description,
        intended_use=(
            f"Predicts `{schema.target}` ({schema.task}) from the inputs below, with split-conformal "
            + ("prediction sets" if schema.task == "classification" else "intervals")
            + " per pattern of optional inputs. Built by `tabserve build` from "
            + source
            + "."
        ),
        out_of_scope=(
            "Rows unlike the training data: an input outside its training range is served with an "
            "out_of_distribution warning, one outside its hard (plausible) range is refused."
        ),
        data=(
            f"{schema.rows} rows with a target value. {split_text}\n\nInputs:\n\n{bullets(inputs)}"
            f"\n\nDropped:\n\n{bullets(dropped)}"
        ),
        licence="As the data and model given to the build.",
        cleaning=bullets(schema.warnings or ["nothing was left out"]),
        metrics=_metric_rows(schema, tests),
        coverage=(
            "Split conformal on the calibration split, one table per pattern of "
            + (", ".join(f"`{n}`" for n in schema.pattern_inputs) or "(no optional inputs)")
            + "; coverage measured on the test split:\n\n"
            + _coverage_rows(schema, tests, levels)
        ),
        limitations=bullets(
            [
                "Coverage is marginal over rows like the calibration split (exchangeability), not per row.",
                "A level is published only when every pattern has enough calibration rows for a finite quantile.",
                *notes,
            ]
        ),
        plots=plots,
    )
    write_card(out, card)
