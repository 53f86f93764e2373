"""co2 conformal backtest: how the shipped calibration scheme would have covered earlier, fully known years.

The shipped artifact is trained on model years ≤ 2017, calibrated on 2018 and tested on 2019–2020 (see
``co2_data.temporal_split``). This module replays that exact scheme at earlier origins, using only years before
the test split, to show how much the realised coverage of split-conformal intervals moves from one pair of
test years to the next under temporal drift — the noise floor against which the 0.88–0.92 target is judged.

* specs only: origin T = train ≤ T; calibrate on T + 1 scored by siblings trained ≤ T − 1 and ≤ T − 2
  (horizon-matched, as shipped); "test" on T + 2 and T + 3 with the model trained ≤ T. Origins 2012–2015
  end by 2018, so they never touch 2019–2020; T = 2017 is the shipped artifact's own figure.
* with fuel consumption figures: the physics term needs model years of the 2016+ factor regime in training,
  so the scheme cannot be replayed before 2017. Instead: the 90 % quantile of |error| per year 2017–2020,
  each year scored by the ≤ 2016 sibling (never trained on any of them), and the test-year coverage the
  shipped model would get if 2017 instead of 2018 had been the calibration year.

Run: ``python -m tabserve.training.co2_backtest --data ../shared/data [--out backtest.json]`` (~1–2 min).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tabserve.manifest import level_key
from tabserve.training.co2_data import TARGET, TEST_FIRST_YEAR, load
from tabserve.training.co2_features import ALL_PATTERNS, encode, input_values, mask_pattern
from tabserve.training.co2_recipe import Recipe, fit_recipe
from tabserve.training.conformal import conformal_quantile
from tabserve.training.options import DEFAULT_SEED

SPECS = "000"
FUEL_PATTERNS = tuple(p for p in ALL_PATTERNS if p != SPECS)
SPECS_ORIGINS = (2012, 2013, 2014, 2015, 2017)
SHIPPED_ORIGIN = 2017
FUEL_SIBLING_LAST_YEAR = 2016
FUEL_YEARS = (2017, 2018, 2019, 2020)
LEVELS = (0.5, 0.8, 0.9, 0.95)


class Backtest:
    """Recipes fitted once per last training year, and absolute errors per (recipe, years, pattern)."""

    def __init__(self, frame: pd.DataFrame, seed: int) -> None:
        self.frame = frame
        self.seed = seed
        self._recipes: dict[int, Recipe] = {}

    def recipe(self, last_year: int) -> Recipe:
        if last_year not in self._recipes:
            year = self.frame["model_year"]
            train = self.frame[(year <= last_year) & ~self.frame["outlier"]].reset_index(drop=True)
            self._recipes[last_year] = fit_recipe(train, self.seed)
        return self._recipes[last_year]

    def errors(self, last_year: int, years: Sequence[int], pattern: str) -> npt.NDArray[np.float64]:
        rows = self.frame[self.frame["model_year"].isin(years)].reset_index(drop=True)
        recipe = self.recipe(last_year)
        pred = recipe.predict(encode(recipe.encoder, mask_pattern(input_values(rows), pattern)))
        actual = rows[TARGET].to_numpy(dtype=np.float64)
        return np.asarray(np.abs(actual - pred.astype(np.float64)), dtype=np.float64)


def _coverage(calibration: npt.NDArray[np.float64], test: npt.NDArray[np.float64]) -> dict[str, float]:
    return {level_key(lv): round(float(np.mean(test <= conformal_quantile(calibration, lv))), 4) for lv in LEVELS}


def specs_backtest(bt: Backtest, origins: Sequence[int] = SPECS_ORIGINS) -> list[dict[str, Any]]:
    """The shipped specs-only scheme replayed at each origin: coverage per level on its two 'test' years."""
    out = []
    for origin in origins:
        calibration = np.concatenate(
            [bt.errors(origin - 1, [origin + 1], SPECS), bt.errors(origin - 2, [origin + 1], SPECS)]
        )
        test_years = [origin + 2, origin + 3]
        test = bt.errors(origin, test_years, SPECS)
        out.append(
            {
                "train_last_year": origin,
                "calibration_year": origin + 1,
                "test_years": test_years,
                "touches_test_split": max(test_years) >= TEST_FIRST_YEAR,
                "coverage": _coverage(calibration, test),
                "q90_calibration": round(conformal_quantile(calibration, 0.9), 2),
                "q90_needed": round(float(np.quantile(test, 0.9)), 2),
            }
        )
    return out


def fuel_year_spread(bt: Backtest) -> dict[str, Any]:
    """Per pattern with a consumption figure: q90 |error| per year by the ≤ 2016 sibling, and the test
    coverage at 0.9 when calibrating on 2017 vs on 2018 (as shipped)."""
    out: dict[str, Any] = {}
    test_years = [TEST_FIRST_YEAR, TEST_FIRST_YEAR + 1]
    for pattern in FUEL_PATTERNS:
        q90 = {
            str(y): round(float(np.quantile(bt.errors(FUEL_SIBLING_LAST_YEAR, [y], pattern), 0.9)), 3)
            for y in FUEL_YEARS
        }
        test = bt.errors(SHIPPED_ORIGIN, test_years, pattern)
        by_calibration_year = {
            str(y): _coverage(bt.errors(FUEL_SIBLING_LAST_YEAR, [y], pattern), test)["0.9"] for y in (2017, 2018)
        }
        out[pattern] = {"q90_abs_error_by_year": q90, "test_coverage_90_by_calibration_year": by_calibration_year}
    return out


def run(data_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    bt = Backtest(load(data_dir, None).frame, seed)
    return {"specs_only": specs_backtest(bt), "with_fuel_consumption": fuel_year_spread(bt)}


def _print(report: Mapping[str, Any]) -> None:
    print("specs only — shipped scheme replayed (train ≤ T, calibrate T+1 with ≤ T−1 and ≤ T−2 siblings)")
    print("  T     test years   " + "  ".join(f"cov@{k:<4}" for k in map(level_key, LEVELS)) + "  q90 cal / needed")
    for row in report["specs_only"]:
        cov = "  ".join(f"{row['coverage'][level_key(lv)]:<8.3f}" for lv in LEVELS)
        mark = " (test split)" if row["touches_test_split"] else ""
        years = "–".join(map(str, row["test_years"]))
        print(f"  {row['train_last_year']}  {years}    {cov}  {row['q90_calibration']} / {row['q90_needed']}{mark}")
    print("with fuel consumption — q90 |error| per year (≤ 2016 sibling); test coverage@0.9 by calibration year")
    for pattern, row in report["with_fuel_consumption"].items():
        print(f"  {pattern}  {row['q90_abs_error_by_year']}  {row['test_coverage_90_by_calibration_year']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tabserve.training.co2_backtest", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with the NRCan CSV files")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    report = run(args.data, args.seed)
    _print(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
