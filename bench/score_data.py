"""Input files for the batch scorer's bench and tests: real vehicles (the 2015-2020 NRCan file) under the co2
model's input names, repeated to any length, written in chunks (a 10-million-row file never sits in memory).

``--specs-only`` leaves out the fuel consumption figures; ``--units`` gives engine size in cc and combined
consumption in US mpg (unit columns, as the API accepts them). Written under bench/.work/ or anywhere; never
committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.bodies import data_dir, read_vehicles

FUEL = ("fuel_consumption_city_l_per_100km", "fuel_consumption_hwy_l_per_100km", "fuel_consumption_comb_l_per_100km")
CHUNK_ROWS = 262_144


def base_table(*, specs_only: bool = False, units: bool = False) -> pa.Table:
    rows = [instance for instance, _ in read_vehicles(data_dir() / "fuel_consumption_ratings_2015_2020.csv")]
    table = pa.Table.from_pylist(rows)
    if specs_only:
        table = table.drop_columns(list(FUEL))
    if units:
        cc = pa.array([round(v * 1000.0) for v in table.column("engine_size_l").to_pylist()], pa.float64())
        table = table.drop_columns(["engine_size_l"]).append_column("engine_size_cc", cc)
        if not specs_only:
            comb = table.column("fuel_consumption_comb_l_per_100km").to_pylist()
            mpg = pa.array([round(235.214583 / v, 1) for v in comb], pa.float64())
            table = table.drop_columns(["fuel_consumption_comb_l_per_100km"]).append_column(
                "fuel_consumption_comb_mpg", mpg
            )
    return table


def write(path: Path, rows: int, *, specs_only: bool = False, units: bool = False) -> Path:
    base = base_table(specs_only=specs_only, units=units)
    chunk = pa.concat_tables([base] * (CHUNK_ROWS // base.num_rows + 1)).slice(0, CHUNK_ROWS).combine_chunks()
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet = path.suffix == ".parquet"
    writer: pq.ParquetWriter | pacsv.CSVWriter
    writer = pq.ParquetWriter(path, chunk.schema) if parquet else pacsv.CSVWriter(path, chunk.schema)
    with writer:
        left = rows
        while left > 0:
            part = chunk.slice(0, min(left, CHUNK_ROWS))
            writer.write_table(part)
            left -= part.num_rows
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--specs-only", action="store_true")
    parser.add_argument("--units", action="store_true")
    args = parser.parse_args()
    write(args.path, args.rows, specs_only=args.specs_only, units=args.units)


if __name__ == "__main__":
    main()
