"""Judging a model version on a labelled file: its errors and its confidence's coverage, per missing-input pattern.

``tabserve evaluate NAME --data FILE`` streams the file (``score.reader``) through the scorer (``score.scorer``), so
every figure is of the answers the service gives for those rows: the same checks, unit columns, conformal tables
and rejects. Rows are grouped by the conformal pattern each was answered with (an unknown category counts as
absent, as it does when serving). ``every_pattern`` scores every row once per pattern with that pattern's absent
inputs blanked: how the version does for users who give fewer inputs. Sums are kept per group (never the rows),
so memory is bounded by the batch, not the file.

Regression: rows, MAE, RMSE, R², bias (mean prediction − truth), and per level the interval's coverage and mean
width. Classification: rows, accuracy, log loss, and per level the prediction set's coverage and mean size. The
key names are those of the build's ``metrics.test`` (manifest and card), so the two can be compared directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from tabserve.errors import ScoreInputError
from tabserve.manifest import ClassificationOutput, Manifest
from tabserve.score.columns import PROBABILITY_PREFIX, unit_slug
from tabserve.score.reader import BatchReader
from tabserve.score.scorer import BatchScorer, ModelRef, Scored

SHOWN_REJECTS = 10
"""How many rejected rows the report quotes (all are counted)."""
LOG_LOSS_FLOOR = 1e-15


@dataclass(slots=True)
class _Sums:
    """One pattern's running sums (regression or classification; per level for the confidence)."""

    rows: int = 0
    abs_error: float = 0.0
    sq_error: float = 0.0
    error: float = 0.0
    truth: float = 0.0
    sq_truth: float = 0.0
    correct: int = 0
    log_loss: float = 0.0
    inside: dict[float, int] = field(default_factory=dict)
    width: dict[float, float] = field(default_factory=dict)

    def add(self, other: _Sums) -> None:
        """Another pattern's sums into these (the overall line)."""
        self.rows += other.rows
        self.abs_error += other.abs_error
        self.sq_error += other.sq_error
        self.error += other.error
        self.truth += other.truth
        self.sq_truth += other.sq_truth
        self.correct += other.correct
        self.log_loss += other.log_loss
        for level, inside in other.inside.items():
            self.inside[level] = self.inside.get(level, 0) + inside
        for level, width in other.width.items():
            self.width[level] = self.width.get(level, 0.0) + width

    def regression(self, summary: dict[str, Any]) -> None:
        n = self.rows
        summary |= {"mae": self.abs_error / n, "rmse": math.sqrt(self.sq_error / n), "bias": self.error / n}
        spread = self.sq_truth - self.truth * self.truth / n
        summary["r2"] = 1.0 - self.sq_error / spread if n > 1 and spread > 0 else None
        summary["coverage"] = {f"{lv:g}": k / n for lv, k in self.inside.items()}
        summary["mean_width"] = {f"{lv:g}": w / n for lv, w in self.width.items()}

    def classification(self, summary: dict[str, Any]) -> None:
        n = self.rows
        summary |= {"accuracy": self.correct / n, "log_loss": self.log_loss / n}
        summary["set_coverage"] = {f"{lv:g}": k / n for lv, k in self.inside.items()}
        summary["mean_set_size"] = {f"{lv:g}": w / n for lv, w in self.width.items()}


