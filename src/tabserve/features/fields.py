"""One compiled checker per manifest input: type, unit conversion, plausible range, category lookup.

Each checker turns one raw JSON value into its normalised form (a float in the canonical unit, a canonical
category, a string) or a FieldError, and says whether the value is out of the training distribution. The
checkers are built once per model version; a request only pays dictionary look-ups and comparisons.
"""

from __future__ import annotations

import math
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from tabserve.errors import FieldError
from tabserve.features.text import normalise_key, served_key
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


def _absent_or_not_text(name: str, required: bool, raw: Any, parent: Loc) -> tuple[None, FieldError | None, None]:
    """A text or category field that is not a string: absent (an error only when required), or wrong type."""
    if raw is None or raw is MISSING:
        return None, (FieldError((*parent, name), f"{name} is required", "missing") if required else None), None
    got = "boolean" if isinstance(raw, bool) else type(raw).__name__
    return None, FieldError((*parent, name), f"{name} must be a string; got {got}", "wrong_type"), None


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
        flag = spec.in_distribution
        self.train_low, self.train_high = (flag.min, flag.max) if flag else (spec.training.min, spec.training.max)
        self._warnings: dict[float, InputWarning] = {}
        self._suffix = "" if spec.unit in UNITLESS or not spec.unit else f" {spec.unit}"  # "2020", not "2020 year"

    def check(self, raw: Any, parent: Loc) -> tuple[float | None, FieldError | None, InputWarning | None]:
        """Returns (canonical value or None when absent, error, out-of-distribution warning). ``parent`` is the
        location of the object holding the field (an error's ``loc`` is built only when there is one)."""
        kind = type(raw)
        if kind is float or kind is int:
            value = float(raw) if raw.__abs__() < 1e300 else math.inf
        elif raw is None or raw is MISSING:
            if self.required:
                shown = f"{self.name} is required ({self.unit})" if self.unit else f"{self.name} is required"
                return None, FieldError((*parent, self.name), shown, "missing"), None
            return None, None, None
        elif kind is dict:
            converted = self._convert(raw, (*parent, self.name))
            if isinstance(converted, FieldError):
                return None, converted, None
            value = converted
        else:
            return None, self._type_error(raw, (*parent, self.name)), None
        if not math.isfinite(value):
            return (
                None,
                FieldError(
                    (*parent, self.name), f"{self.name} must be a finite number below 1e300 in size", "not_finite"
                ),
                None,
            )
        if value < self.low or value > self.high:
            return (
                None,
                FieldError(
                    (*parent, self.name),
                    f"{self.name} = {value:g}{self._suffix} is physically implausible; "
                    f"allowed range is {self.low:g} to {self.high:g}{self._suffix}",
                    "out_of_range",
                    {"min": self.low, "max": self.high, "unit": self.unit, "value": value},
                ),
                None,
            )
        if self.integer and value != int(value):
            return None, FieldError((*parent, self.name), f"{self.name} must be a whole number", "not_integer"), None
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
        if not self.unit:
            return FieldError(loc, f"{self.name} must be a number; got {got}", "wrong_type")
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
            allowed = ", ".join(self.allowed_units) if self.unit else "none (send a bare number)"
            return FieldError(
                (*loc, "unit"),
                f"unknown unit {unit!r} for {self.name}; allowed units: {allowed}",
                "unknown_unit",
                {"allowed": self.allowed_units},
            )
        number = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(number):
            return FieldError(loc, f"{self.name} must be a finite number below 1e300 in size", "not_finite")
        if self.family is None:
            return number
        if name in self.family.inverse and number <= 0:
            return FieldError(
                (*loc, "value"), f"{self.name} in {name} must be greater than 0", "out_of_range", {"unit": name}
            )
        return self.family.units[name](number)


BOOLEAN_CATEGORIES = frozenset({"TRUE", "FALSE"})


def is_boolean_category(spec: CategoryInput) -> bool:
    """A category input whose values are true / false (built from a boolean column)."""
    return bool(spec.categories) and {normalise_key(c) for c in spec.categories} <= BOOLEAN_CATEGORIES


