"""JSON Schema of a model's inputs, from its manifest: exactly what the checkers (``features.fields``) accept.

Numbers: the plausible range of the manifest, in the canonical unit and, for ``{"value", "unit"}`` objects, in
each unit (the range mapped through the unit's conversion, to the last float the checker accepts). Categories
and text: non-blank (a category needs a letter or digit, which is what its normalised key keeps; text a
non-space character), text within its ``max_length``. Also the Open Inference Protocol request of a model:
one tensor per input, in manifest order.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

from tabserve.features.fields import is_boolean_category
from tabserve.features.units import FAMILIES
from tabserve.manifest import CategoryInput, Manifest, NumericInput

CATEGORY_PATTERN = r"[^\W_]|[^\x00-\x7F]"
"""A category value must hold an ASCII letter or digit, or any character beyond ASCII; else it is blank (422). The
pattern means the same in ECMA-262 (``\\W`` over ASCII only) and in Python (``\\W`` over every script, but a
letter of another script is beyond ASCII anyway), and the validator agrees (``features.text.served_key``): a value
of symbols beyond ASCII only is an unseen category, answered with a warning. (``[^\\W_]`` alone was Python's
reading only: an ECMA-262 validator refused "Москва", and schemathesis sent "óÊ¢" expecting a refusal.)"""
TEXT_PATTERN = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A character ``str.strip`` keeps (Python's whitespace, which is not ECMA-262's ``\\s``): text of only those is
blank (422)."""


def _ordered(x: float) -> int:
    """A float as an integer with the same order (so bisection over it ends in 64 steps, on adjacent floats)."""
    bits: int = struct.unpack("<q", struct.pack("<d", x))[0]
    return bits if bits >= 0 else -(bits & 0x7FFF_FFFF_FFFF_FFFF)


def _float(n: int) -> float:
    bits = n if n >= 0 else (-n) | -0x8000_0000_0000_0000
    (x,) = struct.unpack("<d", struct.pack("<q", bits))
    return float(x)


def _edge(convert: Callable[[float], float], inside: float, outside: float, ok: Callable[[float], bool]) -> float:
    """The float nearest ``outside`` whose conversion is still accepted (``ok``), by bisection from ``inside``."""
    good, bad = _ordered(inside), _ordered(outside)
    while abs(good - bad) > 1:
        middle = (good + bad) // 2
        if ok(convert(_float(middle))):
            good = middle
        else:
            bad = middle
    return _float(good)


def unit_range(convert: Callable[[float], float], low: float, high: float, positive: bool) -> tuple[float, float]:
    """[min, max] of the values in a unit whose conversion lands in [low, high]. Conversions are monotonic: a
    scale (``x * c``) or, for ``positive`` units, an inverse (``c / x``, defined for x > 0)."""

    def ok(x: float) -> bool:
        return math.isfinite(x) and low <= x <= high

    middle, c = (low + high) / 2, convert(1.0)
    inside = c / middle if positive else middle / c
    ends = (5e-324, 1e300) if positive else (-1e300, 1e300)
    a, b = (_edge(convert, inside, end, ok) for end in ends)
    return min(a, b), max(a, b)


def _number_schema(spec: NumericInput) -> dict[str, Any]:
    low, high = spec.plausible.min, spec.plausible.max
    kind = "integer" if spec.integer else "number"
    bare: dict[str, Any] = {"type": kind, "minimum": low, "maximum": high, "description": f"in {spec.unit}"}
    family = FAMILIES.get(spec.unit)
    options: list[dict[str, Any]] = [bare]
    for unit in spec.units:
        convert = family.units.get(unit) if family else None
        if convert is None:
            continue
        if spec.integer and convert(3.0) != 3.0:
            continue  # a whole number in another unit is not whole in the canonical one: not documented
        if convert(1.0) == 1.0 and convert(7.0) == 7.0:
            value_low, value_high = low, high
        else:
            value_low, value_high = unit_range(convert, low, high, unit in family.inverse)  # type: ignore[union-attr]
        options.append(
            {
                "type": "object",
                "required": ["value", "unit"],
                "properties": {
                    "value": {"type": kind, "minimum": value_low, "maximum": value_high},
                    "unit": {"type": "string", "enum": [unit]},
                },
                "additionalProperties": False,
            }
        )
    return {"description": spec.description, "oneOf": options}


