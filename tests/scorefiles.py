"""Input files for the batch scorer's tests: real vehicles from the shared NRCan data, varied the way files are.

Every optional fuel figure is left empty in some rows (so several conformal patterns occur), some engine sizes
come in cc through a unit column, some makes are unseen, and ``bad`` rows carry invalid cells of every kind.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

OFFICIAL = {
    "Model year": "model_year",
    "Make": "make",
    "Model": "model",
    "Vehicle class": "vehicle_class",
    "Engine size (L)": "engine_size_cc",
    "Cylinders": "cylinders",
    "Transmission": "transmission",
    "Fuel type": "fuel_type",
    "City (L/100 km)": "fuel_consumption_city_l_per_100km",
    "Highway (L/100 km)": "fuel_consumption_hwy_l_per_100km",
    "Combined (L/100 km)": "fuel_consumption_comb_l_per_100km",
}
BAD_CELLS = [
    ("engine_size_cc", "abc"),
    ("cylinders", "-3"),
    ("make", ""),
    ("fuel_consumption_comb_l_per_100km", "1e400"),
    ("engine_size_cc", "0"),
    ("model_year", "2020.5"),
    ("cylinders", "99"),
]


def co2_rows(data: Path, n: int, *, bad: int = 0, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` rows as CSV text cells (None = empty), ``bad`` of them invalid (at known ``id``s)."""
    rng = random.Random(seed)
    with (data / "fuel_consumption_ratings_2015_2020.csv").open(newline="", encoding="utf-8") as fh:
        source = list(csv.DictReader(fh))
    rows: list[dict[str, Any]] = []
    for i in range(n):
        raw = source[rng.randrange(len(source))]
        row: dict[str, Any] = {"id": f"v{i}"}
        for official, name in OFFICIAL.items():
            value: str | None = raw[official].strip()
            if name == "engine_size_cc":
                value = str(round(float(raw[official]) * 1000))
            if name.startswith("fuel_consumption") and rng.random() < 0.3:
                value = None
            row[name] = value
        if rng.random() < 0.02:
            row["make"] = "Zorblax"  # an unseen make: served with a warning
        rows.append(row)
    for k in range(bad):
        column, cell = BAD_CELLS[k % len(BAD_CELLS)]
        rows[(k * 37 + 11) % n][column] = cell
    return rows


def write(rows: list[dict[str, Any]], path: Path) -> Path:
    names = list(rows[0])
    table = pa.table({name: pa.array([r[name] for r in rows], pa.string()) for name in names})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path
