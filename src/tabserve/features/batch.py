"""Validating a batch column by column: the building blocks of ``InstanceValidator.many``.

A batch is transposed once into one list per input, and each column is checked in one pass of C-level
operations when it is clean (every value a plain number in range, every category a spelling seen before);
only a column with a problem is checked value by value, with the single-instance checkers, so both paths give
the same values, warnings and errors. Warnings are kept per row only for the rows that have some. A batch that
arrives as columns (``ColumnRows``: the Open Inference Protocol's tensors) is taken as it is, without rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from tabserve.errors import FieldError, RequestValidationError
from tabserve.features.fields import MISSING, CategoryField, Field, InputWarning, NumberField

Loc = tuple[str | int, ...]
FloatArray = npt.NDArray[np.float64]
_NUMBER_TYPES = frozenset({int, float})
MAX_ERRORS_KEPT = 1000
MAX_ERRORS_SHOWN = 100


CodeArray = npt.NDArray[np.intp]


class CodedColumn:
    """A text column as its distinct values and one code per row (``values[codes[i]]`` is row ``i``'s value).

    A file's categories repeat a lot: the file scorer hands them over so (``score.convert.coded``), and the
    validator and the encoder look each distinct value up once, then spread the results with numpy. It reads
    like the list it stands for (``len``, index, iteration, ``tolist``)."""

    __slots__ = ("codes", "values")

    def __init__(self, values: list[Any], codes: CodeArray) -> None:
        self.values = values
        self.codes = codes

    def tolist(self) -> list[Any]:
        table = np.empty(len(self.values), dtype=object)
        table[:] = self.values
        out: list[Any] = table[self.codes].tolist()
        return out

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> Any:
        return self.values[int(self.codes[index])]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tolist())


Column = list[Any] | FloatArray | CodedColumn
"""One input's values: a list (None = absent), a numeric column given complete as a float64 array, or a text
column as distinct values and codes."""


def listed(column: Column) -> list[Any]:
    """A column as the list of values it stands for (the value-by-value checks and JSON take lists)."""
    if isinstance(column, np.ndarray | CodedColumn):
        out: list[Any] = column.tolist()
        return out
    return column


WarningRun = tuple[list[int], list[InputWarning]]
"""Warnings of one column (or of unknown fields): the rows they belong to, and the warning of each."""


@dataclass(slots=True)
class Batch:
    """A validated batch: one list per input (None = absent) plus warnings, OOD flags and patterns per row.

    Warnings are held as runs (``WarningRun``), unknown-field ones first, then one per input in field order, so
    appending every run's warnings to its rows gives each row's warnings in the single-instance order.
    ``arrays`` holds the numeric columns that have no absent value as float64 arrays, and ``complete`` names
    every column that has no absent value, so the encoder need not look for them again. ``raw`` holds the inputs
    as received, as columns (in the first row's field order), when every row had the same fields: the prediction
    log records them so (``store.columnar``) instead of one object per row.
    """

    rows: int
    columns: dict[str, Column]
    runs: list[WarningRun]
    out_of_distribution: list[bool]
    patterns: list[str]
    arrays: dict[str, FloatArray]
    complete: frozenset[str]
    raw: dict[str, Column] | None = None

    @property
    def row_warnings(self) -> dict[int, list[InputWarning]]:
        """Row -> its warnings, for the rows that have some."""
        return _by_row(self.runs)

    @property
    def warnings(self) -> list[list[InputWarning]]:
        """Every row's warnings (an empty list for most rows)."""
        get = _by_row(self.runs).get
        return [list(get(i, ())) for i in range(self.rows)]

    def instance_values(self, i: int) -> dict[str, Any]:
        return {name: col[i] for name, col in self.columns.items()}


def _by_row(runs: list[WarningRun]) -> dict[int, list[InputWarning]]:
    out: dict[int, list[InputWarning]] = {}
    for rows, warnings in runs:
        for i, warning in zip(rows, warnings, strict=True):
            out.setdefault(i, []).append(warning)
    return out


class Accumulator:
    """Errors, warning runs and OOD flags gathered while a batch is checked column by column."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.errors: list[FieldError] = []
        self.runs: list[WarningRun] = []
        self.ood = np.zeros(rows, dtype=bool)
        self.skip: set[int] = set()
        self.unknown_fields: set[str] = set()
        """Inputs that had an unseen category in some row (they change those rows' conformal pattern)."""
        self.complete: set[str] = set()
        """Inputs a fast path found given in every row (no None to look for)."""

    def fail(self, error: FieldError) -> None:
        self.errors.append(error)
        if len(self.errors) > MAX_ERRORS_KEPT:
            self.raise_errors()

    def raise_errors(self) -> None:
        self.errors.sort(key=_row_of)
        raise RequestValidationError(self.errors[:MAX_ERRORS_SHOWN])

    def warn(self, rows: list[int], warnings: list[InputWarning]) -> None:
        """One field's warnings for these rows (in row order): those rows are out of distribution."""
        if rows:
            self.runs.append((rows, warnings))
            self.ood[rows] = True
            if warnings[0].code == "unknown_category":
                self.unknown_fields.add(warnings[0].field)

    def check_column(self, checker: Field, raw: list[Any], loc: Loc) -> list[Any]:
        """The slow path: every value through the single-instance checker. A field absent from every row (an
        optional input left out) is checked once when that is neither an error nor a warning."""
        if raw and raw[0] is MISSING and raw.count(MISSING) == len(raw):
            out, error, warning = checker.check(MISSING, (*loc, 0))
            if error is None and warning is None:
                return [out] * self.rows
        column: list[Any] = [None] * self.rows
        skip = self.skip
        check = checker.check
        rows: list[int] = []
        warnings: list[InputWarning] = []
        for i, value in enumerate(raw):
            if i in skip:
                continue
            out, error, warning = check(value, (*loc, i))
            if error is not None:
                self.fail(error)
                continue
            column[i] = out
            if warning is not None:
                rows.append(i)
                warnings.append(warning)
        self.warn(rows, warnings)
        return column


def fast_numbers(checker: NumberField, raw: Column, acc: Accumulator) -> tuple[Column, FloatArray] | None:
    """The column as floats (and as an array) when every value is a plain, finite, plausible number (and whole
    where it must be); values outside the training range get their out-of-distribution warning. Else None.

    A column that arrives as a float64 array (the file scorer's numeric columns, ``score.convert.numbers``) is
    checked as it is, and is its own column: the same checks on the same float64 values as a list's."""
    kinds: set[type]
    if isinstance(raw, np.ndarray):
        if not raw.size:
            return None
        array = raw
        kinds = {float}
    elif isinstance(raw, CodedColumn):
        return None  # text: the checks value by value say what is wrong
    else:
        kinds = set(map(type, raw))
        if not kinds or not kinds <= _NUMBER_TYPES:
            return None
        try:
            array = np.array(raw, dtype=np.float64)
        except OverflowError:
            return None
    low, high = float(array.min()), float(array.max())
    if not (low >= checker.low and high <= checker.high):  # also false for NaN; ±inf are out of range
        return None  # an error to report field by field
    if checker.integer and not np.array_equal(array, np.trunc(array)):
        return None
    column: Column = raw if kinds == {float} else array.tolist()
    t_low, t_high = checker.train_low, checker.train_high
    if low < t_low or high > t_high:
        outside = np.flatnonzero((array < t_low) | (array > t_high))
        values = array[outside].tolist()
        warning_of = {value: checker.ood_warning(value) for value in set(values)}  # few distinct values recur
        acc.runs.append((outside.tolist(), list(map(warning_of.__getitem__, values))))
        acc.ood[outside] = True
    acc.complete.add(checker.name)
    return column, array


def fast_categories(checker: CategoryField, raw: Column, acc: Accumulator) -> Column | None:
    """The column in canonical spelling when every value is a non-empty string; unseen values get their
    unknown-category warning. Else None (slow path: missing values, wrong types). A coded column is looked up
    once per distinct value and stays coded."""
    if isinstance(raw, CodedColumn):
        return _fast_coded_categories(checker, raw, acc)
    looked_up = checker.lookup_column(listed(raw))
    if looked_up is None:
        return None
    column, unknown = looked_up
    acc.warn(unknown, [checker.unknown_warning(raw[i]) for i in unknown])
    acc.complete.add(checker.name)
    return column


def _fast_coded_categories(checker: CategoryField, raw: CodedColumn, acc: Accumulator) -> CodedColumn | None:
    looked_up = checker.lookup_column(raw.values)
    if looked_up is None:
        return None
    canonical, unknown = looked_up
    if unknown:
        unseen = np.zeros(len(raw.values), dtype=bool)
        unseen[unknown] = True
        rows = np.flatnonzero(unseen[raw.codes])
        warning_of = {k: checker.unknown_warning(raw.values[k]) for k in unknown}
        acc.warn(rows.tolist(), list(map(warning_of.__getitem__, raw.codes[rows].tolist())))
    acc.complete.add(checker.name)
    return CodedColumn(canonical, raw.codes)


def patterns(names: tuple[str, ...], columns: Mapping[str, Column], acc: Accumulator) -> list[str]:
    """Conformal pattern per row: an input counts as given when present and not an unknown category (the
    model encodes an unknown category like an absent one, so it must get the same conformal table)."""
    rows = acc.rows
    if not names:
        return [""] * rows
    given = acc.complete
    if not acc.unknown_fields.intersection(names):
        shared = _shared_pattern(names, columns, given)
        if shared is not None:
            return [shared] * rows  # the usual batch: each pattern input given in every row, or in none
    flags = [["0" if v is None else "1" for v in columns[name]] for name in names]
    out = ["".join(chars) for chars in zip(*flags, strict=True)]
    if acc.unknown_fields.intersection(names):
        for i, row_warnings in _by_row(acc.runs).items():
            unknown = {w.field for w in row_warnings if w.code == "unknown_category"}
            if unknown & set(names):
                out[i] = "".join("0" if n in unknown else c for n, c in zip(names, out[i], strict=True))
    return out


def _shared_pattern(names: tuple[str, ...], columns: Mapping[str, Column], given: set[str]) -> str | None:
    """The pattern of every row when each input is given in every row or absent from every row, else None."""
    chars: list[str] = []
    for name in names:
        column = columns[name]
        if name in given or None not in column:
            chars.append("1")
        elif isinstance(column, list) and column.count(None) == len(column):
            chars.append("0")
        else:
            return None
    return "".join(chars)


def received_columns(objs: Sequence[Any], transposed: Mapping[str, Column]) -> dict[str, Column]:
    """The fields the rows of a uniform batch (``uniform_columns`` succeeded) arrived with, as columns, in the first
    row's order (a batch sent as columns: its columns as they came)."""
    if type(objs) is ColumnRows:
        return objs.columns
    return {name: transposed[name] for name in objs[0]}


def uniform_columns(objs: Sequence[Any], names: Sequence[str]) -> dict[str, Column] | None:
    """Columns of a batch whose rows are all objects with the same keys, every key one of ``names`` (the usual
    batch), in C-level passes; None when the rows differ (then ``columns`` and a row-by-row check apply).
    A field absent from every row is a shared column of ``MISSING``."""
    if type(objs) is ColumnRows:
        return objs.uniform(names)
    if not objs or type(objs[0]) is not dict or set(map(type, objs)) != {dict}:
        return None
    keys = list(objs[0])
    if not keys or not set(keys) <= set(names) or set(map(len, objs)) != {len(keys)}:
        return None
    n = len(objs)
    columns: dict[str, Column] = dict.fromkeys(names, [MISSING] * n)  # shared, never mutated
    try:  # same size and every key present: the same key set
        for name in keys:
            columns[name] = list(map(itemgetter(name), objs))
    except KeyError:
        return None
    return columns


class ColumnRows(Sequence[dict[str, Any]]):
    """A batch that arrived as columns (the Open Inference Protocol's one tensor per input), seen as its rows.

    ``uniform_columns`` takes the columns as they are when every name is an input, so validation never builds a
    row; anything that reads rows (the row-by-row checks of a batch with unknown names, the prediction log)
    gets one ``{name: value}`` dict per row, built when it is read."""

    __slots__ = ("_rows", "columns")

    def __init__(self, columns: Mapping[str, Column], rows: int) -> None:
        self.columns: dict[str, Column] = dict(columns)
        self._rows = rows

    def __len__(self) -> int:
        return self._rows

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._rows))]
        if not -self._rows <= index < self._rows:
            raise IndexError(index)
        return {name: column[index] for name, column in self.columns.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.columns)
        for row in zip(*self.columns.values(), strict=True):
            yield dict(zip(names, row, strict=True))

    def uniform(self, names: Sequence[str]) -> dict[str, Column] | None:
        """The columns for ``uniform_columns``: every input, an absent one as a shared column of ``MISSING``;
        None when a column is not an input (the row-by-row checks name it)."""
        if not self._rows or not set(self.columns) <= set(names):
            return None
        columns: dict[str, Column] = dict.fromkeys(names, [MISSING] * self._rows)  # shared, never mutated
        columns.update(self.columns)
        return columns


def columns(objs: Sequence[Any], names: Sequence[str]) -> dict[str, Column]:
    """Columns of any batch, one ``dict.get`` per cell; absent fields and non-object rows are ``MISSING``."""
    return {name: [o.get(name, MISSING) if type(o) is dict else MISSING for o in objs] for name in names}


def _row_of(error: FieldError) -> int:
    return error.loc[2] if len(error.loc) > 2 and isinstance(error.loc[2], int) else -1
