"""Micro-benchmark of the prediction log: ``submit()`` cost per call and write throughput per backend.

``.venv/bin/python -m bench.store_bench [--records 50000] [--pg postgresql://...]`` prints JSON. The PostgreSQL
run uses its own schema and drops it afterwards. ``write_cpu_us_per_record`` is this process's CPU time (user +
system, all threads) per record of the raw writes: what the log costs a server pinned to one core, where wall
time would also count fsync waits that use no CPU. Wrap timing runs in ``flock /tmp/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bodies import EXAMPLE_VEHICLE
from tabserve.store.base import PredictionStore
from tabserve.store.log import PredictionLog
from tabserve.store.observer import CountingObserver
from tabserve.store.postgres import PostgresStore
from tabserve.store.record import PredictionRecord, record_row
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
    """Records/s through the log (submit all, then flush) with its default batch (512), and of raw
    ``write_rows`` batches of 512 rows encoded beforehand."""
    store.migrate()
    half = len(records) // 2
    rows = [record_row(r) for r in records[:half]]  # encoded beforehand, as the request path does
    cpu = _cpu_s()
    began = time.perf_counter()
    for start in range(0, half, 512):
        store.write_rows(rows[start : start + 512])
    raw = half / (time.perf_counter() - began)
    cpu_us = (_cpu_s() - cpu) / half * 1e6
    observer = CountingObserver()
    log = PredictionLog(store, spill_path=spill, queue_size=len(records), observer=observer)
    log.start()
    began = time.perf_counter()
    log.submit(records[half:])
    if not log.flush(600):
        raise RuntimeError("the log did not drain in 10 minutes")
    through_log = (len(records) - half) / (time.perf_counter() - began)
    log.close(10)
    if observer.total_spilled:
        raise RuntimeError(f"{observer.total_spilled} records spilled during the benchmark")
    return {
        "write_batch512_records_per_s": round(raw),
        "write_cpu_us_per_record": round(cpu_us, 2),
        "log_records_per_s": round(through_log),
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
