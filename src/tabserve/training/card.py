"""MODEL_CARD.md writing and the card's PNG plots, generic over models.

A trainer fills a ``ModelCard`` (plain strings and tables it computed) and calls ``write_card``; the
plot helpers draw with matplotlib's Agg canvas (no pyplot global state, no display) and write one PNG
each beside the card. Nothing here knows about a particular model: the text comes from the trainer.
Write the card and the PNGs before ``artifacts.write_manifest`` so that their hashes are sealed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CARD_FILE = "MODEL_CARD.md"
_DPI = 110
_PNG_METADATA: dict[str, str | None] = {"Software": None}


def format_cell(value: object, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits, NaN/None as an em dash, pipes escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    """A GitHub-flavoured markdown table; every row must have as many cells as ``headers``."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row {list(row)!r} has {len(row)} cells, expected {len(headers)}")
    lines = [
        "| " + " | ".join(format_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(format_cell(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


@dataclass(frozen=True, slots=True)
class Plot:
    """A PNG beside the card (file name only) and its caption."""

    file: str
    caption: str


@dataclass(frozen=True, slots=True)
class ModelCard:
    """The card's content. Each section is markdown (paragraphs, ``bullets`` or ``markdown_table``)."""

    title: str
    summary: str
    intended_use: str
    out_of_scope: str
    data: str
    licence: str
    cleaning: str
    metrics: str
    coverage: str
    limitations: str
    plots: Sequence[Plot] = ()
    extra: Mapping[str, str] = field(default_factory=dict)
    """Further sections (title -> markdown), placed before the plots."""


def render_card(card: ModelCard) -> str:
    sections: list[tuple[str, str]] = [
        ("Intended use", card.intended_use),
        ("Out of scope", card.out_of_scope),
        ("Training data", card.data),
        ("Licence and attribution", card.licence),
        ("Cleaning", card.cleaning),
        ("Metrics", card.metrics),
        ("Coverage of the confidence output", card.coverage),
        ("Limitations", card.limitations),
        *card.extra.items(),
    ]
    parts = [f"# {card.title}", card.summary.strip()]
    parts += [f"## {title}\n\n{body.strip()}" for title, body in sections if body.strip()]
    if card.plots:
        figures = [f"### {p.caption}\n\n![{p.caption}]({p.file})" for p in card.plots]
        parts.append("## Plots\n\n" + "\n\n".join(figures))
    return "\n\n".join(parts) + "\n"


def write_card(model_dir: Path, card: ModelCard) -> Path:
    """Write ``MODEL_CARD.md``; every plot it names must already exist in ``model_dir``."""
    for plot in card.plots:
        if not (model_dir / plot.file).is_file():
            raise FileNotFoundError(f"{model_dir / plot.file}: the card links a plot that was not written")
    path = model_dir / CARD_FILE
    path.write_text(render_card(card), encoding="utf-8")
    return path


# --- plots -----------------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata=_PNG_METADATA)
    return path


def _floats(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def plot_residuals(path: Path, predicted: npt.ArrayLike, actual: npt.ArrayLike, unit: str = "") -> Path:
    """Residual (actual − predicted) against predicted, with the zero line."""
    pred, act = _floats(predicted), _floats(actual)
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(pred, act - pred, s=6, alpha=0.4)
    ax.axhline(0.0, color="black", linewidth=1)
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel(f"predicted{suffix}")
    ax.set_ylabel(f"actual − predicted{suffix}")
    ax.set_title("Residuals vs predicted")
    return _save(fig, path)


def plot_predicted_vs_actual(path: Path, predicted: npt.ArrayLike, actual: npt.ArrayLike, unit: str = "") -> Path:
    """Predicted against actual with the identity line."""
    pred, act = _floats(predicted), _floats(actual)
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(act, pred, s=6, alpha=0.4)
    both = np.concatenate([pred, act])
    low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    ax.plot([low, high], [low, high], color="black", linewidth=1)
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel(f"actual{suffix}")
    ax.set_ylabel(f"predicted{suffix}")
    ax.set_title("Predicted vs actual")
    return _save(fig, path)


def plot_coverage_by_level(
    path: Path, coverage: Mapping[str, Mapping[float, float]], title: str = "Empirical vs nominal coverage"
) -> Path:
    """One line per input pattern (label -> {nominal level: empirical coverage}) against the diagonal."""
    fig = _figure()
    ax = fig.add_subplot()
    levels = sorted({level for table in coverage.values() for level in table})
    if levels:
        ax.plot([levels[0], levels[-1]], [levels[0], levels[-1]], color="black", linewidth=1, label="nominal")
    for label, table in coverage.items():
        xs = sorted(table)
        ax.plot(xs, [table[x] for x in xs], marker="o", label=label)
    ax.set_xlabel("nominal level")
    ax.set_ylabel("empirical coverage (test split)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def reliability_bins(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 15
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Top-label reliability: per equal-width confidence bin, mean confidence, accuracy and count.

    Empty bins hold NaN for confidence and accuracy and 0 for the count.
    """
    proba = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels, dtype=np.int64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == truth).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return mean_conf, accuracy, counts.astype(np.int64)


def expected_calibration_error(probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 15) -> float:
    """Top-label ECE over equal-width bins: Σ (n_b / n) · |accuracy_b − confidence_b|."""
    mean_conf, accuracy, counts = reliability_bins(probabilities, labels, bins)
    total = int(counts.sum())
    if total == 0:
        return math.nan
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(accuracy[used] - mean_conf[used])) / total)


def plot_reliability(path: Path, probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 15) -> Path:
    """Reliability curve of a classifier's top-label confidence, with bin counts as a bar chart below."""
    mean_conf, accuracy, counts = reliability_bins(probabilities, labels, bins)
    used = counts > 0
    fig = _figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="black", linewidth=1, label="perfectly calibrated")
    top.plot(mean_conf[used], accuracy[used], marker="o", label="model")
    top.set_ylabel("accuracy")
    ece = expected_calibration_error(probabilities, labels, bins)
    top.set_title(f"Reliability ({bins} equal-width bins, ECE {ece:.3f})")
    top.legend(fontsize="small")
    edges = np.linspace(0.0, 1.0, bins + 1)
    bottom.bar(edges[:-1], counts, width=1.0 / bins, align="edge", edgecolor="black")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("rows")
    return _save(fig, path)


def plot_confusion_matrix(path: Path, matrix: npt.ArrayLike, classes: Sequence[str]) -> Path:
    """Counts of actual (rows) against predicted (columns)."""
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {len(classes)} classes")
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    ticks = list(range(len(classes)))
    ax.set_xticks(ticks, labels=list(classes))
    ax.set_yticks(ticks, labels=list(classes))
    threshold = counts.max() / 2 if counts.size else 0
    for i in ticks:
        for j in ticks:
            colour = "white" if counts[i, j] > threshold else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix (test split)")
    return _save(fig, path)
