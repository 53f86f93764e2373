"""Validating whole instances against a model's manifest: every field checked, every error collected.

``InstanceValidator.one`` handles a single JSON object (the latency path: plain Python, no numpy);
``InstanceValidator.many`` handles a batch and returns columns ready for ``ColumnEncoder.encode_columns``.
Both return the same normalised values, warnings and input patterns (a test keeps them equal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from tabserve.errors import FieldError, RequestValidationError
from tabserve.features.fields import MISSING, CategoryField, Field, InputWarning, NumberField, compile_field
from tabserve.manifest import Manifest

Loc = tuple[str | int, ...]


@dataclass(slots=True)
class Instance:
    """One validated instance: normalised values (None = absent), warnings, OOD flag, conformal pattern."""

    values: dict[str, Any]
    warnings: list[InputWarning] = field(default_factory=list)
    out_of_distribution: bool = False
    pattern: str = ""


@dataclass(slots=True)
class Batch:
    """A validated batch: one list per input (None = absent) plus per-row warnings and patterns."""

    rows: int
    columns: dict[str, list[Any]]
    warnings: list[list[InputWarning]]
    out_of_distribution: list[bool]
    patterns: list[str]

    def instance_values(self, i: int) -> dict[str, Any]:
        return {name: col[i] for name, col in self.columns.items()}


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
        for checker in self.fields:
            name = checker.name
            value, error, warning = checker.check(obj.get(name, MISSING), (*loc, name))
            if error is not None:
                errors.append(error)
                continue
            values[name] = value
            if warning is not None:
                warnings.append(warning)
                ood = True
        if len(errors) > start:
            return None
        unknown = {w.field for w in warnings if w.code == "unknown_category"} if warnings else ()
        pattern = "".join("0" if values[name] is None or name in unknown else "1" for name in self.pattern_inputs)
        return Instance(values, warnings, ood, pattern)

    def one(self, obj: Any, loc: Loc = ("body",)) -> Instance:
        errors: list[FieldError] = []
        instance = self.check(obj, loc, errors)
        if instance is None:
            raise RequestValidationError(errors)
        return instance

    def many(self, objs: Sequence[Any], loc: Loc = ("body", "instances")) -> Batch:
        """Validate a batch column by column; numeric columns of plain numbers take a fast path."""
        acc = _Accumulator(len(objs))
        names = self.names
        uniform = _uniform_keys(objs)
        if uniform is not None and uniform <= names:
            objs_to_check: Sequence[Any] = ()  # every row is an object with the same, known fields
        else:
            objs_to_check = objs
        for i, obj in enumerate(objs_to_check):
            if type(obj) is not dict:
                acc.fail(self._not_object(obj, (*loc, i)))
                acc.skip.add(i)
            elif not obj.keys() <= names:
                field_errors, field_warnings = self._unknown_fields(obj, (*loc, i))
                for error in field_errors:
                    acc.fail(error)
                acc.warnings[i].extend(field_warnings)
        safe = [{} if i in acc.skip else obj for i, obj in enumerate(objs)] if acc.skip else objs
        transposed = _transpose(safe, [f.name for f in self.fields], uniform if not acc.skip else None)
        columns: dict[str, list[Any]] = {}
        for checker in self.fields:
            raw = transposed[checker.name]
            column: list[Any] | None
            if isinstance(checker, NumberField):
                column = _fast_numbers(checker, raw, acc)
            elif isinstance(checker, CategoryField):
                column = _fast_categories(checker, raw, acc)
            else:
                column = checker.fast_column(raw)
            columns[checker.name] = column if column is not None else acc.check_column(checker, raw, loc)
        if acc.errors:
            acc.errors.sort(key=_row_of)
            raise RequestValidationError(acc.errors[:100])
        patterns = _patterns(self.pattern_inputs, columns, acc.warnings, acc.rows)
        return Batch(acc.rows, columns, acc.warnings, acc.ood, patterns)


class _Accumulator:
    """Per-row errors, warnings and OOD flags gathered while a batch is checked column by column."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.errors: list[FieldError] = []
        self.warnings: list[list[InputWarning]] = [[] for _ in range(rows)]
        self.ood = [False] * rows
        self.skip: set[int] = set()

    def fail(self, error: FieldError) -> None:
        self.errors.append(error)
        if len(self.errors) > 1000:
            self.errors.sort(key=_row_of)
            raise RequestValidationError(self.errors[:100])

    def check_column(self, checker: Field, raw: list[Any], loc: Loc) -> list[Any]:
        column: list[Any] = [None] * self.rows
        name = checker.name
        for i, value in enumerate(raw):
            if i in self.skip:
                continue
            out, error, warning = checker.check(value, (*loc, i, name))
            if error is not None:
                self.fail(error)
                continue
            column[i] = out
            if warning is not None:
                self.warnings[i].append(warning)
                self.ood[i] = True
        return column


