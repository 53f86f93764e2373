"""Micro-benchmark of the prediction log: ``submit()`` cost per call and write throughput per backend.

``.venv/bin/python -m bench.store_bench [--records 50000] [--pg postgresql://...]`` prints JSON. The PostgreSQL
run uses its own schema and drops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bodies import EXAMPLE_VEHICLE
from tabserve.store.base import PredictionStore
from tabserve.store.log import CountingObserver, PredictionLog
from tabserve.store.postgres import PostgresStore
from tabserve.store.record import PredictionRecord
from tabserve.store.sqlite import SqliteStore

_INPUTS_RAW = EXAMPLE_VEHICLE
_OUTPUT = {"interval": {str(level): {"lower": 180.0, "upper": 200.0} for level in (0.5, 0.8, 0.9, 0.95)}}


def sample_records(n: int, prefix: str) -> list[PredictionRecord]:
    """``n`` realistic co2 records (the example request, ~1 KB of JSON each)."""
    inputs = {**_INPUTS_RAW, "make": "TOYOTA", "vehicle_class": "SPORT UTILITY VEHICLE SMALL"}
    now = time.time()
    return [
        PredictionRecord(f"{prefix}-{i}", 0, now, "co2", "1.0.0", _INPUTS_RAW, inputs, 190.1, _OUTPUT, [], False, 0.4)
        for i in range(n)
    ]


def submit_cost(records: list[PredictionRecord], store: PredictionStore, spill: Path) -> dict[str, float]:
    """Per-call cost of ``submit([record])`` while the writer drains to ``store`` (what a request pays)."""
    log = PredictionLog(store, spill_path=spill)
    log.start()
    costs: list[float] = []
    for record in records:
        began = time.perf_counter_ns()
        log.submit([record])
        costs.append((time.perf_counter_ns() - began) / 1000.0)
    log.close(60)
    costs.sort()
    return {
        "calls": len(costs),
        "mean_us": round(statistics.fmean(costs), 2),
        "p50_us": round(costs[len(costs) // 2], 2),
        "p99_us": round(costs[int(len(costs) * 0.99)], 2),
        "max_us": round(costs[-1], 2),
    }


def throughput(store: PredictionStore, records: list[PredictionRecord], spill: Path) -> dict[str, float]:
    """Records/s through the log (submit all, then flush) with batch 500, and of raw ``write`` batches."""
    store.migrate()
    half = len(records) // 2
    began = time.perf_counter()
    for start in range(0, half, 500):
        store.write(records[start : start + 500])
    raw = half / (time.perf_counter() - began)
    observer = CountingObserver()
    log = PredictionLog(store, spill_path=spill, batch_size=500, queue_size=len(records), observer=observer)
    log.start()
    began = time.perf_counter()
    log.submit(records[half:])
    if not log.flush(600):
        raise RuntimeError("the log did not drain in 10 minutes")
    through_log = (len(records) - half) / (time.perf_counter() - began)
    log.close(10)
    if observer.total_spilled:
        raise RuntimeError(f"{observer.total_spilled} records spilled during the benchmark")
    return {"write_batch500_records_per_s": round(raw), "log_records_per_s": round(through_log)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--pg", default="", help="PostgreSQL URL (omit to skip)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"records": args.records}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sqlite = SqliteStore(folder / "bench.sqlite")
        result["sqlite"] = throughput(sqlite, sample_records(args.records, "t"), folder / "spill-t.jsonl")
        result["submit_cost_sqlite"] = submit_cost(sample_records(args.records, "s"), sqlite, folder / "spill-s.jsonl")
        sqlite.close()
        if args.pg:
            pg = PostgresStore(args.pg, schema=f"bench_{uuid.uuid4().hex[:10]}")
            try:
                result["postgres"] = throughput(pg, sample_records(args.records, "t"), folder / "spill-pt.jsonl")
                result["submit_cost_postgres"] = submit_cost(
                    sample_records(args.records, "s"), pg, folder / "spill-ps.jsonl"
                )
            finally:
                pg.drop_schema()
                pg.close()
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
