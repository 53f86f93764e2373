"""``export_log``: the prediction log joined with feedback, written in each model's TRAINING layout.

co2 -> the official NRCan 2015+ CSV columns (what ``tabserve train co2 --extra FILE`` reads); penguins ->
the palmerpenguins CSV columns. The values are the logged *normalised* inputs (canonical units and
spellings) and the target is the feedback's actual answer (empty when unlabelled). Another model gets a
generic layout: one column per input, then ``prediction`` and ``actual``. Parquet needs ``pyarrow``
(the ``train`` extra), imported only here and only for parquet.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tabserve.errors import StoreError
from tabserve.features.text import normalise_key
from tabserve.features.units import KM_PER_MILE, LITRES_PER_IMP_GALLON
from tabserve.store.base import PredictionStore

Kind = Literal["int", "float", "str"]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    kind: Kind
    value: Callable[[Row], Any]
    """From an exported row (``PredictionStore.export``) to the cell value (None = empty / NA)."""


@dataclass(frozen=True, slots=True)
class Layout:
    columns: tuple[Column, ...]
    missing: str
    """How a missing value is written in CSV (``""`` for NRCan, ``"NA"`` for palmerpenguins)."""


def _input(name: str) -> Callable[[Row], Any]:
    return lambda row: row["inputs"].get(name)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool | str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _actual(row: Row) -> Any:
    return row.get("actual")


def _combined_mpg(row: Row) -> float | None:
    litres = _number(row["inputs"].get("fuel_consumption_comb_l_per_100km"))
    if litres is None or litres <= 0:
        return None
    return float(round(100.0 * LITRES_PER_IMP_GALLON / (KM_PER_MILE * litres)))  # NRCan: imperial mpg, integer


def _spelled(name: str, spellings: dict[str, str]) -> Callable[[Row], Any]:
    def value(row: Row) -> Any:
        raw = row["inputs"].get(name)
        if raw is None:
            return None
        return spellings.get(normalise_key(str(raw)), str(raw))

    return value


CO2_LAYOUT = Layout(
    columns=(
        Column("Model year", "int", _input("model_year")),
        Column("Make", "str", _input("make")),
        Column("Model", "str", _input("model")),
        Column("Vehicle class", "str", _input("vehicle_class")),
        Column("Engine size (L)", "float", _input("engine_size_l")),
        Column("Cylinders", "int", _input("cylinders")),
        Column("Transmission", "str", _input("transmission")),
        Column("Fuel type", "str", _input("fuel_type")),
        Column("City (L/100 km)", "float", _input("fuel_consumption_city_l_per_100km")),
        Column("Highway (L/100 km)", "float", _input("fuel_consumption_hwy_l_per_100km")),
        Column("Combined (L/100 km)", "float", _input("fuel_consumption_comb_l_per_100km")),
        Column("Combined (mpg)", "int", _combined_mpg),
        Column("CO2 emissions (g/km)", "float", _actual),
        Column("CO2 rating", "int", lambda _row: None),
        Column("Smog rating", "int", lambda _row: None),
    ),
    missing="",
)
PENGUIN_ISLANDS = {"BISCOE": "Biscoe", "DREAM": "Dream", "TORGERSEN": "Torgersen"}
PENGUIN_SEXES = {"MALE": "male", "FEMALE": "female"}
PENGUINS_LAYOUT = Layout(
    columns=(
        Column("species", "str", _actual),
        Column("island", "str", _spelled("island", PENGUIN_ISLANDS)),
        Column("bill_length_mm", "float", _input("bill_length_mm")),
        Column("bill_depth_mm", "float", _input("bill_depth_mm")),
        Column("flipper_length_mm", "int", _input("flipper_length_mm")),
        Column("body_mass_g", "int", _input("body_mass_g")),
        Column("sex", "str", _spelled("sex", PENGUIN_SEXES)),
        Column("year", "int", _input("year")),
    ),
    missing="NA",
)
LAYOUTS: dict[str, Layout] = {"co2": CO2_LAYOUT, "penguins": PENGUINS_LAYOUT}


def generic_layout(input_names: Iterable[str]) -> Layout:
    """One column per input (as logged), then the prediction and the feedback's actual answer."""
    columns = [Column("request_id", "str", lambda row: row["request_id"]), Column("index", "int", lambda r: r["index"])]
    columns.append(Column("time", "float", lambda row: row["time"]))
    columns.append(Column("model_version", "str", lambda row: row["model_version"]))
    columns += [Column(name, "str", _input(name)) for name in input_names]
    columns += [Column("prediction", "str", lambda row: row["prediction"]), Column("actual", "str", _actual)]
    return Layout(columns=tuple(columns), missing="")