def value_schema(spec: Any) -> dict[str, Any]:
    """One input's value as the checkers accept it. An optional input may also be null, or (text, category) a
    blank string: both mean "not given"."""
    if isinstance(spec, NumericInput):
        schema = _number_schema(spec)
        if not spec.required:
            schema["oneOf"].append({"type": "null"})
        return schema
    schema = {"type": "string", "description": spec.description}
    if isinstance(spec, CategoryInput):
        schema["examples"] = spec.categories[:10]
        pattern = CATEGORY_PATTERN
    else:
        schema["maxLength"] = spec.max_length
        pattern = TEXT_PATTERN
    if spec.required:
        schema.update(minLength=1, pattern=pattern)
    else:
        schema["type"] = ["string", "null"]
    if isinstance(spec, CategoryInput) and is_boolean_category(spec):  # a true/false column: JSON booleans too
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema["type"] = [*kinds, "boolean"]
    return schema


def instance_schema(manifest: Manifest) -> dict[str, Any]:
    """JSON Schema of one instance (numbers may also be ``{"value", "unit"}`` objects)."""
    return {
        "type": "object",
        "title": f"{manifest.name} instance",
        "properties": {spec.name: value_schema(spec) for spec in manifest.inputs},
        "required": [s.name for s in manifest.inputs if s.required],
        "additionalProperties": False,
    }


def batch_schema(manifest: Manifest, max_batch: int) -> dict[str, Any]:
    return {
        "type": "object",
        "title": f"{manifest.name} batch",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "items": instance_schema(manifest),
                "minItems": 1,
                "description": f"at most {max_batch} instances (TABSERVE_MAX_BATCH); 413 beyond",
            }
        },
        "additionalProperties": False,
    }


def _tensor_schema(spec: Any) -> dict[str, Any]:
    value = value_schema(spec)
    if isinstance(spec, NumericInput):
        value = {"oneOf": [value["oneOf"][0], {"type": "null"}]} if not spec.required else value["oneOf"][0]
        datatype = ["INT64", "INT32", "FP64"] if spec.integer else ["FP64", "FP32"]
    else:
        datatype = ["BYTES"]
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string", "enum": [spec.name]},
            "datatype": {"type": "string", "enum": datatype},
            "shape": {"type": "array", "prefixItems": [{"type": "integer", "enum": [1]}], "minItems": 1, "maxItems": 1},
            "data": {"type": "array", "items": value, "minItems": 1, "maxItems": 1},
        },
    }


def infer_request_schema(manifest: Manifest) -> dict[str, Any]:
    """An Open Inference Protocol request of one row: every input as a tensor of shape [1], in manifest order
    (the protocol allows any order, any row count and leaving optional inputs out: those are 400 or 422 when
    inconsistent, which JSON Schema cannot say). Other members are allowed, as the protocol's extensions are."""
    tensors = [_tensor_schema(spec) for spec in manifest.inputs]
    needed = max((i + 1 for i, spec in enumerate(manifest.inputs) if spec.required), default=1)
    levels = manifest.conformal.levels
    return {
        "type": "object",
        "title": f"{manifest.name} inference request",
        "required": ["inputs"],
        "properties": {
            "id": {"description": "echoed back in the response (the protocol says a string; not checked)"},
            "inputs": {
                "type": "array",
                "prefixItems": tensors,
                "items": False,
                "minItems": needed,
                "maxItems": len(tensors),
            },
            "parameters": {
                "type": ["object", "null"],
                "properties": {"level": {"enum": [*levels, None], "description": "null: the default level"}},
                "additionalProperties": False,
            },
        },
    }
