"""What one coverage report costs: ``CoverageMonitor.compute`` over N answers with feedback in a SQLite log.

    .venv/bin/python -m bench.coverage_read [--rows 50000]

Prints ms per report and µs per row read (the work a worker thread does every TABSERVE_COVERAGE_REFRESH_S).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tabserve.observability.coverage import CoverageMonitor
from tabserve.store import PredictionRecord
from tabserve.store.sqlite import SqliteStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    store = SqliteStore(Path(tempfile.mkdtemp(prefix="tabserve-coverage-")) / "log.sqlite")
    patterns = ("111", "000", "001")
    records = [
        PredictionRecord(
            f"r{i}",
            0,
            time.time(),
            "co2",
            "1.0.0",
            {},
            {},
            200.0,
            {"interval": {"level": 0.9, "lower": 190.0, "upper": 210.0}, "pattern": patterns[i % 3]},
            [],
            False,
            1.0,
        )
        for i in range(args.rows)
    ]
    for start in range(0, args.rows, 5000):
        store.write(records[start : start + 5000])
    for i in range(args.rows):
        store.attach_feedback(f"r{i}", None, 300.0 if i % 10 == 0 else 200.0)
    monitor = CoverageMonitor(store.labelled_window, window=2000, max_rows=args.rows)
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        report = monitor.compute("co2", {})
        timings.append(time.perf_counter() - t0)
    best = min(timings)
    cells = [(c["pattern"], c["samples"], c["covered"]) for c in report["cells"]]
    print(json.dumps({"rows": args.rows, "ms": round(best * 1000, 1), "us_per_row": round(best / args.rows * 1e6, 2),
                      "cells": cells}))  # fmt: skip
    store.close()


if __name__ == "__main__":
    main()
