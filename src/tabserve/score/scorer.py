"""Scoring one record batch through the service's own path: ``PredictionService.predict_instances``.

The batch's input columns become the values a request would carry (``score.convert``) and go, as columns, through
the same validate -> encode -> run -> confidence path as ``POST /predict`` with ``{"instances": [...]}``, so every
answer is the service's. A batch with invalid rows is checked row by row with the validator's single-instance
path to find every invalid row and all of its problems; those rows go to the rejects with their reasons, and the
rest of the batch is scored. No row is dropped or repaired silently: ``scored + rejected`` is always the batch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tabserve.confidence import BatchAnswers
from tabserve.errors import FieldError, RequestValidationError
from tabserve.features.batch import ColumnRows, listed
from tabserve.features.fields import NumberField
from tabserve.registry import ModelRegistry, ServingModel
from tabserve.score.answers import answer_columns, answer_schema
from tabserve.score.columns import ColumnPlan, plan
from tabserve.score.convert import coded, numbers, unit_values, values
from tabserve.service import PredictionService

REJECT_FIELDS = [
    pa.field("row", pa.int64()),
    pa.field("reject_fields", pa.string()),
    pa.field("reject_codes", pa.string()),
    pa.field("reject_reason", pa.string()),
]
REQUEST_ID = "tabserve-score"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model version to score with: a models root (``root/name/version``) or one shipped version folder."""

    name: str
    version: str | None
    root: Path

    @classmethod
    def from_folder(cls, folder: Path, name: str, version: str) -> ModelRef:
        """A version folder that is not under ``root/name/`` (as Spark ships it): seen through a private root."""
        root = Path(tempfile.mkdtemp(prefix="tabserve-score-"))
        (root / name).mkdir()
        (root / name / version).symlink_to(folder.resolve(), target_is_directory=True)
        return cls(name, version, root)


@dataclass(slots=True)
class Scored:
    """One batch's outcome: the scored rows (input columns + answers), the rejects, and counts."""

    output: pa.RecordBatch
    rejects: pa.RecordBatch
    warned: int
    out_of_distribution: int
    patterns: list[str]
    """The conformal pattern each scored row was answered with (``BatchAnswers.patterns``), in output order."""


class BatchScorer:
    """A loaded model version (sha256 verified) and the service path, for record batches of one schema."""

    def __init__(self, ref: ModelRef, level: float | None, schema: pa.Schema, max_batch: int = 1 << 22) -> None:
        registry = ModelRegistry(ref.root, {ref.name: ref.version}, {}, warmup=False)
        registry.load_all()
        failure = registry.failures().get(ref.name)
        if failure:
            raise RequestValidationError([FieldError(("model",), failure, "model_unavailable")])
        self.model: ServingModel = registry.get(ref.name, ref.version)
        self.service = PredictionService(registry, max_batch=max_batch)
        self.level = self.model.confidence.resolve_level(level)
        self.plan: ColumnPlan = plan(self.model.manifest, schema.names)
        self.schema = schema
        self.answers_schema = pa.schema(answer_schema(self.model.manifest))
        self.output_schema = pa.schema([*schema, *self.answers_schema])
        self.rejects_schema = pa.schema([*REJECT_FIELDS, *schema])
        self._checkers = {f.name: f for f in self.model.validator.fields}

    def _columns(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """The request columns of a batch, keyed by model input: a list of request values; a numeric column
        without nulls as its float64 array, a text column as distinct values and codes (the validator and the
        encoder take both as they are)."""
        out: dict[str, Any] = {}
        for name in self.plan.direct:
            numeric = isinstance(self._checkers[name], NumberField)
            column = numbers(batch.column(name)) if numeric else coded(batch.column(name))
            out[name] = column if column is not None else values(batch.column(name), numeric)
        for unit in self.plan.units:
            checker = self._checkers[unit.input]
            if isinstance(checker, NumberField):
                out[unit.input] = unit_values(batch.column(unit.column), unit, checker)
        return out

    def _answer(self, columns: dict[str, Any], rows: int, level: float) -> BatchAnswers:
        result = self.service.predict_instances(
            self.model.name,
            ColumnRows(columns, rows),
            request_id=REQUEST_ID,
            level=level,
            version=self.model.version,
        )
        return result.answers

    def score(self, batch: pa.RecordBatch, first_row: int, level: float | None = None) -> Scored:
        """Score a batch whose first row is the file's data row ``first_row`` (0-based; rejects say 1-based), at
        the scorer's level or at ``level`` (one of the manifest's)."""
        rows = batch.num_rows
        if rows == 0:
            return Scored(_empty(self.output_schema), _empty(self.rejects_schema), 0, 0, [])
        chosen = self.level if level is None else level
        columns = self._columns(batch)
        kept = batch
        try:
            answers = self._answer(columns, rows, chosen)
            rejects = _empty(self.rejects_schema)
        except RequestValidationError:
            columns = {name: listed(col) for name, col in columns.items()}  # row by row: request values
            problems = self._problems(columns, rows)
            good = [i for i in range(rows) if i not in problems]
            rejects = self._rejects(batch, problems, first_row)
            if not good:
                return Scored(_empty(self.output_schema), rejects, 0, 0, [])
            kept = batch.take(pa.array(good, pa.int64()))
            answers = self._answer({name: [col[i] for i in good] for name, col in columns.items()}, len(good), chosen)
        output = pa.RecordBatch.from_arrays(
            [*kept.columns, *answer_columns(self.model, answers)], schema=self.output_schema
        )
        warned = len({i for run_rows, _ in answers.runs for i in run_rows})
        ood = int(np.count_nonzero(answers.out_of_distribution))
        return Scored(output, rejects, warned, ood, answers.patterns or [""] * answers.rows)

    def _problems(self, columns: dict[str, list[Any]], rows: int) -> dict[int, list[FieldError]]:
        """Every invalid row's problems, from the single-instance checks (the same checks, row by row)."""
        validator = self.model.validator
        problems: dict[int, list[FieldError]] = {}
        for i, obj in enumerate(ColumnRows(columns, rows)):
            errors: list[FieldError] = []
            if validator.check(obj, (), errors) is None:
                problems[i] = errors
        return problems

    def _rejects(self, batch: pa.RecordBatch, problems: dict[int, list[FieldError]], first_row: int) -> pa.RecordBatch:
        bad = sorted(problems)
        taken = batch.take(pa.array(bad, type=pa.int64()))
        fields = [",".join(dict.fromkeys(str(e.loc[0]) for e in problems[i])) for i in bad]
        codes = [",".join(e.code for e in problems[i]) for i in bad]
        reasons = ["; ".join(e.message for e in problems[i]) for i in bad]
        head = [
            pa.array([first_row + i + 1 for i in bad], pa.int64()),
            pa.array(fields, pa.string()),
            pa.array(codes, pa.string()),
            pa.array(reasons, pa.string()),
        ]
        return pa.RecordBatch.from_arrays([*head, *taken.columns], schema=self.rejects_schema)


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)
