"""The optional build spec (TOML): what a table cannot say about itself.

```toml
[model]
description = "House prices in ..."
target = "price"                 # the CLI's --target wins
task = "regression"              # or "classification"; default inferred
time_column = "sold_on"          # every split temporal
time_input = false               # true: the time column is also an input (a model year, not a timestamp)
drop = ["listing_url"]           # columns that are not inputs
optional = ["garage"]            # inputs a request may omit (conformal patterns first), beyond those with gaps
required = ["living_area"]       # inputs a request must give: rows of the file without them are left out
estimator = "lightgbm"           # train-for-me: "lightgbm" (default), "linear" (scaled ridge / logistic) or
                                 # "per_pattern" (one LightGBM per missing-input pattern)
proportional_to = ["fuel_l"]     # per_pattern regression: the target is modelled as a ratio to a weighted sum of
                                 # these numbers (those a request gives), e.g. CO2 to fuel burnt
score = "absolute"               # regression intervals: "absolute" (± q) or "relative" (× (1 ± q))
floor = 0                        # regression: no prediction or interval below this (default: 0 when every target
                                 # in the data is ≥ 0; false: none)
output_unit = "EUR"
output_description = "Sale price"
pattern_names = { "1" = "with garage", "0" = "no garage" }  # names of the patterns (keys: 1 given, 0 absent)

[columns.living_area]
unit = "mm"                      # the canonical unit (a known family: requests may send any of its units)
data_unit = "cm"                 # the unit of the values in the file: converted to ``unit`` at build
description = "Living area"
min = 5.0                        # hard (plausible) range; outside is refused at serve time
max = 2000.0
type = "category"                # force a kind: "number", "category" or "text" (free text read for its words)
aliases = { "N" = "NORTH" }      # alternative spellings of a category
tokens = 30                      # text: how many words to choose (the most telling of the target in training)
token_groups = { awd = ["AWD", "4WD", "4X4"] }  # text: words that count as one feature
normal_ahead = 2                 # a number: up to 2 above the training maximum is not out of distribution

[split]
calibration = 0.2                # share of the rows held out for the conformal tables (default 0.2)
test = 0.2                       # share held out for the reported metrics (default 0.2)
refit = false                    # with a time column: serve a model refitted on every row (see ``refit``)
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabserve.errors import BuildError
from tabserve.features.units import FAMILIES

_MODEL_KEYS = frozenset(
    {
        "description",
        "target",
        "task",
        "time_column",
        "time_input",
        "drop",
        "optional",
        "required",
        "score",
        "estimator",
        "proportional_to",
        "output_unit",
        "output_description",
        "pattern_names",
        "floor",
    }
)
ESTIMATORS = ("lightgbm", "linear", "per_pattern")
_COLUMN_KEYS = frozenset(
    {"unit", "data_unit", "description", "min", "max", "type", "aliases", "tokens", "token_groups", "normal_ahead"}
)
DEFAULT_TOKENS = 30
MAX_TOKENS = 500
_SPLIT_KEYS = frozenset({"calibration", "test", "refit"})
DEFAULT_CALIBRATION_SHARE = 0.2
DEFAULT_TEST_SHARE = 0.2
MAX_HELD_OUT_SHARE = 0.8
"""Calibration and test together may hold out at most this share: the rest is what the model is fitted on."""


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    unit: str | None = None
    data_unit: str | None = None
    description: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    kind: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    tokens: int = DEFAULT_TOKENS
    token_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    normal_ahead: float | None = None
    """A number up to this much above the training maximum is normal use, not out of distribution (a model year
    one or two past the newest trained on)."""


@dataclass(frozen=True, slots=True)
class BuildSpec:
    description: str | None = None
    target: str | None = None
    task: str | None = None
    time_column: str | None = None
    time_input: bool = False
    drop: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    score: str = "absolute"
    estimator: str = "lightgbm"
    proportional_to: tuple[str, ...] = ()
    output_unit: str = ""
    output_description: str | None = None
    pattern_names: dict[str, str] = field(default_factory=dict)
    floor: float | bool | None = None
    """Regression: the lowest value answered; None infers 0 for a target never negative in the data, False none."""
    columns: dict[str, ColumnSpec] = field(default_factory=dict)
    calibration_share: float = DEFAULT_CALIBRATION_SHARE
    test_share: float = DEFAULT_TEST_SHARE
    refit: bool = False
    """Temporal splits: the served model is refitted on every row; the test figures are a sibling's fitted on the
    rows before the test period (its intervals calibrated on the period before that by a sibling fitted before
    it), and the published intervals are that test sibling's scores on the test period (``build.refit``)."""

    def column(self, name: str) -> ColumnSpec:
        return self.columns.get(name, ColumnSpec())


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError(f"spec: {where} must be a list of column names")
    return tuple(value)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BuildError(f"spec: {where} must be a number")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BuildError(f"spec: {where} must be true or false")
    return value


