"""Validating whole instances against a model's manifest: every field checked, every error collected.

``InstanceValidator.one`` handles a single JSON object (the latency path: plain Python, no numpy);
``InstanceValidator.many`` handles a batch column by column (``features/batch.py``) and returns columns ready for
``ColumnEncoder.encode_columns``. Both return the same normalised values, warnings and input patterns (a test
keeps them equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tabserve.errors import FieldError, RequestValidationError
from tabserve.features import batch as columnar
from tabserve.features.batch import Accumulator, Batch
from tabserve.features.fields import MISSING, CategoryField, Field, InputWarning, NumberField, compile_field
from tabserve.manifest import Manifest

Loc = tuple[str | int, ...]
__all__ = ["Batch", "Instance", "InstanceValidator"]


@dataclass(slots=True)
class Instance:
    """One validated instance: normalised values (None = absent), warnings, OOD flag, conformal pattern."""

    values: dict[str, Any]
    warnings: list[InputWarning] = field(default_factory=list)
    out_of_distribution: bool = False
    pattern: str = ""


class InstanceValidator:
    """Built once per model version from its manifest."""

    def __init__(self, manifest: Manifest, *, strict_fields: bool = True) -> None:
        self.fields: tuple[Field, ...] = tuple(compile_field(spec) for spec in manifest.inputs)
        self.names = frozenset(f.name for f in self.fields)
        self.required = tuple(f.name for f in self.fields if f.required)
        self.pattern_inputs = tuple(manifest.conformal.pattern_inputs)
        self.strict_fields = strict_fields

    def _unknown_fields(self, obj: dict[str, Any], loc: Loc) -> tuple[list[FieldError], list[InputWarning]]:
        unknown = sorted(k for k in obj if k not in self.names)
        if not unknown:
            return [], []
        allowed = ", ".join(sorted(self.names))
        if self.strict_fields:
            return [
                FieldError((*loc, k), f"unknown field {k!r}; allowed fields: {allowed}", "unknown_field")
                for k in unknown
            ], []
        return [], [InputWarning(k, "unknown_field", f"unknown field {k!r} was ignored") for k in unknown]

    def _not_object(self, obj: Any, loc: Loc) -> FieldError:
        got = "array" if isinstance(obj, list) else type(obj).__name__
        return FieldError(loc, f"an instance must be a JSON object with the model's inputs; got {got}", "wrong_type")

    def check(self, obj: Any, loc: Loc, errors: list[FieldError]) -> Instance | None:
        """Validate one object; append its errors to ``errors``; return None if it had any."""
        if type(obj) is not dict:
            errors.append(self._not_object(obj, loc))
            return None
        start = len(errors)
        values: dict[str, Any] = {}
        warnings: list[InputWarning] = []
        ood = False
        if not obj.keys() <= self.names:
            field_errors, field_warnings = self._unknown_fields(obj, loc)
            errors.extend(field_errors)
            warnings.extend(field_warnings)
        get = obj.get
        for checker in self.fields:
            name = checker.name
            value, error, warning = checker.check(get(name, MISSING), loc)
            if error is not None:
                errors.append(error)
                continue
            values[name] = value
            if warning is not None:
                warnings.append(warning)
                ood = True
        if len(errors) > start:
            return None
        if warnings:
            unknown = {w.field for w in warnings if w.code == "unknown_category"}
            pattern = "".join(["0" if values[n] is None or n in unknown else "1" for n in self.pattern_inputs])
        else:
            pattern = "".join(["0" if values[n] is None else "1" for n in self.pattern_inputs])
        return Instance(values, warnings, ood, pattern)

    def one(self, obj: Any, loc: Loc = ("body",)) -> Instance:
        errors: list[FieldError] = []
        instance = self.check(obj, loc, errors)
        if instance is None:
            raise RequestValidationError(errors)
        return instance

    def many(self, objs: Sequence[Any], loc: Loc = ("body", "instances")) -> Batch:
        """Validate a batch column by column; clean columns take a C-level fast path."""
        acc = Accumulator(len(objs))
        names = [f.name for f in self.fields]
        transposed: dict[str, columnar.Column] | None = columnar.uniform_columns(objs, names)
        received = None if transposed is None else columnar.received_columns(objs, transposed)
        if transposed is None:  # rows of different shapes: check each row's type and fields first
            unknown_rows: list[int] = []
            unknown_warnings: list[InputWarning] = []
            for i, obj in enumerate(objs):
                if type(obj) is not dict:
                    acc.fail(self._not_object(obj, (*loc, i)))
                    acc.skip.add(i)
                elif not obj.keys() <= self.names:
                    field_errors, field_warnings = self._unknown_fields(obj, (*loc, i))
                    for error in field_errors:
                        acc.fail(error)
                    unknown_rows.extend([i] * len(field_warnings))
                    unknown_warnings.extend(field_warnings)
            if unknown_rows:  # served, not out of distribution: the run goes first, without OOD flags
                acc.runs.append((unknown_rows, unknown_warnings))
            transposed = columnar.columns(objs, names)
        columns: dict[str, columnar.Column] = {}
        arrays: dict[str, columnar.FloatArray] = {}
        complete: list[str] = []  # columns with no absent value (every fast-path column)
        for checker in self.fields:
            name = checker.name
            given = transposed[name]
            column: columnar.Column | None = None
            if acc.skip:
                pass  # rows that are not objects: every column value by value
            elif isinstance(checker, NumberField):
                numbers = columnar.fast_numbers(checker, given, acc)  # a float64 array is checked as it is
                if numbers is not None:
                    column, arrays[name] = numbers
            elif isinstance(checker, CategoryField):
                column = columnar.fast_categories(checker, given, acc)
            elif isinstance(given, columnar.CodedColumn):
                column = given if checker.fast_column(given.values) is not None else None  # each distinct value
            else:
                column = checker.fast_column(columnar.listed(given))
            if column is None:
                column = acc.check_column(checker, columnar.listed(given), loc)
            else:
                complete.append(name)
            columns[name] = column
        if acc.errors:
            acc.raise_errors()
        patterns = columnar.patterns(self.pattern_inputs, columns, acc)
        return Batch(acc.rows, columns, acc.runs, acc.ood.tolist(), patterns, arrays, frozenset(complete), received)
