"""The penguins model's MODEL_CARD.md text and plots (content only; layout lives in ``training/card.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tabserve.manifest import level_key
from tabserve.training.card import (
    ModelCard,
    Plot,
    bullets,
    markdown_table,
    plot_confusion_matrix,
    plot_coverage_by_level,
    plot_reliability,
    write_card,
)
from tabserve.training.options import TrainOptions
from tabserve.training.penguins_data import CLASSES, MEASUREMENTS, PATTERN_NAMES, PenguinData, masked, pattern_keys
from tabserve.training.penguins_metrics import Predict

CITATION = (
    "Gorman KB, Williams TD, Fraser WR (2014). Ecological sexual dimorphism and environmental variability within "
    "a community of Antarctic penguins (genus *Pygoscelis*). PLoS ONE 9(3): e90081. "
    "https://doi.org/10.1371/journal.pone.0090081"
)


def _plots(out: Path, metrics: dict[str, Any], levels: list[float], predict: Predict, test: PenguinData) -> list[Plot]:
    parts = [masked(test, key) for key in pattern_keys()]
    proba = np.vstack([predict(part) for part in parts])
    labels = np.concatenate([part.labels for part in parts])
    bins = int(metrics["ece_bins"])
    plot_reliability(out / "reliability.png", proba, labels, bins)
    by_pattern = {
        PATTERN_NAMES[key]: {level: float(table["lac_coverage"][level_key(level)]) for level in levels}
        for key, table in metrics["test"].items()
    }
    plot_coverage_by_level(out / "set_coverage.png", by_pattern, "Raw LAC set coverage (test split)")
    plot_confusion_matrix(out / "confusion_matrix.png", metrics["test"]["11"]["confusion_matrix"], CLASSES)
    return [
        Plot("reliability.png", "Reliability curve (test split, all four input patterns pooled)"),
        Plot(
            "set_coverage.png",
            "Raw LAC prediction-set coverage by level, one line per input pattern (served sets cover at least this)",
        ),
        Plot("confusion_matrix.png", "Confusion matrix (test split, island and sex given)"),
    ]


def _metrics_section(metrics: dict[str, Any]) -> str:
    rows = [
        [table["name"], table["rows"], table["accuracy"], table["log_loss"], table["ece"]]
        for table in metrics["test"].values()
    ]
    base = metrics["baseline_majority"]
    rows.append([f"baseline: always {base['class']}", metrics["split"]["rows"]["test"], base["accuracy"],
                 base["log_loss"], None])  # fmt: skip
    temp = metrics["temperature"]
    split = metrics["split"]
    return (
        f"Test split ({split['rows']['test']} birds; train {split['rows']['train']}, calibration "
        f"{split['rows']['calibration']}; stratified by species, seed {split['seed']}). ECE is the top-label "
        f"expected calibration error over {metrics['ece_bins']} equal-width confidence bins. Rows whose sex is "
        "missing in the data are left out of the patterns that give sex.\n\n"
        + markdown_table(["input pattern", "rows", "accuracy", "log loss", "ECE"], rows)
        + f"\n\nTemperature: fitted {temp['fitted_out_of_fold']:g} on 5-fold out-of-fold predictions of the "
        f"training split (ECE {temp['oof_ece_raw']:.4f} → {temp['oof_ece_scaled']:.4f}); applied: "
        f"{temp['applied']:g} (kept only when it lowers the out-of-fold ECE)."
    )


def _coverage_section(metrics: dict[str, Any], levels: list[float]) -> str:
    def table(fields: tuple[str, ...], fmt: str) -> str:
        headers = ["input pattern", *(f"{level:g}" for level in levels)]
        rows = [
            [entry["name"], *(" / ".join(fmt.format(entry[f][level_key(level)]) for f in fields) for level in levels)]
            for entry in metrics["test"].values()
        ]
        return markdown_table(headers, rows)

    return (
        "Split-conformal prediction sets with the LAC score (the set holds every class whose probability is at "
        "least 1 − q), one quantile table per pattern of the optional inputs, calibrated on the calibration "
        "split with those inputs removed.\n\nAs served (serving never returns an empty set: it falls back to "
        "the most probable class), test split, coverage / mean set size per level:\n\n"
        + table(("set_coverage", "mean_set_size"), "{:.3f}")
        + "\n\nRaw LAC sets (what the conformal guarantee is about), coverage / share of empty sets:\n\n"
        + table(("lac_coverage", "lac_empty_share"), "{:.3f}")
        + "\n\nThe classifier is so accurate that the low-level quantiles are tiny, so many raw LAC sets are "
        "empty; the fallback then makes the served coverage higher than nominal. Coverage is guaranteed on "
        "average over calibration draws, not for one split: with ~100 calibration and ~100 test rows a single "
        "split can miss the nominal level by several points (one test row = 1 point)."
    )


def write_card_and_plots(
    out: Path,
    *,
    options: TrainOptions,
    metrics: dict[str, Any],
    levels: list[float],
    training_data: list[dict[str, Any]],
    predict: Predict,
    test: PenguinData,
) -> Path:
    plots = _plots(out, metrics, levels, predict, test) if options.plots else []
    files = [f"`{entry['path']}` ({entry['rows']} rows, sha256 `{entry['sha256']}`)" for entry in training_data]
    split = metrics["split"]
    measurements = ", ".join(f"`{name}` ({unit})" for name, unit, *_ in MEASUREMENTS)
    card = ModelCard(
        title=f"penguins {options.version}: Palmer penguin species",
        summary=(
            f"Predicts the species ({', '.join(CLASSES)}) of an adult penguin from {measurements}, optionally "
            "`island` and `sex`. Returns calibrated class probabilities and a conformal prediction set per "
            "confidence level. Model: standardised multinomial logistic regression (scikit-learn), exported as "
            "one ONNX MatMul + Add + Softmax graph with the temperature folded in."
        ),
        intended_use=bullets(
            [
                "Teaching, demos and tests of the tabserve service: a small, well-understood classifier.",
                "Identifying the species of Adelie, Chinstrap or Gentoo penguins measured the way the Palmer "
                "Station LTER measured them (adults, calipers and scales, breeding season).",
            ]
        ),
        out_of_scope=bullets(
            [
                "Any other penguin species (e.g. emperor, king, macaroni): the model always answers one of three.",
                "Chicks and juveniles, or measurements taken another way.",
                "Decisions about real animals' welfare or management.",
            ]
        ),
        data=(
            bullets(files)
            + f"\n\nRead with `palmerpenguins.load_penguins()` (the CSV bundled in the package). {split['raw_rows']}"
            f" rows read, {split['dropped_rows']} dropped, {split['cleaned_rows']} used."
        ),
        licence=(
            "Data: CC0, per the Palmer Station LTER data policy (as stated by the `palmerpenguins` package). "
            "Package: MIT. Data collected by Dr. Kristen Gorman and the Palmer Station Long Term Ecological Research "
            f"(LTER) Program. Please cite: {CITATION}"
        ),
        cleaning=bullets(
            [
                f"Dropped {split['dropped_rows']} rows missing any of the four measurements (all four are "
                "required inputs).",
                "Island and sex normalised the way serving normalises requests (upper case, aliases such as "
                "`m`/`f`); missing sex (NA) kept as *absent*.",
                "Training rows are repeated once per island/sex pattern with those inputs removed, so an absent "
                "or unknown island/sex (all-zero one-hot) is a case the model was trained on.",
            ]
        ),
        metrics=_metrics_section(metrics),
        coverage=_coverage_section(metrics, levels),
        limitations=bullets(
            [
                "342 birds from three islands over 2007–2009: small; test metrics have wide uncertainty "
                "(one test row ≈ 1 percentage point).",
                "Out-of-distribution flags come from the training split's ranges; the plausible ranges reject "
                "impossible values only.",
                "An unknown island is encoded like an absent one; Chinstraps were only seen on Dream, so the island "
                "carries real signal and its absence lowers confidence for Adelie/Chinstrap look-alikes.",
                "Conformal coverage is marginal (on average over birds like the training data), not per species.",
            ]
        ),
        plots=plots,
    )
    return write_card(out, card)