def _tokens(name: str, raw: dict[str, Any], kind: Any) -> tuple[int, dict[str, tuple[str, ...]]]:
    if kind != "text":
        given = sorted({"tokens", "token_groups"} & set(raw))
        if given:
            raise BuildError(f'spec: [columns.{name}] {given[0]} needs type = "text"')
        return DEFAULT_TOKENS, {}
    count = raw.get("tokens", DEFAULT_TOKENS)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_TOKENS:
        raise BuildError(f"spec: [columns.{name}] tokens must be a whole number of words from 0 to {MAX_TOKENS}")
    groups = raw.get("token_groups", {})
    if not isinstance(groups, dict) or not all(
        isinstance(v, list) and v and all(isinstance(w, str) and w.strip() for w in v) for v in groups.values()
    ):
        raise BuildError(f"spec: [columns.{name}] token_groups must map a name to a list of words")
    return count, {str(k): tuple(w.strip().upper() for w in v) for k, v in groups.items()}


def _column(name: str, raw: Any) -> ColumnSpec:
    if not isinstance(raw, dict):
        raise BuildError(f"spec: [columns.{name}] must be a table")
    unknown = sorted(set(raw) - _COLUMN_KEYS)
    if unknown:
        raise BuildError(f"spec: [columns.{name}] has unknown keys {unknown}; allowed: {sorted(_COLUMN_KEYS)}")
    unit, data_unit = raw.get("unit"), raw.get("data_unit")
    if data_unit is not None:
        family = FAMILIES.get(str(unit))
        if family is None:
            raise BuildError(
                f"spec: [columns.{name}] data_unit needs a unit of a known family; known units: {sorted(FAMILIES)}"
            )
        if family.lookup(str(data_unit)) is None:
            raise BuildError(
                f"spec: [columns.{name}] data_unit {data_unit!r} is not a unit of {unit!r} "
                f"(one of {', '.join(family.units)})"
            )
    kind = raw.get("type")
    if kind not in (None, "number", "category", "text"):
        raise BuildError(f"spec: [columns.{name}] type must be 'number', 'category' or 'text', not {kind!r}")
    tokens, groups = _tokens(name, raw, kind)
    aliases = raw.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise BuildError(f"spec: [columns.{name}] aliases must map strings to strings")
    low, high = _number(raw.get("min"), f"[columns.{name}] min"), _number(raw.get("max"), f"[columns.{name}] max")
    if low is not None and high is not None and low > high:
        raise BuildError(f"spec: [columns.{name}] min {low:g} is above max {high:g}")
    ahead = _number(raw.get("normal_ahead"), f"[columns.{name}] normal_ahead")
    if ahead is not None and ahead < 0:
        raise BuildError(f"spec: [columns.{name}] normal_ahead must be 0 or more, not {ahead:g}")
    return ColumnSpec(
        normal_ahead=ahead,
        unit=None if unit is None else str(unit),
        data_unit=None if data_unit is None else str(data_unit),
        description=None if raw.get("description") is None else str(raw["description"]),
        minimum=low,
        maximum=high,
        kind=kind,
        aliases=dict(aliases),
        tokens=tokens,
        token_groups=groups,
    )


