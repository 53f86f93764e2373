"""Which file column feeds which model input, and the output columns a scored file gets.

A column named as a model input carries it in the input's canonical unit (a bare number, as in a request). A
numeric input may instead come in another unit the API accepts, named by replacing the input name's unit suffix
(``engine_size_l`` -> ``engine_size_cc``, ``fuel_consumption_comb_l_per_100km`` -> ``fuel_consumption_comb_mpg``)
or, for a name without that suffix, by appending one (``body_mass_g`` -> ``body_mass_kg``, ``x`` -> ``x_kg``).
Such a column is the request form ``{"value": v, "unit": u}``. Every other column is carried through untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tabserve.errors import ScoreInputError
from tabserve.features.units import FAMILIES
from tabserve.manifest import ClassificationOutput, Manifest, NumericInput

RESERVED_PREFIX = "score_"
_SLUG = re.compile(r"[^a-z0-9]+")


def unit_slug(unit: str) -> str:
    """A unit spelled for a column name: ``L/100km`` -> ``l_per_100km``, ``cu in`` -> ``cu_in``."""
    return _SLUG.sub("_", unit.lower().replace("/", "_per_")).strip("_")


@dataclass(frozen=True, slots=True)
class UnitColumn:
    """A file column holding a numeric input in a unit other than its canonical one."""

    column: str
    input: str
    unit: str
    """The unit as the API spells it (a display name of the input's family)."""


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """For one file schema and one model: where each input comes from, and the columns added to the output."""

    direct: tuple[str, ...]
    """Inputs present under their own name."""
    units: tuple[UnitColumn, ...]
    passthrough: tuple[str, ...]
    """Columns that are not model inputs (kept in the output, never checked)."""
    outputs: tuple[str, ...]

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.direct + tuple(u.column for u in self.units)


def unit_columns(manifest: Manifest) -> dict[str, UnitColumn]:
    """Every alternative column name the model accepts -> what it means."""
    out: dict[str, UnitColumn] = {}
    for spec in manifest.inputs:
        if not isinstance(spec, NumericInput) or spec.unit not in FAMILIES:
            continue
        family = FAMILIES[spec.unit]
        suffix = "_" + unit_slug(spec.unit)
        stem = spec.name[: -len(suffix)] if spec.name.endswith(suffix) else spec.name
        spellings = {name: name for name in family.units} | dict(family.aliases)
        for spelling, unit in spellings.items():
            column = f"{stem}_{unit_slug(spelling)}"
            if unit != spec.unit and column != spec.name and column not in out:
                out[column] = UnitColumn(column, spec.name, unit)
    return out


PROBABILITY_PREFIX = "probability_"
CLASSIFICATION_OUTPUTS = ("prediction_set", "level")
REGRESSION_OUTPUTS = ("unit", "interval_level", "interval_lower", "interval_upper")
COMMON_OUTPUTS = ("warnings", "out_of_distribution", "model_name", "model_version")


def output_columns(manifest: Manifest) -> tuple[str, ...]:
    """The columns a scored row gets, after its input columns."""
    if isinstance(manifest.output, ClassificationOutput):
        probs = tuple(f"{PROBABILITY_PREFIX}{unit_slug(c) or c}" for c in manifest.output.classes)
        body = (*probs, *CLASSIFICATION_OUTPUTS)
    else:
        body = REGRESSION_OUTPUTS
    return ("prediction", *body, *COMMON_OUTPUTS)


FIXED_OUTPUTS = frozenset({"prediction", *CLASSIFICATION_OUTPUTS, *REGRESSION_OUTPUTS, *COMMON_OUTPUTS})


def is_output_name(name: str) -> bool:
    """Whether a scored file could get a column of this name (an input so named could not be scored)."""
    return name in FIXED_OUTPUTS or name.startswith(PROBABILITY_PREFIX)


def plan(manifest: Manifest, schema_names: list[str]) -> ColumnPlan:
    """The column plan for a file; a clear error naming the columns when they do not fit the model."""
    names = set(schema_names)
    inputs = [spec.name for spec in manifest.inputs]
    alternatives = unit_columns(manifest)
    direct = tuple(n for n in inputs if n in names)
    units = tuple(alternatives[c] for c in schema_names if c in alternatives)
    by_input: dict[str, list[str]] = {}
    for name in direct:
        by_input.setdefault(name, []).append(name)
    for unit in units:
        by_input.setdefault(unit.input, []).append(unit.column)
    doubled = {k: v for k, v in by_input.items() if len(v) > 1}
    if doubled:
        detail = "; ".join(f"{k} given by {', '.join(v)}" for k, v in sorted(doubled.items()))
        raise ScoreInputError(f"an input may come from one column only: {detail}")
    outputs = output_columns(manifest)
    clash = sorted(names.intersection(outputs))
    if clash:
        raise ScoreInputError(f"the input already has output column(s) {', '.join(clash)}; rename them")
    if not by_input:
        raise ScoreInputError(f"no column is an input of {manifest.name}; its inputs: {', '.join(inputs)}")
    lacking = [spec.name for spec in manifest.inputs if spec.required and spec.name not in by_input]
    if lacking:
        raise ScoreInputError(
            f"the file has no column for the required input(s) {', '.join(lacking)} of {manifest.name} "
            "(every row would be rejected)"
        )
    used = set(direct) | {u.column for u in units}
    passthrough = tuple(c for c in schema_names if c not in used)
    return ColumnPlan(direct, units, passthrough, outputs)
