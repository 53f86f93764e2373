"""co2 training data: reading the NRCan files, canonical spellings, de-duplication, the table the build reads.

Owns everything that turns the raw CSVs (1995–2014 5-cycle merge, official 2015–2020 and 2021–2022 files,
each checked against its published sha256, and an optional ``--extra`` file in the official 2015+ layout)
into one tidy frame with canonical values:

- make / transmission / fuel type: ``normalise_key`` spelling (case-insensitive, ``Mercedes-Benz`` and
  ``MERCEDES-BENZ`` are one make);
- vehicle class: the official (2015+) scheme, normalised; the pre-2015 labels that differ become aliases;
  the pre-2013 unsplit ``SUV`` stays its own category (it cannot be split honestly); ``UL`` (one row, no
  meaning published) becomes ``None`` = the unknown code;
- exact duplicates after canonicalisation are dropped.

``write_table`` writes the result as the one CSV that ``training/specs/co2.toml`` and the generic build read
(``tabserve train co2``); everything else about the model is in that spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tabserve.artifacts import sha256_file
from tabserve.features.text import normalise_key

OLD_FILE = "fuel_consumption_ratings_1995_2014_5cycle.csv"
NEW_FILE = "fuel_consumption_ratings_2015_2020.csv"
NEWEST_FILE = "fuel_consumption_ratings_2021_2022.csv"
DATA_FILES = (OLD_FILE, NEW_FILE, NEWEST_FILE)
DATA_SHA256 = {
    # as published in ../shared/data/README.md; a file with other bytes is refused (not silently trained on)
    OLD_FILE: "a7dc78f5c802ea17b11ad58c6fe5a6911af1e98fa481d912fd8f5974350c1047",
    NEW_FILE: "cf75a59a028293d22dcb7535821d71e052a2a1027f4058fa1ed4846452dfaa84",
    NEWEST_FILE: "61bbe4c535e6a6534203e6a209f8c9f09a9d9f2d506fb69e1ed67dff3ab35488",
}

OFFICIAL_COLUMNS = (
    "Model year",
    "Make",
    "Model",
    "Vehicle class",
    "Engine size (L)",
    "Cylinders",
    "Transmission",
    "Fuel type",
    "City (L/100 km)",
    "Highway (L/100 km)",
    "Combined (L/100 km)",
    "Combined (mpg)",
    "CO2 emissions (g/km)",
    "CO2 rating",
    "Smog rating",
)
OFFICIAL_TO_INPUT = {
    # official 2015+ header -> request field (and the target)
    "Model year": "model_year",
    "Make": "make",
    "Model": "model",
    "Vehicle class": "vehicle_class",
    "Engine size (L)": "engine_size_l",
    "Cylinders": "cylinders",
    "Transmission": "transmission",
    "Fuel type": "fuel_type",
    "City (L/100 km)": "fuel_consumption_city_l_per_100km",
    "Highway (L/100 km)": "fuel_consumption_hwy_l_per_100km",
    "Combined (L/100 km)": "fuel_consumption_comb_l_per_100km",
    "CO2 emissions (g/km)": "co2",
}
CITY = "fuel_consumption_city_l_per_100km"
HWY = "fuel_consumption_hwy_l_per_100km"
COMB = "fuel_consumption_comb_l_per_100km"
CONSUMPTION = (CITY, HWY, COMB)
TARGET = "co2"

FUEL_ALIASES: dict[str, str] = {
    "REGULAR": "X",
    "REGULAR GASOLINE": "X",
    "REGULAR GAS": "X",
    "GASOLINE": "X",
    "GAS": "X",
    "PETROL": "X",
    "UNLEADED": "X",
    "PREMIUM": "Z",
    "PREMIUM GASOLINE": "Z",
    "PREMIUM GAS": "Z",
    "PREMIUM UNLEADED": "Z",
    "DIESEL": "D",
    "ETHANOL": "E",
    "E85": "E",
    "ETHANOL E85": "E",
    "FLEX FUEL": "E",
    "NATURAL GAS": "N",
    "CNG": "N",
    "COMPRESSED NATURAL GAS": "N",
}
LEGACY_SUV = "SPORT UTILITY VEHICLE"
CLASS_ALIASES: dict[str, str] = {
    "SUV SMALL": "SPORT UTILITY VEHICLE SMALL",
    "SUV STANDARD": "SPORT UTILITY VEHICLE STANDARD",
    "SMALL SUV": "SPORT UTILITY VEHICLE SMALL",
    "STANDARD SUV": "SPORT UTILITY VEHICLE STANDARD",
    "SUV": LEGACY_SUV,
    "MIDSIZE": "MID SIZE",
    "FULLSIZE": "FULL SIZE",
    "TWO SEATER": "TWO SEATER",
    "2 SEATER": "TWO SEATER",
}
UNKNOWN_CLASSES = frozenset({"UL"})


@dataclass(frozen=True, slots=True)
class LoadedData:
    frame: pd.DataFrame
    """Canonical rows: the input columns, ``co2``, ``source``, ``model_key`` (the normalised model name)."""
    file_rows: dict[Path, int]
    """Each file read -> its data rows (before cleaning)."""
    duplicates_dropped: int
    unknown_class_rows: int


def canonical_class(raw: str) -> str | None:
    key = normalise_key(raw)
    if key in UNKNOWN_CLASSES or not key:
        return None
    return CLASS_ALIASES.get(key, key)


def canonical_fuel(raw: str) -> str:
    key = normalise_key(raw)
    return FUEL_ALIASES.get(key, key)


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if len(frame.columns) != len(OFFICIAL_COLUMNS):
        raise ValueError(f"{path}: expected {len(OFFICIAL_COLUMNS)} columns, found {len(frame.columns)}")
    frame.columns = list(OFFICIAL_COLUMNS)
    return frame


def _number(series: pd.Series) -> pd.Series:
    cleaned = series.str.strip()
    cleaned = cleaned.where(~cleaned.str.lower().isin(["", "n/a", "na"]))
    return pd.to_numeric(cleaned, errors="raise").astype(np.float64)


def _canonical(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "model_year": _number(raw["Model year"]),
            "make": raw["Make"].map(normalise_key),
            "model": raw["Model"].str.strip(),
            "vehicle_class": raw["Vehicle class"].map(canonical_class),
            "engine_size_l": _number(raw["Engine size (L)"]),
            "cylinders": _number(raw["Cylinders"]),
            "transmission": raw["Transmission"].map(normalise_key),
            "fuel_type": raw["Fuel type"].map(canonical_fuel),
            CITY: _number(raw["City (L/100 km)"]),
            HWY: _number(raw["Highway (L/100 km)"]),
            COMB: _number(raw["Combined (L/100 km)"]),
            TARGET: _number(raw["CO2 emissions (g/km)"]),
        }
    )
    out["source"] = source
    return out


def load(data_dir: Path, extra: Path | None = None) -> LoadedData:
    """All rows of the three NRCan files (+ the extra file), canonical and de-duplicated."""
    parts: list[pd.DataFrame] = []
    file_rows: dict[Path, int] = {}
    for name in DATA_FILES:
        path = data_dir / name
        digest = sha256_file(path)
        if digest != DATA_SHA256[name]:
            raise ValueError(f"{path}: sha256 {digest} is not the published {DATA_SHA256[name]}")
        raw = _read(path)
        file_rows[path] = len(raw)
        parts.append(_canonical(raw, "nrcan"))
    if extra is not None:
        raw = _read(extra)
        file_rows[extra] = len(raw)
        parts.append(_canonical(raw, "extra"))
    frame = pd.concat(parts, ignore_index=True)
    bad = frame[TARGET].isna() | frame["model_year"].isna() | frame["engine_size_l"].isna()
    if bool(bad.any()):
        raise ValueError(f"{int(bad.sum())} rows lack CO2, model year or engine size")
    unknown_class_rows = int(frame["vehicle_class"].isna().sum())
    frame["model_key"] = frame["model"].map(normalise_key)
    key_columns = [c for c in frame.columns if c not in ("model", "source")]
    before = len(frame)
    frame = frame.drop_duplicates(subset=key_columns, keep="first").reset_index(drop=True)
    duplicates = before - len(frame)
    return LoadedData(
        frame=frame, file_rows=file_rows, duplicates_dropped=duplicates, unknown_class_rows=unknown_class_rows
    )


TABLE_COLUMNS = (
    "model_year",
    "make",
    "model",
    "vehicle_class",
    "engine_size_l",
    "cylinders",
    "transmission",
    "fuel_type",
    *CONSUMPTION,
)
TABLE_TARGET = "co2_emissions"
"""The target's name in the table ``tabserve train co2`` builds: the served output's name."""


def write_table(data_dir: Path, extra: Path | None, out: Path) -> list[tuple[Path, int]]:
    """The canonical table as one CSV for the generic build (``training/specs/co2.toml``): every row ``load``
    keeps, those whose CO₂ does not fit their fuel figures too (serving meets them). Returns the files read, with
    their rows."""
    data = load(data_dir, extra)
    table = data.frame[[*TABLE_COLUMNS, TARGET]].rename(columns={TARGET: TABLE_TARGET})
    table = table.astype({"model_year": "int64", "cylinders": "int64"})  # counts: served as integers
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return list(data.file_rows.items())