def _shares(raw: Any, source: str) -> tuple[float, float]:
    if not isinstance(raw, dict):
        raise BuildError(f"{source}: [split] must be a table")
    unknown = sorted(set(raw) - _SPLIT_KEYS)
    if unknown:
        raise BuildError(f"{source}: [split] has unknown keys {unknown}; allowed: {sorted(_SPLIT_KEYS)}")
    shares = []
    for key, default in (("calibration", DEFAULT_CALIBRATION_SHARE), ("test", DEFAULT_TEST_SHARE)):
        value = _number(raw.get(key, default), f"[split] {key}")
        if value is None or not 0.0 < value < 1.0:
            raise BuildError(f"{source}: [split] {key} must be a share of the rows between 0 and 1, not {value}")
        shares.append(value)
    if shares[0] + shares[1] > MAX_HELD_OUT_SHARE:
        raise BuildError(
            f"{source}: [split] calibration + test = {shares[0] + shares[1]:g} leaves too little to fit on "
            f"(at most {MAX_HELD_OUT_SHARE:g} may be held out)"
        )
    return shares[0], shares[1]


def parse_spec(text: str, source: str = "spec") -> BuildSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{source}: not valid TOML: {exc}") from exc
    unknown_sections = sorted(set(raw) - {"model", "columns", "split"})
    if unknown_sections:
        raise BuildError(f"{source}: unknown sections {unknown_sections}; allowed: [model], [columns.NAME], [split]")
    model = raw.get("model", {})
    unknown = sorted(set(model) - _MODEL_KEYS)
    if unknown:
        raise BuildError(f"{source}: [model] has unknown keys {unknown}; allowed: {sorted(_MODEL_KEYS)}")
    task = model.get("task")
    if task not in (None, "regression", "classification"):
        raise BuildError(f"{source}: [model] task must be 'regression' or 'classification', not {task!r}")
    score = model.get("score", "absolute")
    if score not in ("absolute", "relative"):
        raise BuildError(f"{source}: [model] score must be 'absolute' or 'relative', not {score!r}")
    estimator = model.get("estimator", "lightgbm")
    if estimator not in ESTIMATORS:
        raise BuildError(f"{source}: [model] estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
    proportional_to = _strings(model.get("proportional_to", []), "[model] proportional_to")
    if proportional_to and (estimator != "per_pattern" or task == "classification"):
        raise BuildError(f'{source}: [model] proportional_to needs estimator = "per_pattern" and a regression task')
    names = model.get("pattern_names", {})
    if not isinstance(names, dict) or not all(isinstance(v, str) and v.strip() for v in names.values()):
        raise BuildError(f'{source}: [model] pattern_names must map pattern keys such as "10" to names')
    floor = model.get("floor")
    if floor is True or not (floor is None or floor is False or isinstance(floor, int | float)):
        raise BuildError(f"{source}: [model] floor must be a number or false, not {floor!r}")
    if floor not in (None, False) and task == "classification":
        raise BuildError(f"{source}: [model] floor is for a regression")
    columns = raw.get("columns", {})
    if not isinstance(columns, dict):
        raise BuildError(f"{source}: [columns] must hold one table per column")
    calibration_share, test_share = _shares(raw.get("split", {}), source)
    refit = _flag(raw.get("split", {}).get("refit", False), "[split] refit")
    return BuildSpec(
        description=model.get("description"),
        target=model.get("target"),
        task=task,
        time_column=model.get("time_column"),
        time_input=_flag(model.get("time_input", False), "[model] time_input"),
        drop=_strings(model.get("drop", []), "[model] drop"),
        optional=_strings(model.get("optional", []), "[model] optional"),
        required=_strings(model.get("required", []), "[model] required"),
        score=score,
        estimator=estimator,
        proportional_to=proportional_to,
        output_unit=str(model.get("output_unit", "")),
        output_description=model.get("output_description"),
        pattern_names={str(k): str(v) for k, v in names.items()},
        floor=floor if floor is None or floor is False else float(floor),
        columns={name: _column(name, value) for name, value in columns.items()},
        calibration_share=calibration_share,
        test_share=test_share,
        refit=refit,
    )


def read_spec(path: Path | None) -> BuildSpec:
    if path is None:
        return BuildSpec()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BuildError(f"{path}: cannot read the spec: {exc.strerror}") from exc
    return parse_spec(text, str(path))