class _Target:
    """The true values of a batch, read from the target column (the CSV reader gives text: parsed here)."""

    def __init__(self, manifest: Manifest, column: str) -> None:
        self.column = column
        self.classes: tuple[str, ...] | None = None
        if isinstance(manifest.output, ClassificationOutput):
            self.classes = tuple(manifest.output.classes)

    def check(self, batch: pa.RecordBatch, first_row: int) -> None:
        """A regression's true value must be a finite number or empty: else an error naming the first bad row."""
        if self.classes is not None:
            return
        try:
            numbers = self.values(batch).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            text = _text(batch.column(self.column)).to_pylist()
            bad = [i for i, value in enumerate(text) if value is not None and not _is_number(value)]
        else:
            bad = np.flatnonzero(np.isinf(numbers)).tolist()
        if bad:
            value = batch.column(self.column)[bad[0]].as_py()
            raise ScoreInputError(
                f"row {first_row + bad[0] + 1}: target column {self.column!r} holds {value!r}, not a finite number"
                + (f" ({len(bad)} such rows in this batch)" if len(bad) > 1 else "")
            )

    def values(self, batch: pa.RecordBatch) -> pa.Array:
        """The true values (class names, or float64 with an empty cell or NaN as null)."""
        raw = batch.column(self.column)
        if self.classes is not None:
            text = raw if pa.types.is_string(raw.type) else pc.cast(raw, pa.string())
            return pc.utf8_trim_whitespace(text)
        numbers = raw if pa.types.is_floating(raw.type) or pa.types.is_integer(raw.type) else _text(raw)
        floats = pc.cast(numbers, pa.float64())
        return pc.if_else(pc.is_nan(floats), pa.scalar(None, pa.float64()), floats)


def _text(raw: pa.Array) -> pa.Array:
    text = pc.utf8_trim_whitespace(pc.cast(raw, pa.string()))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _is_number(text: str) -> bool:
    """A number that is not infinite (NaN is read as no true value)."""
    try:
        return not math.isinf(float(text))
    except ValueError:
        return False


@dataclass(slots=True)
class _Run:
    """One evaluation pass over the file (rows as given, or one blanked pattern)."""

    sums: dict[str, _Sums] = field(default_factory=dict)
    read: int = 0
    scored: int = 0
    rejected: int = 0
    unlabelled: int = 0
    unknown_labels: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)


