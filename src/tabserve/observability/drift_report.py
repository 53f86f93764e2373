"""Drift report files: ``drift.json`` and a self-contained ``drift.html`` (one PNG per feature, base64).

Used by ``tabserve drift``; imports matplotlib (a train-extra library) lazily, so it must never be
imported by the serving process. Input is the dict of ``drift.DriftMonitor.report`` /
``drift.drift_from_inputs`` with ``detail=True``.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MAX_CATEGORIES_PLOTTED = 15
_STATUS_COLOUR = {"ok": "#2e7d32", "watch": "#f9a825", "drift": "#c62828"}


def _bin_labels(edges: Sequence[float]) -> list[str]:
    labels = []
    for lo, hi in itertools.pairwise(edges):
        left = "−∞" if lo <= -1e300 else f"{lo:.3g}"
        right = "+∞" if hi >= 1e300 else f"{hi:.3g}"
        labels.append(f"[{left}, {right})")
    return labels


def _series(entry: Mapping[str, Any]) -> tuple[list[str], list[float], list[float]]:
    reference = entry.get("reference", {})
    current = entry.get("current", {})
    if entry["kind"] == "numeric":
        return _bin_labels(reference["edges"]), list(reference["shares"]), list(current["shares"])
    ref_shares: Mapping[str, float] = reference["shares"]
    cur_shares: Mapping[str, float] = current["shares"]
    keys = sorted(set(ref_shares) | set(cur_shares), key=lambda k: -max(ref_shares.get(k, 0.0), cur_shares.get(k, 0.0)))
    keys = keys[:MAX_CATEGORIES_PLOTTED]
    return keys, [ref_shares.get(k, 0.0) for k in keys], [cur_shares.get(k, 0.0) for k in keys]


def _plot_png(name: str, entry: Mapping[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, reference, current = _series(entry)
    positions = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=90)
    try:
        width = 0.4
        ax.bar([p - width / 2 for p in positions], reference, width, label="reference (training)", color="#90a4ae")
        ax.bar([p + width / 2 for p in positions], current, width, label="current", color="#1565c0")
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share")
        psi = entry.get("psi")
        ax.set_title(f"{name}: PSI {psi:.3f}" if psi is not None else f"{name}: no data", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _feature_html(name: str, entry: Mapping[str, Any]) -> str:
    status = str(entry.get("status", ""))
    colour = _STATUS_COLOUR.get(status, "#616161")
    psi = entry.get("psi")
    lines = [
        f'<section><h2>{html.escape(name)} <span style="color:{colour}">{html.escape(status)}</span></h2>',
        f"<p>PSI {'—' if psi is None else f'{psi:.4f}'} over {int(entry.get('n', 0))} values",
    ]
    if entry["kind"] == "numeric":
        lines.append(f"; missing share {float(entry.get('missing_share', 0.0)):.3f}</p>")
    else:
        lines.append(f"; new-category share {float(entry.get('new_share', 0.0)):.3f}</p>")
        new = entry.get("new_categories") or {}
        if new:
            items = "".join(f"<li>{html.escape(str(k))}: {float(v):.3f}</li>" for k, v in new.items())
            lines.append(f"<p>Categories training never saw:</p><ul>{items}</ul>")
    if "reference" in entry and "current" in entry:
        lines.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{_plot_png(name, entry)}">')
    lines.append("</section>")
    return "".join(lines)


def coverage_html(coverage: Any) -> str:
    """The coverage section (``observability.coverage`` report): one table row per version, level and pattern."""
    if not isinstance(coverage, Mapping):
        return ""
    if "error" in coverage:
        return f"<section><h2>Coverage</h2><p>not available: {html.escape(str(coverage['error']))}</p></section>"
    window = coverage.get("window", {})
    rows = []
    for cell in coverage.get("cells", []):
        colour = {"ok": "#2e7d32", "under": "#c62828", "over": "#f9a825"}.get(str(cell["status"]), "#616161")
        shown = "—" if cell["coverage"] is None else f"{cell['coverage']:.3f}"
        rows.append(
            f"<tr><td>{html.escape(str(cell['version']))}</td><td>{cell['level']:g}</td>"
            f"<td>{html.escape(str(cell['pattern']))} {html.escape(str(cell.get('pattern_name', '')))}</td>"
            f"<td>{cell['samples']}</td><td>{cell['covered']}</td><td>{shown}</td>"
            f"<td>{cell['wilson'][0]:.3f}–{cell['wilson'][1]:.3f}</td><td>{cell['band'][0]:g}–{cell['band'][1]:g}</td>"
            f'<td style="color:{colour}">{html.escape(str(cell["status"]))}</td>'
            f"<td>{cell['effective_level']:g}</td></tr>"
        )
    head = (
        "<tr><th>version</th><th>level</th><th>pattern</th><th>samples</th><th>covered</th><th>coverage</th>"
        "<th>Wilson</th><th>band</th><th>status</th><th>effective level</th></tr>"
    )
    return (
        f"<section><h2>Coverage</h2><p>Served intervals / prediction sets against feedback: newest "
        f"{window.get('rows_per_cell')} answers with feedback per cell, feedback of the last "
        f"{window.get('max_age_s')} s.</p><table>{head}{''.join(rows)}</table></section>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML page with embedded images."""
    title = f"Drift report: {report.get('model', '')} {report.get('model_version', '')}".strip()
    head = (
        f"<p>Status <b>{html.escape(str(report.get('status')))}</b>; {report.get('n')} instances in the window "
        f"(size {report.get('window_size')}, seen {report.get('n_seen')}); thresholds watch ≥ "
        f"{report['thresholds']['watch']}, drift ≥ {report['thresholds']['drift']}.</p>"
    )
    sections = "".join(_feature_html(name, entry) for name, entry in report["features"].items())
    sections += coverage_html(report.get("coverage"))
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}section{border-top:1px solid #ccc}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{head}{sections}</body></html>\n"
    )


def write_drift_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``drift.json`` and ``drift.html`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "drift.json"
    html_path = out_dir / "drift.html"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