def _cell(value: Any, kind: Kind) -> Any:
    """The typed cell: int/float/str or None. A number that is not whole stays a float in an int column."""
    if value is None:
        return None
    if kind == "str":
        return value if isinstance(value, str) else _format_number(value)
    number = _number(value)
    if number is None:
        return None
    if kind == "int" and number.is_integer():
        return int(number)
    return number


def _format_number(value: Any) -> str:
    number = _number(value)
    if number is None:
        return str(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def _csv_text(value: Any, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: 2.5, 7.0
    return str(value)


def parse_since(text: str | None, *, now: float | None = None) -> float | None:
    """``--since`` for the CLI: ``7d`` / ``12h`` (ago), an ISO-8601 date or datetime (UTC when naive),
    or unix seconds. Empty/None = everything."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    reference = time.time() if now is None else now
    units = {"d": 86_400.0, "h": 3_600.0, "m": 60.0}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return reference - float(value[:-1]) * units[value[-1]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"--since {text!r}: use 7d, 12h, 2026-01-31, 2026-01-31T12:00:00Z or unix seconds") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def export_log(
    store: PredictionStore,
    model: str,
    since: float | None,
    labelled_only: bool,
    fmt: Literal["csv", "parquet"],
    out: Path,
) -> int:
    """Write ``model``'s logged rows (oldest first) with their feedback to ``out``; returns the row count."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown export format {fmt!r} (csv or parquet)")
    layout = LAYOUTS.get(model)
    rows: Iterator[Row] = store.export(since, model, labelled_only)
    if layout is None:
        buffered = list(rows)  # the generic layout needs every input name first
        names = sorted({name for row in buffered for name in row["inputs"]})
        layout = generic_layout(names)
        rows = iter(buffered)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        return _write_csv(layout, rows, out)
    return _write_parquet(layout, rows, out)


def _write_csv(layout: Layout, rows: Iterator[Row], out: Path) -> int:
    count = 0
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([column.header for column in layout.columns])
        for row in rows:
            cells = [_cell(column.value(row), column.kind) for column in layout.columns]
            writer.writerow([_csv_text(cell, layout.missing) for cell in cells])
            count += 1
    tmp.replace(out)
    return count


_ARROW_TYPES = {"int": "int64", "float": "float64", "str": "string"}


def _write_parquet(layout: Layout, rows: Iterator[Row], out: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise StoreError(
            "parquet export needs pyarrow, which is in the train extra: pip install 'tabserve[train]' "
            "(or export with --format csv)"
        ) from exc
    data: dict[str, list[Any]] = {column.header: [] for column in layout.columns}
    count = 0
    for row in rows:
        for column in layout.columns:
            cell = _cell(column.value(row), column.kind)
            if column.kind == "int" and isinstance(cell, float):
                cell = round(cell)  # an int column keeps its type; a fractional value here is an input error
            data[column.header].append(cell)
        count += 1
    schema = pa.schema([(column.header, getattr(pa, _ARROW_TYPES[column.kind])()) for column in layout.columns])
    table = pa.table(data, schema=schema)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return count
