"""``tabserve build`` on a synthetic 100,000-row × 30-column CSV: the target is < 60 s from CSV to sealed version.

    .venv/bin/python bench/build_bench.py [--rows 100000] [--task regression|classification] [--out DIR]

The table: 24 numbers (two with 10 % gaps, so there are conformal patterns), 5 categories (3 to 40 values),
one target (a noisy non-linear function of them). Runs the real CLI in a subprocess (``tabserve build``), prints
every stage line it prints, the wall time and the verdict, and writes ``bench/results/build-TASK.json`` (gitignored:
numbers from a shared machine are reported in docs/own-model.md with their load, not committed as a baseline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TARGET_SECONDS = 60.0
RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(rows: int, task: str, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    numbers = rng.normal(0.0, 1.0, (rows, 24))
    for j in range(24):
        data[f"num_{j:02d}"] = (numbers[:, j] * (j + 1) + 10.0 * j).round(4)
    sizes = (3, 5, 8, 12, 40)
    codes = [rng.integers(0, size, rows) for size in sizes]
    for j, (size, code) in enumerate(zip(sizes, codes, strict=True)):
        data[f"cat_{j}"] = np.array([f"level_{k}" for k in range(size)])[code]
    signal = (
        np.sin(numbers[:, 0]) * 3.0
        + numbers[:, 1] ** 2
        + 2.0 * numbers[:, 2] * numbers[:, 3]
        + codes[0] * 1.5
        - (codes[4] % 7) * 0.5
        + numbers[:, 4:10].sum(axis=1) * 0.3
    )
    noisy = signal + rng.normal(0.0, 1.0, rows)
    frame = pd.DataFrame(data)
    for j in (5, 6):
        frame.loc[rng.random(rows) < 0.1, f"num_{j:02d}"] = np.nan
    frame["target"] = noisy.round(4) if task == "regression" else np.digitize(noisy, np.quantile(noisy, [0.33, 0.66]))
    return frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--task", choices=["regression", "classification"], default="regression")
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    tabserve = Path(sys.executable).with_name("tabserve")
    with tempfile.TemporaryDirectory(prefix="tabserve-build-bench-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        csv = work / "synthetic.csv"
        frame = synthetic(args.rows, args.task)
        frame.to_csv(csv, index=False)
        print(f"table: {len(frame)} rows × {frame.shape[1]} columns, {csv.stat().st_size / 1e6:.1f} MB")
        started = time.perf_counter()
        command = [str(tabserve), "build", "--data", str(csv), "--target", "target", "--name", "synthetic"]
        command += ["--models-dir", str(work / "models")]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        print(done.stderr.rstrip())
        print(done.stdout.rstrip())
        if done.returncode != 0:
            print(f"build failed with exit code {done.returncode}")
            return 1
        verdict = "met" if seconds < TARGET_SECONDS else "MISSED"
        print(f"wall time {seconds:.1f} s (target < {TARGET_SECONDS:g} s): {verdict}")
        RESULTS.mkdir(exist_ok=True)
        result = {"rows": args.rows, "columns": frame.shape[1], "task": args.task, "seconds": round(seconds, 2)}
        result |= {"target_seconds": TARGET_SECONDS, "verdict": verdict}
        (RESULTS / f"build-{args.task}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    raise SystemExit(main())
