"""One compiled checker per manifest input: type, unit conversion, plausible range, category lookup.

Each checker turns one raw JSON value into its normalised form (a float in the canonical unit, a canonical
category, a string) or a FieldError, and says whether the value is out of the training distribution. The
checkers are built once per model version; a request only pays dictionary look-ups and comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tabserve.errors import FieldError
from tabserve.features.text import normalise_key
from tabserve.features.units import FAMILIES, UnitFamily
from tabserve.manifest import CategoryInput, InputSpec, NumericInput, TextInput

MISSING: Any = object()
"""Sentinel for a field that is not in the request at all (``None`` is an explicit JSON null)."""

_CATEGORY_CACHE_MAX = 4096
_WARNING_CACHE_MAX = 1024
UNITLESS = frozenset({"year", "count"})
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class InputWarning:
    """A per-instance warning: the value was served, but the caller should know something about it."""

    field: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


def _remember(cache: dict[Any, InputWarning], key: Any, warning: InputWarning) -> InputWarning:
    """Keep ``warning`` for ``key`` in a bounded cache (cleared when full) and return it."""
    if len(cache) >= _WARNING_CACHE_MAX:
        cache.clear()
    cache[key] = warning
    return warning


def _absent_or_not_text(name: str, required: bool, raw: Any, loc: Loc) -> tuple[None, FieldError | None, None]:
    """A text or category field that is not a string: absent (an error only when required), or wrong type."""
    if raw is None or raw is MISSING:
        return None, (FieldError(loc, f"{name} is required", "missing") if required else None), None
    got = "boolean" if isinstance(raw, bool) else type(raw).__name__
    return None, FieldError(loc, f"{name} must be a string; got {got}", "wrong_type"), None


class NumberField:
    kind = "number"

    def __init__(self, spec: NumericInput) -> None:
        self.name = spec.name
        self.required = spec.required
        self.integer = spec.integer
        self.unit = spec.unit
        family = FAMILIES.get(spec.unit)
        self.family: UnitFamily | None = family
        self.allowed_units = list(family.units) if family else [spec.unit]
        self.low, self.high = spec.plausible.min, spec.plausible.max
        self.train_low, self.train_high = spec.training.min, spec.training.max
        self._warnings: dict[float, InputWarning] = {}
        self._suffix = "" if spec.unit in UNITLESS else f" {spec.unit}"  # "2020", not "2020 year"

    def check(self, raw: Any, loc: Loc) -> tuple[float | None, FieldError | None, InputWarning | None]:
        """Returns (canonical value or None when absent, error, out-of-distribution warning)."""
        kind = type(raw)
        if kind is float or kind is int:
            value = float(raw) if raw.__abs__() < 1e300 else math.inf
        elif raw is None or raw is MISSING:
            if self.required:
                return None, FieldError(loc, f"{self.name} is required ({self.unit})", "missing"), None
            return None, None, None
        elif kind is dict:
            converted = self._convert(raw, loc)
            if isinstance(converted, FieldError):
                return None, converted, None
            value = converted
        else:
            return None, self._type_error(raw, loc), None
        if not math.isfinite(value):
            return None, FieldError(loc, f"{self.name} must be a finite number", "not_finite"), None
        if value < self.low or value > self.high:
            return (
                None,
                FieldError(
                    loc,
                    f"{self.name} = {value:g}{self._suffix} is physically implausible; "
                    f"allowed range is {self.low:g} to {self.high:g}{self._suffix}",
                    "out_of_range",
                    {"min": self.low, "max": self.high, "unit": self.unit, "value": value},
                ),
                None,
            )
        if self.integer and value != int(value):
            return None, FieldError(loc, f"{self.name} must be a whole number", "not_integer"), None
        if value < self.train_low or value > self.train_high:
            return value, None, self.ood_warning(value)
        return value, None, None

    def ood_warning(self, value: float) -> InputWarning:
        """The warning for a value outside the training range (immutable: cached, the same values recur)."""
        warning = self._warnings.get(value)
        if warning is None:
            warning = _remember(
                self._warnings,
                value,
                InputWarning(
                    self.name,
                    "out_of_distribution",
                    f"{self.name} = {value:g}{self._suffix} is outside the training range "
                    f"{self.train_low:g} to {self.train_high:g}{self._suffix}; the prediction is an extrapolation",
                ),
            )
        return warning

    def _type_error(self, raw: Any, loc: Loc) -> FieldError:
        got = "boolean" if isinstance(raw, bool) else type(raw).__name__
        return FieldError(
            loc,
            f'{self.name} must be a number in {self.unit} or {{"value": x, "unit": u}} '
            f"with u one of {self.allowed_units}; got {got}",
            "wrong_type",
        )

    def _convert(self, raw: dict[str, Any], loc: Loc) -> float | FieldError:
        extra = set(raw) - {"value", "unit"}
        value, unit = raw.get("value"), raw.get("unit")
        if extra or not isinstance(unit, str) or not isinstance(value, int | float) or isinstance(value, bool):
            return FieldError(
                loc,
                f'{self.name} as an object must be {{"value": <number>, "unit": <string>}} '
                f"with unit one of {self.allowed_units}",
                "wrong_type",
            )
        name = self.family.lookup(unit) if self.family else (self.unit if unit == self.unit else None)
        if name is None:
            return FieldError(
                (*loc, "unit"),
                f"unknown unit {unit!r} for {self.name}; allowed units: {', '.join(self.allowed_units)}",
                "unknown_unit",
                {"allowed": self.allowed_units},
            )
        number = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(number):
            return FieldError(loc, f"{self.name} must be a finite number", "not_finite")
        if self.family is None:
            return number
        if name in self.family.inverse and number <= 0:
            return FieldError(
                (*loc, "value"), f"{self.name} in {name} must be greater than 0", "out_of_range", {"unit": name}
            )
        return self.family.units[name](number)


class CategoryField:
    kind = "category"

    def __init__(self, spec: CategoryInput) -> None:
        self.name = spec.name
        self.required = spec.required
        self.categories = list(spec.categories)
        table = {normalise_key(c): c for c in spec.categories}
        table.update({normalise_key(a): c for a, c in spec.aliases.items()})
        self._table = table
        self._cache: dict[str, tuple[str, bool]] = {}
        self._warnings: dict[str, InputWarning] = {}

    def lookup(self, raw: str) -> tuple[str, bool]:
        """(canonical or normalised value, known?). Cached: the same spellings recur."""
        hit = self._cache.get(raw)
        if hit is not None:
            return hit
        key = normalise_key(raw)
        canonical = self._table.get(key)
        result = (canonical, True) if canonical is not None else (key, False)
        if len(self._cache) >= _CATEGORY_CACHE_MAX:
            self._cache.clear()
        self._cache[raw] = result
        return result

    def lookup_column(self, raw: list[Any]) -> tuple[list[str], list[int]] | None:
        """(canonical values, indexes of unseen ones) when every value is a non-blank string, else None."""
        if set(map(type, raw)) != {str}:
            return None  # missing values or wrong types (some unhashable): the slow path reports them
        cache = self._cache
        hits = list(map(cache.get, raw))
        if None in hits:
            hits = [hit if hit is not None else self.lookup(v) for hit, v in zip(hits, raw, strict=True)]
        values = [h[0] for h in hits]  # type: ignore[index]
        if not all(values):
            return None  # a blank value: missing, reported (or allowed) by the slow path
        unknown = [i for i, h in enumerate(hits) if not h[1]]  # type: ignore[index]
        return values, unknown

    def check(self, raw: Any, loc: Loc) -> tuple[str | None, FieldError | None, InputWarning | None]:
        if type(raw) is str:
            value, known = self.lookup(raw)
            if not value:
                if self.required:
                    return None, FieldError(loc, f"{self.name} must not be empty", "missing"), None
                return None, None, None
            if known:
                return value, None, None
            return value, None, self.unknown_warning(raw)
        return _absent_or_not_text(self.name, self.required, raw, loc)

    def unknown_warning(self, raw: str) -> InputWarning:
        """The warning for an unseen category (immutable: cached, the same values recur)."""
        warning = self._warnings.get(raw)
        if warning is None:
            shown = ", ".join(self.categories[:12]) + (", ..." if len(self.categories) > 12 else "")
            warning = _remember(
                self._warnings,
                raw,
                InputWarning(
                    self.name,
                    "unknown_category",
                    f"{self.name} {raw!r} was not seen in training; served as 'unknown' "
                    f"(known values: {shown}; full list at GET /models/{{name}})",
                ),
            )
        return warning


class TextField:
    kind = "text"

    def __init__(self, spec: TextInput) -> None:
        self.name = spec.name
        self.required = spec.required
        self.max_length = spec.max_length

    def fast_column(self, raw: list[Any]) -> list[str] | None:
        """The column unchanged when every value is a non-blank string within the length limit, else None."""
        if set(map(type, raw)) != {str} or max(map(len, raw)) > self.max_length or not all(map(str.strip, raw)):
            return None
        return raw

    def check(self, raw: Any, loc: Loc) -> tuple[str | None, FieldError | None, InputWarning | None]:
        if type(raw) is str:
            if len(raw) > self.max_length:
                return None, FieldError(loc, f"{self.name} is longer than {self.max_length}", "too_long"), None
            if not raw.strip():
                if self.required:
                    return None, FieldError(loc, f"{self.name} must not be empty", "missing"), None
                return None, None, None
            return raw, None, None
        return _absent_or_not_text(self.name, self.required, raw, loc)


Field = NumberField | CategoryField | TextField


def compile_field(spec: InputSpec) -> Field:
    if isinstance(spec, NumericInput):
        return NumberField(spec)
    if isinstance(spec, CategoryInput):
        return CategoryField(spec)
    return TextField(spec)
