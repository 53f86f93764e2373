"""Units a request may use, and their conversion to each input's canonical unit.

A numeric input may be sent as a bare number (canonical unit) or as ``{"value": x, "unit": u}``.
Unit names are matched after lower-casing and removing spaces, so ``"L/100 km"`` = ``"l/100km"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

LITRES_PER_US_GALLON = 3.785411784
LITRES_PER_IMP_GALLON = 4.54609
KM_PER_MILE = 1.609344
CC_PER_CUBIC_INCH = 16.387064


def _scale(factor: float) -> Callable[[float], float]:
    return lambda x: x * factor


def _per_distance_from_mpg(litres_per_gallon: float) -> Callable[[float], float]:
    # L/100 km = 100 * L_per_gal / (mpg * km_per_mile); mpg must be > 0 (checked by the caller)
    return lambda mpg: 100.0 * litres_per_gallon / (mpg * KM_PER_MILE)


@dataclass(frozen=True, slots=True)
class UnitFamily:
    canonical: str
    """The canonical unit's display name (what the model sees)."""
    units: dict[str, Callable[[float], float]]
    """Display name -> conversion to canonical. Conversions that divide require a value > 0."""
    aliases: dict[str, str]
    """Extra spellings (already lower-case, no spaces) -> display name."""
    inverse: frozenset[str] = frozenset()
    """Units whose conversion divides by the value (so 0 is impossible, not merely small)."""

    def lookup(self, unit: str) -> str | None:
        key = unit.lower().replace(" ", "")
        for name in self.units:
            if name.lower().replace(" ", "") == key:
                return name
        return self.aliases.get(key)


ENGINE_DISPLACEMENT = UnitFamily(
    canonical="L",
    units={"L": _scale(1.0), "cc": _scale(0.001), "cu in": _scale(CC_PER_CUBIC_INCH / 1000.0)},
    aliases={
        "l": "L",
        "litre": "L",
        "liter": "L",
        "litres": "L",
        "liters": "L",
        "cm3": "cc",
        "ml": "cc",
        "cuin": "cu in",
        "in3": "cu in",
        "ci": "cu in",
        "cid": "cu in",
        "cubicinches": "cu in",
    },
)

FUEL_CONSUMPTION = UnitFamily(
    canonical="L/100km",
    units={
        "L/100km": _scale(1.0),
        "mpg_us": _per_distance_from_mpg(LITRES_PER_US_GALLON),
        "mpg_imp": _per_distance_from_mpg(LITRES_PER_IMP_GALLON),
        "km/L": lambda kml: 100.0 / kml,
    },
    aliases={
        "mpg": "mpg_us",
        "mpg(us)": "mpg_us",
        "usmpg": "mpg_us",
        "mpgus": "mpg_us",
        "mpg(imperial)": "mpg_imp",
        "mpg(imp)": "mpg_imp",
        "mpgimp": "mpg_imp",
        "imperialmpg": "mpg_imp",
        "kmpl": "km/L",
        "kml": "km/L",
    },
    inverse=frozenset({"mpg_us", "mpg_imp", "km/L"}),
)

LENGTH_MM = UnitFamily(
    canonical="mm",
    units={"mm": _scale(1.0), "cm": _scale(10.0), "in": _scale(25.4)},
    aliases={
        "millimetre": "mm",
        "millimeter": "mm",
        "centimetre": "cm",
        "centimeter": "cm",
        "inch": "in",
        "inches": "in",
        '"': "in",
    },
)

MASS_G = UnitFamily(
    canonical="g",
    units={"g": _scale(1.0), "kg": _scale(1000.0), "lb": _scale(453.59237)},
    aliases={
        "gram": "g",
        "grams": "g",
        "kilogram": "kg",
        "kilograms": "kg",
        "lbs": "lb",
        "pound": "lb",
        "pounds": "lb",
    },
)

YEAR = UnitFamily(canonical="year", units={"year": _scale(1.0)}, aliases={})
COUNT = UnitFamily(canonical="count", units={"count": _scale(1.0)}, aliases={})

FAMILIES: dict[str, UnitFamily] = {
    family.canonical: family for family in (ENGINE_DISPLACEMENT, FUEL_CONSUMPTION, LENGTH_MM, MASS_G, YEAR, COUNT)
}
"""Canonical unit -> its family. A manifest input's ``unit`` must be one of these keys and its ``units``
list the family's display names (training takes them from here)."""


def unit_names(canonical: str) -> list[str]:
    return list(FAMILIES[canonical].units)
