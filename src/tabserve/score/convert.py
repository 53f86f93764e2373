"""A record batch's input columns as the values a JSON request would carry, for ``InstanceValidator.many``.

Numbers stay numbers (int or float), text stays text, an empty cell or a null is ``None`` (a JSON null). A CSV
is read as text, so a numeric input's cell is parsed as a number when it is one; a cell that is not a number is
left as its text, and the validator rejects it exactly as it rejects a string in a request. A unit column
(``engine_size_cc``) is the request form ``{"value": v, "unit": "cc"}``; its clean values (finite, and positive
for a unit that divides) are converted here with the same conversion the validator applies to that form, in one
vectorised pass (the same float64 operations, so the same bits), and any other value is handed on in the
request form for the validator to reject with its own message.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from tabserve.features.batch import CodedColumn
from tabserve.features.fields import NumberField
from tabserve.features.units import FAMILIES
from tabserve.score.columns import UnitColumn

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def values(array: pa.Array | pa.ChunkedArray, numeric: bool) -> list[Any]:
    """One column's cells as request values (see the module docstring)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if numeric:
            return _parsed(array)
        return _strings(array)
    if (pa.types.is_floating(kind) or pa.types.is_integer(kind)) and array.null_count == 0:
        if pa.types.is_floating(kind) and kind != pa.float64():
            array = array.cast(pa.float64())
        out: list[Any] = array.to_numpy(zero_copy_only=False).tolist()
        return out
    cells: list[Any] = array.to_pylist()
    return cells


def numbers(array: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.float64] | None:
    """A numeric column without nulls as one float64 array (the values ``values`` would list, as
    ``InstanceValidator.many`` converts them: the same float64 numbers), else None."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)) or array.null_count:
        return None
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)


def coded(array: pa.Array | pa.ChunkedArray) -> CodedColumn | None:
    """A text column as distinct values and one code per row (an empty cell or a null is None, as in ``values``),
    else None (not text)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return None
    encoded = pc.dictionary_encode(array)
    distinct: list[Any] = [None if s == "" else s for s in encoded.dictionary.to_pylist()]
    indices = encoded.indices
    if indices.null_count:
        distinct.append(None)
        indices = indices.fill_null(len(distinct) - 1)
    return CodedColumn(distinct, np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.intp))


def _strings(array: pa.Array) -> list[Any]:
    """Text cells; an empty cell is absent. Dictionary-encoded first: a file's categories repeat a lot."""
    encoded = pc.dictionary_encode(array)
    distinct = np.array([None if s == "" else s for s in encoded.dictionary.to_pylist()] + [None], dtype=object)
    codes = encoded.indices.fill_null(len(distinct) - 1).to_numpy(zero_copy_only=False)
    out: list[Any] = distinct[codes].tolist()
    return out


def _parsed(array: pa.Array) -> list[Any]:
    """A numeric input read as text: each cell a float when it is a number, None when empty, else the text."""
    stripped = pc.utf8_trim_whitespace(array)
    try:
        parsed = pc.cast(pc.if_else(pc.equal(stripped, ""), None, stripped), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return [_number(s) for s in array.to_pylist()]
    if parsed.null_count == 0:
        floats: list[Any] = parsed.to_numpy().tolist()
        return floats
    cells: list[Any] = parsed.to_pylist()
    return cells


def _number(cell: str | None) -> Any:
    if cell is None or not cell.strip():
        return None
    text = cell.strip()
    return float(text) if _NUMBER.fullmatch(text) else cell


def unit_values(
    array: pa.Array | pa.ChunkedArray, unit: UnitColumn, checker: NumberField
) -> list[Any] | npt.NDArray[np.float64]:
    """A unit column as canonical numbers where clean (every value clean: one float64 array), else the request
    form ``{"value": v, "unit": u}``."""
    raw = values(array, numeric=True)
    family = FAMILIES[checker.unit]
    convert = family.units[unit.unit]
    numbers = [v if type(v) in (int, float) else None for v in raw]
    as_float = np.array([np.nan if v is None else float(v) for v in numbers], dtype=np.float64)
    clean = np.isfinite(as_float)
    if unit.unit in family.inverse:
        clean &= as_float > 0
    with np.errstate(all="ignore"):  # values that are not clean are replaced below
        converted = np.asarray(convert(as_float), dtype=np.float64)  # type: ignore[arg-type]  # works on arrays  # the family's own conversion, vectorised
    if clean.all():
        return converted
    out: list[Any] = converted.tolist()
    for i in np.flatnonzero(~clean).tolist():
        cell = raw[i]
        out[i] = None if cell is None else {"value": cell, "unit": unit.unit}
    return out