def _fast_numbers(checker: NumberField, raw: list[Any], acc: _Accumulator) -> list[float] | None:
    """The column as floats when every value is a plain, finite, plausible number (and whole where it must
    be); values outside the training range get their out-of-distribution warning. Else None (slow path)."""
    if not set(map(type, raw)) <= {int, float}:
        return None
    try:
        column = [float(v) for v in raw]
    except OverflowError:
        return None
    if not column or not math.isfinite(sum(column)):
        return None  # NaN or ±inf somewhere (the stdlib JSON fallback parses them): check one by one
    low, high = min(column), max(column)
    if low < checker.low or high > checker.high:
        return None  # an error to report field by field
    if checker.integer and not all(map(float.is_integer, column)):
        return None
    if low < checker.train_low or high > checker.train_high:
        t_low, t_high = checker.train_low, checker.train_high
        for i, value in enumerate(column):
            if value < t_low or value > t_high:
                acc.warnings[i].append(checker.ood_warning(value))
                acc.ood[i] = True
    return column


def _fast_categories(checker: CategoryField, raw: list[Any], acc: _Accumulator) -> list[str] | None:
    """The column in canonical spelling when every value is a non-empty string; unseen values get their
    unknown-category warning. Else None (slow path: missing values, wrong types)."""
    looked_up = checker.lookup_column(raw)
    if looked_up is None:
        return None
    column, unknown = looked_up
    for i in unknown:
        acc.warnings[i].append(checker.unknown_warning(raw[i]))
        acc.ood[i] = True
    return column


def _patterns(
    names: tuple[str, ...], columns: dict[str, list[Any]], warnings: list[list[InputWarning]], rows: int
) -> list[str]:
    """Conformal pattern per row: an input counts as given when present and not an unknown category (the
    model encodes an unknown category like an absent one, so it must get the same conformal table)."""
    if not names:
        return [""] * rows
    flags = [["0" if v is None else "1" for v in columns[name]] for name in names]
    patterns = ["".join(chars) for chars in zip(*flags, strict=True)]
    for i, row_warnings in enumerate(warnings):
        if not row_warnings:
            continue
        unknown = {w.field for w in row_warnings if w.code == "unknown_category"}
        if unknown & set(names):
            patterns[i] = "".join("0" if n in unknown else c for n, c in zip(names, patterns[i], strict=True))
    return patterns


def _uniform_keys(objs: Sequence[Any]) -> Any:
    """The shared key view when every row is a JSON object with exactly the same keys, else None."""
    if not objs or type(objs[0]) is not dict:
        return None
    keys = objs[0].keys()
    for obj in objs:
        if type(obj) is not dict or obj.keys() != keys:
            return None
    return keys


def _transpose(objs: Sequence[Any], names: list[str], uniform: Any) -> dict[str, list[Any]]:
    """Columns of a batch. When every row has the same keys (the usual case) one C-level ``itemgetter``
    call per row does it; otherwise one ``dict.get`` per cell. Absent fields are ``MISSING``."""
    n = len(objs)
    if uniform is not None:
        present = [name for name in names if name in uniform]
        columns: dict[str, list[Any]] = dict.fromkeys(names, [MISSING] * n)  # shared, never mutated
        if len(present) == 1:
            columns[present[0]] = [o[present[0]] for o in objs]
        elif present:
            for name, column in zip(present, zip(*map(itemgetter(*present), objs), strict=True), strict=True):
                columns[name] = list(column)
        return columns
    return {name: [o.get(name, MISSING) if type(o) is dict else MISSING for o in objs] for name in names}


def _row_of(error: FieldError) -> int:
    return error.loc[2] if len(error.loc) > 2 and isinstance(error.loc[2], int) else -1