class CategoryField:
    kind = "category"

    def __init__(self, spec: CategoryInput) -> None:
        self.name = spec.name
        self.required = spec.required
        self.categories = list(spec.categories)
        table = {normalise_key(c): c for c in spec.categories}
        table.update({normalise_key(a): c for a, c in spec.aliases.items()})
        self._table = table
        self.boolean = is_boolean_category(spec)
        """Categories TRUE / FALSE (a true/false column): a JSON boolean is read as that text."""
        self._values: dict[str, str] = {}
        """Spellings seen before (not blank) -> the canonical category, or the normalised key if unseen."""
        self._unseen: set[str] = set()
        """The spellings among those that name no known category."""
        self._warnings: dict[str, InputWarning] = {}

    def lookup(self, raw: str) -> tuple[str, bool]:
        """(canonical or normalised value, known?). Cached: the same spellings recur."""
        value = self._values.get(raw)
        if value is not None:
            return value, raw not in self._unseen
        key = served_key(raw)
        canonical = self._table.get(key)
        if key:  # a blank spelling is cheap to normalise again, and must stay out of the fast paths
            if len(self._values) >= _CATEGORY_CACHE_MAX:
                self._values.clear()
                self._unseen.clear()
            self._values[raw] = key if canonical is None else canonical
            if canonical is None:
                self._unseen.add(raw)
        return (key, False) if canonical is None else (canonical, True)

    def lookup_column(self, raw: list[Any]) -> tuple[list[str], list[int]] | None:
        """(canonical values, indexes of unseen ones) when every value is a non-blank string, else None.

        The usual batch (every spelling seen before) costs a few C-level passes over the cache of spellings;
        anything else is looked up value by value."""
        try:
            values: list[Any] = list(map(self._values.__getitem__, raw))
        except TypeError:
            return None  # an unhashable value (object, array): the slow path reports it
        except KeyError:  # a spelling not seen before (or not a string): value by value
            values = [None] * len(raw)
            if set(map(type, raw)) != {str}:
                return None  # missing values or wrong types: the slow path reports them
            unknown: list[int] = []
            for i, looked_up in enumerate(map(self.lookup, raw)):
                value, known = looked_up
                if not value:
                    return None  # a blank value: missing, reported (or allowed) by the slow path
                values[i] = value
                if not known:
                    unknown.append(i)
            return values, unknown
        present = self._unseen.intersection(raw) if self._unseen else ()
        unknown = []
        for spelling in present:  # a few unseen spellings, each found by C-level scans
            i = -1
            with suppress(ValueError):
                while True:
                    i = raw.index(spelling, i + 1)
                    unknown.append(i)
        return values, sorted(unknown)

    def check(self, raw: Any, parent: Loc) -> tuple[str | None, FieldError | None, InputWarning | None]:
        if type(raw) is bool and self.boolean:
            raw = "TRUE" if raw else "FALSE"
        if type(raw) is str:
            value, known = self.lookup(raw)
            if not value:
                if self.required:
                    return None, FieldError((*parent, self.name), f"{self.name} must not be empty", "missing"), None
                return None, None, None
            if known:
                return value, None, None
            return value, None, self.unknown_warning(raw)
        return _absent_or_not_text(self.name, self.required, raw, parent)

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

    def check(self, raw: Any, parent: Loc) -> tuple[str | None, FieldError | None, InputWarning | None]:
        if type(raw) is str:
            if len(raw) > self.max_length:
                loc = (*parent, self.name)
                return None, FieldError(loc, f"{self.name} is longer than {self.max_length}", "too_long"), None
            if not raw.strip():
                if self.required:
                    return None, FieldError((*parent, self.name), f"{self.name} must not be empty", "missing"), None
                return None, None, None
            return raw, None, None
        return _absent_or_not_text(self.name, self.required, raw, parent)


Field = NumberField | CategoryField | TextField


def compile_field(spec: InputSpec) -> Field:
    if isinstance(spec, NumericInput):
        return NumberField(spec)
    if isinstance(spec, CategoryInput):
        return CategoryField(spec)
    return TextField(spec)
