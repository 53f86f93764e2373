"""The batch scorer's point: rows/s per core for both co2 patterns, 1 and 2 workers side by side, and where a
row's time goes.

    .venv/bin/python -m bench.score_bench [--rows 1000000] [--repeats 1] [--version V] [--out bench/results/score.json]

For each pattern (fuel consumption given, specs-only) a Parquet file of real vehicles (``bench.score_data``) is
scored by ``tabserve score`` as a user runs it (a fresh process, model verified, output written), with
``--workers 1`` then ``--workers 2``, interleaved so both see the same machine; rows/s = rows / wall seconds,
per core = rows/s / workers. The same runs on a 10,000-row file measure the start-up (process, imports, model
verification, worker spawn), so "steady" = (rows - 10,000) / (seconds - start-up seconds) / workers; scaling =
steady rows/s at 2 workers / at 1 (1.8 = 0.8 per added core). Then one 65,536-row batch of each file is timed stage
by stage in this process (Parquet read, Arrow to request values, validate, encode, ONNX Runtime alone, confidence,
answer columns, the whole score call, Parquet write), ns per row: what a row costs against the 1,000 ns a row that
1,000,000 rows/s per core allows. Each run's peak RSS (every process of it, sampled every 0.1 s) is reported beside
its speed: `--rows 10000000` checks the 10M-row file against 1 GB. Prints the table and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work" / "score"
TARGETS = {"fuel": 1_000_000, "specs": 200_000}
SCALING_TARGET = 1.8
MEMORY_TARGET_MB = 1024
"""A 10,000,000-row file scores within 1 GB RSS (``--rows 10000000``)."""
RSS_POLL_S = 0.1
RUN_TIMEOUT_S = 1800
STAGE_ROWS = 65_536
SMALL_ROWS = 10_000
"""A run on this many rows is (nearly) all start-up: process, imports, model verification, worker spawn."""


def data_file(pattern: str, rows: int) -> Path:
    from bench.score_data import write

    path = WORK / f"{pattern}-{rows}.parquet"
    if not path.exists():
        write(path, rows, specs_only=pattern == "specs")
    return path


def run_cli(path: Path, workers: int, version: str | None = None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``tabserve score`` run (process start included, as a user sees it) and its peak RSS in
    MiB, sampled every ``RSS_POLL_S``: ``tree`` (the sum over the process, its fork server and workers: shared
    pages counted once per process, an upper bound), ``pss`` (the same sum with a shared page counted once in
    all) and ``max_process``."""
    from bench.procs import pss_mb, rss_mb

    with tempfile.TemporaryDirectory(prefix="tabserve-score-bench-") as tmp:
        out = Path(tmp) / "out.parquet"
        cmd = [str(REPO / ".venv" / "bin" / "tabserve"), "score", str(path), str(out), "--model", "co2"]
        cmd += ["--workers", str(workers), *(["--version", version] if version else [])]
        peak = {"tree": 0.0, "pss": 0.0, "max_process": 0.0}
        started = time.perf_counter()
        with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, text=True) as proc:
            while proc.poll() is None and time.perf_counter() - started < RUN_TIMEOUT_S:
                sample = {**rss_mb(proc.pid), "pss": pss_mb(proc.pid)}
                peak = {key: max(peak[key], sample[key]) for key in peak}
                time.sleep(RSS_POLL_S)
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate()
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {stderr[-500:]}")
    return seconds, peak