class Evaluation:
    """A verified model version, its scorer for one file's schema, and the levels to judge its confidence at."""

    def __init__(self, ref: ModelRef, data: Path, target: str | None, levels: Sequence[float] | None, rows: int):
        self.reader = BatchReader(data, rows)
        self.scorer = BatchScorer(ref, None, self.reader.schema)
        manifest = self.scorer.model.manifest
        self.manifest = manifest
        column = target or manifest.output.name
        if column not in self.reader.schema.names:
            raise ScoreInputError(
                f"{data}: no target column {column!r} (the true values; --target names another); "
                f"its columns: {', '.join(self.reader.schema.names)}"
            )
        if column in self.scorer.plan.input_columns:
            raise ScoreInputError(f"the target column {column!r} is an input of {manifest.name}; name another")
        self.target = _Target(manifest, column)
        confidence = self.scorer.model.confidence
        wanted = list(levels) if levels else list(manifest.conformal.levels)
        self.levels = list(dict.fromkeys(confidence.resolve_level(level) for level in wanted))
        self.patterns = list(manifest.conformal.quantiles)
        self.names = dict(manifest.conformal.pattern_names)
        self.sources = _pattern_sources(manifest, self.scorer)

    def run(self, blank: str | None = None) -> _Run:
        """One pass: rows as given, or with the inputs absent from pattern ``blank`` blanked (only rows that then
        have that pattern count)."""
        out = _Run()
        for first_row, read in self._batches():
            out.read += read.num_rows
            self.target.check(read, first_row)
            batch = read if blank is None else self._blanked(read, blank)
            for index, level in enumerate(self.levels):
                scored = self.scorer.score(batch, first_row, level)
                if index == 0:
                    out.rejected += scored.rejects.num_rows
                    out.rejects.extend(_quoted(scored.rejects, SHOWN_REJECTS - len(out.rejects)))
                self._add(out, scored, level, blank, first=index == 0)
        return out

    def _batches(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        first_row = 0
        for batch in self.reader.batches():
            yield first_row, batch
            first_row += batch.num_rows

    def _blanked(self, batch: pa.RecordBatch, pattern: str) -> pa.RecordBatch:
        arrays = list(batch.columns)
        names = batch.schema.names
        for given, columns in zip(pattern, self.sources, strict=True):
            if given == "0":
                for column in columns:
                    i = names.index(column)
                    arrays[i] = pa.nulls(batch.num_rows, arrays[i].type)
        return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)

    def _add(self, out: _Run, scored: Scored, level: float, blank: str | None, *, first: bool) -> None:
        rows = scored.output.num_rows
        if rows == 0:
            return
        truth = self.target.values(scored.output)
        labelled = pc.is_valid(truth).to_numpy(zero_copy_only=False)
        patterns = np.asarray(scored.patterns)
        keep = labelled if blank is None else labelled & (patterns == blank)
        if first:
            out.scored += rows
            out.unlabelled += int(rows - np.count_nonzero(labelled))
        for pattern in np.unique(patterns[keep]).tolist():
            mask = keep & (patterns == pattern)
            sums = out.sums.setdefault(pattern, _Sums())
            if self.target.classes is None:
                self._add_regression(sums, scored.output, truth, mask, level, first=first)
            else:
                out.unknown_labels += self._add_classification(sums, scored.output, truth, mask, level, first=first)

    @staticmethod
    def _add_regression(
        sums: _Sums, output: pa.RecordBatch, truth: pa.Array, mask: npt.NDArray[np.bool_], level: float, *, first: bool
    ) -> None:
        y = truth.to_numpy(zero_copy_only=False)[mask]
        lower = _floats(output, "interval_lower")[mask]
        upper = _floats(output, "interval_upper")[mask]
        if first:
            error = _floats(output, "prediction")[mask] - y
            sums.rows += int(mask.sum())
            sums.abs_error += float(np.abs(error).sum())
            sums.sq_error += float((error * error).sum())
            sums.error += float(error.sum())
            sums.truth += float(y.sum())
            sums.sq_truth += float((y * y).sum())
        sums.inside[level] = sums.inside.get(level, 0) + int(np.count_nonzero((lower <= y) & (y <= upper)))
        sums.width[level] = sums.width.get(level, 0.0) + float((upper - lower).sum())

    def _add_classification(
        self,
        sums: _Sums,
        output: pa.RecordBatch,
        truth: pa.Array,
        mask: npt.NDArray[np.bool_],
        level: float,
        *,
        first: bool,
    ) -> int:
        classes = self.target.classes or ()
        labels = [label for label, keep in zip(truth.to_pylist(), mask.tolist(), strict=True) if keep]
        sets = [
            json.loads(text)
            for text, keep in zip(output.column("prediction_set").to_pylist(), mask, strict=True)
            if keep
        ]
        inside = sum(label in chosen for label, chosen in zip(labels, sets, strict=True))
        sums.inside[level] = sums.inside.get(level, 0) + inside
        sums.width[level] = sums.width.get(level, 0.0) + float(sum(map(len, sets)))
        if not first:
            return 0
        predicted = [p for p, keep in zip(output.column("prediction").to_pylist(), mask, strict=True) if keep]
        probabilities = np.column_stack(
            [_floats(output, f"{PROBABILITY_PREFIX}{unit_slug(c) or c}")[mask] for c in classes]
        )
        index = {c: i for i, c in enumerate(classes)}
        known = np.array([label in index for label in labels], dtype=bool)
        chosen = np.array([index.get(label, 0) for label in labels], dtype=np.int64)
        p_true = np.where(known, probabilities[np.arange(len(labels)), chosen], 0.0)
        sums.rows += len(labels)
        sums.correct += sum(p == label for p, label in zip(predicted, labels, strict=True))
        sums.log_loss += float(-np.log(np.maximum(p_true, LOG_LOSS_FLOOR)).sum())
        return int(len(labels) - np.count_nonzero(known))

    def summary(self, run: _Run, patterns: Sequence[str]) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for pattern in patterns:
            sums = run.sums.get(pattern)
            if sums is None or sums.rows == 0:
                continue
            entry: dict[str, Any] = {"name": self.names.get(pattern, pattern), "rows": sums.rows}
            (sums.regression if self.target.classes is None else sums.classification)(entry)
            table[pattern or "all"] = entry  # the build's key for a model without missing-input patterns
        return table

    def overall(self, run: _Run) -> dict[str, Any]:
        total = _Sums()
        for sums in run.sums.values():
            total.add(sums)
        if total.rows == 0:
            return {"rows": 0}
        entry: dict[str, Any] = {"rows": total.rows}
        (total.regression if self.target.classes is None else total.classification)(entry)
        return entry


