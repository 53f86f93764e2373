"""The generic model-card writer and its plot helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tabserve.training.card import (
    CARD_FILE,
    ModelCard,
    Plot,
    expected_calibration_error,
    markdown_table,
    plot_confusion_matrix,
    plot_coverage_by_level,
    plot_predicted_vs_actual,
    plot_reliability,
    plot_residuals,
    write_card,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _card(plots: tuple[Plot, ...] = ()) -> ModelCard:
    return ModelCard(
        title="demo 1.0.0",
        summary="A demo.",
        intended_use="Demos.",
        out_of_scope="Everything else.",
        data="Some rows.",
        licence="CC0.",
        cleaning="",
        metrics=markdown_table(["metric", "value"], [["accuracy", 0.98765], ["log loss", math.nan]]),
        coverage="n/a",
        limitations="Small.",
        plots=plots,
    )


def test_markdown_table_formats_floats_nan_and_pipes() -> None:
    table = markdown_table(["a", "b"], [[0.123456, "x|y"], [math.nan, None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 0.1235 | x\\|y |", "| — | — |"]


def test_markdown_table_rejects_ragged_row() -> None:
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a", "b"], [[1]])


def test_write_card_skips_empty_sections_and_links_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    actual = rng.normal(size=50)
    plot_residuals(tmp_path / "residuals.png", actual + rng.normal(scale=0.1, size=50), actual, unit="g/km")
    text_path = write_card(tmp_path, _card((Plot("residuals.png", "Residuals"),)))
    text = text_path.read_text(encoding="utf-8")
    assert text_path.name == CARD_FILE
    assert "## Cleaning" not in text
    assert "## Intended use\n\nDemos." in text
    assert "![Residuals](residuals.png)" in text
    assert "| accuracy | 0.9877 |" in text


def test_write_card_rejects_missing_plot(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        write_card(tmp_path, _card((Plot("nope.png", "Missing"),)))


def test_plot_helpers_write_png_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([1.0, 1.0, 1.0], size=80)
    labels = rng.integers(0, 3, size=80)
    paths = [
        plot_predicted_vs_actual(tmp_path / "pva.png", rng.normal(size=30), rng.normal(size=30)),
        plot_coverage_by_level(tmp_path / "cov.png", {"all": {0.5: 0.52, 0.9: 0.91}, "none": {0.5: 0.6, 0.9: 0.88}}),
        plot_reliability(tmp_path / "rel.png", proba, labels, bins=10),
        plot_confusion_matrix(tmp_path / "cm.png", [[5, 1, 0], [0, 4, 2], [1, 0, 7]], ["A", "B", "C"]),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_expected_calibration_error_zero_when_confidence_matches_accuracy() -> None:
    # confidence 0.75 everywhere, 3 of 4 rows correct -> perfectly calibrated
    proba = np.array([[0.75, 0.25]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(proba, labels, bins=10) == pytest.approx(0.0)


def test_expected_calibration_error_measures_overconfidence() -> None:
    proba = np.array([[0.9, 0.1]] * 2)
    labels = np.array([0, 1])  # accuracy 0.5 at confidence 0.9
    assert expected_calibration_error(proba, labels, bins=10) == pytest.approx(0.4)