def stages(path: Path, version: str | None = None) -> dict[str, float]:
    """ns per row of each stage for one batch of the file, in this process (best of 5)."""
    import pyarrow.parquet as pq

    from tabserve.features.batch import ColumnRows
    from tabserve.score.answers import answer_columns
    from tabserve.score.scorer import BatchScorer, ModelRef
    from tabserve.score.writer import BatchWriter

    table = pq.read_table(path).slice(0, STAGE_ROWS)
    batch = table.to_batches(max_chunksize=STAGE_ROWS)[0]
    scorer = BatchScorer(ModelRef("co2", version, REPO / "models"), None, batch.schema)
    model, rows = scorer.model, batch.num_rows
    timings: dict[str, list[float]] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        started = time.perf_counter()
        out = fn(*args)
        timings.setdefault(name, []).append((time.perf_counter() - started) / rows * 1e9)
        return out

    encoder, confidence = model.runtime.encoder, model.confidence

    def read() -> Any:
        return next(pq.ParquetFile(path).iter_batches(batch_size=STAGE_ROWS))

    def write(output: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="tabserve-score-bench-") as tmp:
            writer = BatchWriter(Path(tmp) / "out.parquet", scorer.output_schema)
            writer.write(output)
            writer.close()

    for _ in range(5):
        timed("parquet_read", read)
        columns = timed("arrow_to_values", scorer._columns, batch)
        checked = timed("validate", model.validator.many, ColumnRows(columns, rows))
        matrix = timed("encode", encoder.encode_columns, checked.columns, rows, checked.arrays, checked.complete)
        raw = timed("onnx_runtime", model.runtime.run, matrix)
        args = (raw, checked.patterns, scorer.level, checked.out_of_distribution, checked.runs)
        answers = timed("confidence", confidence.batch, *args)
        timed("answer_columns", answer_columns, model, answers)
        scored = timed("whole_score_call", scorer.score, batch, 0)
        timed("parquet_write", write, scored.output)
    return {name: round(min(values), 1) for name, values in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per (pattern, workers); the median is kept")
    parser.add_argument("--version", help="the co2 version to score with (default: the newest, as served)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "score.json")
    args = parser.parse_args(argv)
    files = {pattern: data_file(pattern, args.rows) for pattern in TARGETS}
    small = {pattern: data_file(pattern, SMALL_ROWS) for pattern in TARGETS}
    seconds: dict[tuple[str, int], list[float]] = {}
    fixed: dict[tuple[str, int], list[float]] = {}
    peaks: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.repeats):
        for pattern, path in files.items():
            for workers in (1, 2):  # side by side: both worker counts on the same machine state
                wall, peak = run_cli(path, workers, args.version)
                seconds.setdefault((pattern, workers), []).append(wall)
                peaks.setdefault((pattern, workers), []).append(peak)
                fixed.setdefault((pattern, workers), []).append(run_cli(small[pattern], workers, args.version)[0])
    result: dict[str, Any] = {
        "rows": args.rows,
        "co2_version": args.version or "newest",
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "command": "python -m bench.score_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "patterns": {},
    }
    lines = [
        "| pattern | workers | seconds | rows/s | rows/s per core | start-up s | steady rows/s per core | "
        "target per core | scaling (2 vs 1, steady) | peak MiB: RSS summed / PSS summed / largest RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pattern, path in files.items():
        wall = {w: statistics.median(seconds[pattern, w]) for w in (1, 2)}
        start = {w: statistics.median(fixed[pattern, w]) for w in (1, 2)}
        steady = {w: (args.rows - SMALL_ROWS) / max(1e-9, wall[w] - start[w]) / w for w in (1, 2)}
        scaling = steady[2] * 2 / steady[1]
        keys = ("tree", "pss", "max_process")
        peak = {w: {key: max(p[key] for p in peaks[pattern, w]) for key in keys} for w in (1, 2)}
        result["patterns"][pattern] = {
            "seconds": {str(w): seconds[pattern, w] for w in (1, 2)},
            "startup_seconds": {str(w): fixed[pattern, w] for w in (1, 2)},
            "rows_per_s": {str(w): round(args.rows / wall[w]) for w in (1, 2)},
            "rows_per_s_per_core": {str(w): round(args.rows / wall[w] / w) for w in (1, 2)},
            "steady_rows_per_s_per_core": {str(w): round(steady[w]) for w in (1, 2)},
            "target_per_core": TARGETS[pattern],
            "scaling_steady": round(scaling, 3),
            "scaling_wall": round(wall[1] / wall[2], 3),
            "scaling_target": SCALING_TARGET,
            "peak_rss_mib": {str(w): peak[w] for w in (1, 2)},
            "memory_target_mib": MEMORY_TARGET_MB,
            "stages_ns_per_row": stages(path, args.version),
        }
        for w in (1, 2):
            note = "" if w == 1 else f"{scaling:.2f}x (wall {wall[1] / wall[2]:.2f}x; target {SCALING_TARGET}x)"
            lines.append(
                f"| {pattern} | {w} | {wall[w]:.2f} | {args.rows / wall[w]:,.0f} | {args.rows / wall[w] / w:,.0f} | "
                f"{start[w]:.2f} | {steady[w]:,.0f} | {TARGETS[pattern]:,} | {note} | "
                f"{peak[w]['tree']:,.0f} / {peak[w]['pss']:,.0f} / {peak[w]['max_process']:,.0f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))
    for pattern, figures in result["patterns"].items():
        print(f"{pattern}: ns per row by stage (one {STAGE_ROWS:,}-row batch): {figures['stages_ns_per_row']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