def _pattern_sources(manifest: Manifest, scorer: BatchScorer) -> list[list[str]]:
    """For each pattern input, the file columns that give it (its own name, or a unit column)."""
    out: list[list[str]] = []
    for name in manifest.conformal.pattern_inputs:
        columns = [name] if name in scorer.plan.direct else []
        columns += [unit.column for unit in scorer.plan.units if unit.input == name]
        out.append(columns)
    return out


def _floats(output: pa.RecordBatch, column: str) -> npt.NDArray[np.float64]:
    return np.asarray(output.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)


def _quoted(rejects: pa.RecordBatch, room: int) -> list[dict[str, Any]]:
    if room <= 0 or rejects.num_rows == 0:
        return []
    head = rejects.slice(0, room)
    rows = head.column("row").to_pylist()
    reasons = head.column("reject_reason").to_pylist()
    return [{"row": row, "reason": reason} for row, reason in zip(rows, reasons, strict=True)]


def evaluate_file(
    models: Path,
    name: str,
    version: str | None,
    data: Path,
    *,
    target: str | None = None,
    levels: Sequence[float] | None = None,
    every_pattern: bool = False,
    batch_rows: int = 65_536,
) -> dict[str, Any]:
    """The report ``tabserve evaluate`` prints (JSON-ready): counts, and metrics per pattern (and overall)."""
    if batch_rows < 1:
        raise ScoreInputError(f"--batch-rows must be at least 1, not {batch_rows}")
    evaluation = Evaluation(ModelRef(name, version, models), data, target, levels, batch_rows)
    manifest = evaluation.manifest
    report: dict[str, Any] = {
        "model": {"name": manifest.name, "version": manifest.version},
        "data": str(data),
        "target": evaluation.target.column,
        "task": "classification" if evaluation.target.classes is not None else "regression",
        "levels": evaluation.levels,
        "mode": "every_pattern" if every_pattern else "as_given",
    }
    if every_pattern:
        patterns: dict[str, Any] = {}
        first: _Run | None = None
        for pattern in evaluation.patterns:
            run = evaluation.run(blank=pattern)
            first = first or run
            patterns |= evaluation.summary(run, [pattern])
        if first is None:
            raise ScoreInputError(f"{manifest.name} {manifest.version} has no conformal pattern to evaluate")
        _check_judged(first, bool(patterns))
        report["rows"] = _counts(first)
        report["patterns"] = patterns
        report["rejects"] = first.rejects
        return report
    run = evaluation.run()
    _check_judged(run)
    report["rows"] = _counts(run)
    report["overall"] = evaluation.overall(run)
    report["patterns"] = evaluation.summary(run, evaluation.patterns)
    report["rejects"] = run.rejects
    return report


def _check_judged(run: _Run, judged: bool | None = None) -> None:
    """A clear error when no row could be judged (an empty file, every row rejected or without a true value)."""
    if judged if judged is not None else any(s.rows for s in run.sums.values()):
        return
    detail = f"{run.read} rows read, {run.rejected} rejected, {run.unlabelled} without a true value"
    if run.rejects:
        detail += f"; first reject: row {run.rejects[0]['row']}: {run.rejects[0]['reason']}"
    raise ScoreInputError(f"no row could be judged ({detail})")


def _counts(run: _Run) -> dict[str, int]:
    counts = {"read": run.read, "scored": run.scored, "rejected": run.rejected, "unlabelled": run.unlabelled}
    if run.unknown_labels:
        counts["unknown_labels"] = run.unknown_labels
    return counts
