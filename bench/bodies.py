"""The request bodies every server gets: the co2 example vehicle, a 1,000-vehicle batch, and their V2 forms.

The batch rows are real vehicles read from the shared data (``fuel_consumption_ratings_2015_2020.csv``,
every k-th row, so the batch is deterministic and varied); bodies are written under ``bench/.work/`` and never
committed. MLServer gets the same vehicles as a V2 *pandas codec* request: one input per column (strings as
``BYTES`` with ``content_type: str``), request ``content_type: pd``, which its scikit-learn runtime decodes
into the DataFrame the pipeline was fitted on.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from tabserve.training.co2_data import OFFICIAL_TO_INPUT

REPO = Path(__file__).resolve().parents[1]
VEHICLE_FILE = "fuel_consumption_ratings_2015_2020.csv"

EXAMPLE_VEHICLE: dict[str, Any] = {
    "make": "Toyota",
    "model": "RAV4 AWD",
    "vehicle_class": "SUV: Small",
    "engine_size_l": 2.5,
    "cylinders": 4,
    "transmission": "AS8",
    "fuel_type": "X",
    "model_year": 2020,
    "fuel_consumption_city_l_per_100km": 8.9,
    "fuel_consumption_hwy_l_per_100km": 7.0,
    "fuel_consumption_comb_l_per_100km": 8.1,
}

STRING_FIELDS = ("make", "model", "vehicle_class", "transmission", "fuel_type")
INT_FIELDS = ("cylinders", "model_year")
FLOAT_FIELDS = (
    "engine_size_l",
    "fuel_consumption_city_l_per_100km",
    "fuel_consumption_hwy_l_per_100km",
    "fuel_consumption_comb_l_per_100km",
)
FIELDS = STRING_FIELDS + INT_FIELDS + FLOAT_FIELDS

TARGET_COLUMN = "CO2 emissions (g/km)"
# official 2015+ header -> request field (the training code's own mapping)
CSV_COLUMNS = {k: v for k, v in OFFICIAL_TO_INPUT.items() if k != TARGET_COLUMN}


def data_dir() -> Path:
    """The read-only shared data: ``TABSERVE_TEST_DATA_DIR`` if set, else ``<repo>/../shared/data``."""
    override = os.environ.get("TABSERVE_TEST_DATA_DIR")
    return Path(override) if override else REPO.parent / "shared" / "data"


def typed_row(raw: dict[str, str]) -> dict[str, Any]:
    """One CSV row (official 2015+ header) as a request instance with typed values."""
    out: dict[str, Any] = {}
    for column, name in CSV_COLUMNS.items():
        value = raw[column].strip()
        if name in INT_FIELDS:
            out[name] = int(value)
        elif name in FLOAT_FIELDS:
            out[name] = float(value)
        else:
            out[name] = value
    return out


def read_vehicles(path: Path) -> list[tuple[dict[str, Any], float]]:
    """Every vehicle of the official 2015+ file as (instance, CO2 g/km)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [(typed_row(raw), float(raw[TARGET_COLUMN])) for raw in csv.DictReader(fh)]


def batch_vehicles(n: int, path: Path | None = None) -> list[dict[str, Any]]:
    """``n`` vehicles spread evenly over the file (deterministic)."""
    rows = [instance for instance, _ in read_vehicles(path or data_dir() / VEHICLE_FILE)]
    if n > len(rows):
        raise ValueError(f"asked for {n} vehicles, the file has {len(rows)}")
    return [rows[i * len(rows) // n] for i in range(n)]


def v2_pandas_request(instances: list[dict[str, Any]]) -> dict[str, Any]:
    """A V2 inference request encoded with MLServer's pandas codec (one input per column)."""
    inputs: list[dict[str, Any]] = []
    for name in FIELDS:
        values = [instance[name] for instance in instances]
        entry: dict[str, Any] = {"name": name, "shape": [len(values)], "data": values}
        if name in STRING_FIELDS:
            entry["datatype"] = "BYTES"
            entry["parameters"] = {"content_type": "str"}
        elif name in INT_FIELDS:
            entry["datatype"] = "INT64"
        else:
            entry["datatype"] = "FP64"
        inputs.append(entry)
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def write_bodies(out_dir: Path, batch_size: int = 1000) -> dict[str, Path]:
    """Write every body file; returns ``{"single", "batch", "v2_single", "v2_batch"} -> path``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = batch_vehicles(batch_size)
    bodies: dict[str, Any] = {
        "single": EXAMPLE_VEHICLE,
        "batch": {"instances": batch},
        "v2_single": v2_pandas_request([EXAMPLE_VEHICLE]),
        "v2_batch": v2_pandas_request(batch),
    }
    paths: dict[str, Path] = {}
    for key, body in bodies.items():
        path = out_dir / f"{key}.json"
        path.write_text(json.dumps(body, separators=(",", ":")), encoding="utf-8")
        paths[key] = path
    return paths
