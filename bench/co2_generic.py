"""co2 through the generic build: how far ``tabserve build`` (a spec, no co2 code) is from the shipped co2 trainer.

    .venv/bin/python -m bench.co2_generic [--data ../shared/data] [--out DIR]

Writes the canonical NRCan table (``training.co2_data.load``: the three published files, sha256-checked, spellings
canonical, duplicates dropped) as one CSV, builds it with ``bench/co2_generic.toml`` (``estimator = "per_pattern"``,
proportional to the fuel figures, the model name as text, model year as the time column, ``[split] refit``: the
served model fitted on every year, the tested sibling on ≤ 2021, calibrated on 2021 by a sibling fitted on ≤ 2020),
and prints its 2022 MAE and 90 % coverage per fuel-figure pattern beside the shipped co2 version's on the same rows,
which follows the same rule (``metrics.temporal``, ``metrics.coverage_temporal_test``). Figures are reported in
docs/own-model.md; nothing here is committed as a result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tabserve.training.co2_data import CONSUMPTION, TARGET, load

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "models" / "co2" / "2.0.0" / "manifest.json"
COLUMNS = ["model_year", "make", "model", "vehicle_class", "engine_size_l", "cylinders", "transmission", "fuel_type"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="co2-generic-"))
    out.mkdir(parents=True, exist_ok=True)
    frame = load(args.data).frame
    table = out / "co2.csv"
    frame[frame["source"] == "nrcan"][[*COLUMNS, *CONSUMPTION, TARGET]].to_csv(table, index=False)
    command = [sys.executable, "-m", "tabserve.cli", "build", "--data", str(table), "--name", "co2generic"]
    command += ["--spec", str(HERE / "co2_generic.toml"), "--models-dir", str(out / "models")]
    subprocess.run(command, check=True)
    built = json.loads(next((out / "models" / "co2generic").glob("*/manifest.json")).read_text(encoding="utf-8"))
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))["metrics"]
    print(f"{'pattern':<8} {'generic MAE':>11} {'shipped MAE':>11} {'generic cov90':>13} {'shipped cov90':>13}")
    for key, entry in built["metrics"]["test"].items():
        mae = shipped["temporal"]["model"][key]["mae"]
        cover = shipped["coverage_temporal_test"][key]["0.9"]["coverage"]
        print(f"{key:<8} {entry['mae']:>11.3f} {mae:>11.3f} {entry['coverage']['0.9']:>13.3f} {cover:>13.3f}")
    print(f"built in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
