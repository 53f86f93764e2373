"""co2 rolling-origin backtest: the calibration-from-the-newest-years rule judged the way a forecaster is.

The rule (used for every origin and for the shipped version alike): a model fitted on model years ≤ T is
calibrated with horizon-1 scores of the newest year(s) it was fitted on — year T scored by a sibling fitted
on ≤ T − 1, optionally pooled with year T − 1 scored by a sibling fitted on ≤ T − 2 at a recency weight.
That is the distance the served model meets: vehicles of the next model year(s).

For each origin Y in 2018..2022 the rule is replayed with T = Y − 1 (fit on years < Y) and tested on Y.
Candidate schemes (score absolute/relative × newest 1 or 2 years) are all replayed; the one with the
smallest mean |coverage@0.9 − 0.9| over origins and patterns is chosen (ties: the narrower), so the choice
rests on five origins, not on one year. Patterns reported: all fuel figures (111), combined only (001),
specs only (000). Outliers are dropped from fitting only, as in training.

Run: ``python -m tabserve.training.co2_backtest --data ../shared/data [--out backtest.json]`` (~1 min).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tabserve.manifest import level_key
from tabserve.training.co2_data import TARGET, load
from tabserve.training.co2_features import encode, input_values, mask_pattern
from tabserve.training.co2_recipe import Recipe, fit_recipe
from tabserve.training.conformal import regression_interval, regression_scores, weighted_conformal_quantile
from tabserve.training.options import DEFAULT_SEED

ORIGINS = (2018, 2019, 2020, 2021, 2022)
PATTERNS = {"111": "all fuel figures", "001": "combined only", "000": "specs only"}
LEVELS = (0.8, 0.9, 0.95)
TARGET_LEVEL = 0.9


@dataclass(frozen=True, slots=True)
class Scheme:
    """Conformal score and how many of the newest years' horizon-1 scores are pooled (weight ``decay**age``)."""

    score: str
    years: int
    decay: float

    @property
    def key(self) -> str:
        return f"{self.score}, newest {self.years} year(s), decay {self.decay:g}"


SCHEMES = (
    Scheme("absolute", 1, 1.0),
    Scheme("relative", 1, 1.0),
    Scheme("absolute", 2, 0.5),
    Scheme("relative", 2, 0.5),
)


class Backtest:
    """Recipes fitted once per last training year; predictions per (last year, test year, pattern)."""

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

    def predict(
        self, last_year: int, year: int, pattern: str
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(actual, predicted) for every row of model year ``year`` by the recipe fitted on ≤ ``last_year``."""
        rows = self.frame[self.frame["model_year"] == year].reset_index(drop=True)
        recipe = self.recipe(last_year)
        pred = recipe.predict(encode(recipe.encoder, mask_pattern(input_values(rows), pattern)))
        return rows[TARGET].to_numpy(dtype=np.float64), np.asarray(pred, dtype=np.float64)


def calibration_scores(
    bt: Backtest, last_year: int, pattern: str, scheme: Scheme
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(scores, weights) of the rule for a model fitted on ≤ ``last_year``: horizon-1 scores of its newest
    ``scheme.years`` years, the year ``age`` years back weighted ``scheme.decay**age``."""
    scores, weights = [], []
    for age in range(scheme.years):
        year = last_year - age
        y, pred = bt.predict(year - 1, year, pattern)
        scores.append(regression_scores(y, pred, scheme.score))
        weights.append(np.full(y.size, scheme.decay**age))
    return np.concatenate(scores), np.concatenate(weights)


def scheme_quantiles(
    bt: Backtest, last_year: int, pattern: str, scheme: Scheme, levels: Sequence[float]
) -> dict[str, float]:
    scores, weights = calibration_scores(bt, last_year, pattern, scheme)
    return {level_key(lv): weighted_conformal_quantile(scores, weights, lv) for lv in levels}


def origin_cell(bt: Backtest, origin: int, pattern: str, scheme: Scheme) -> dict[str, Any]:
    """Fit < origin, calibrate by the rule, test on the origin year: coverage/width per level, MAE, RMSE."""
    y, pred = bt.predict(origin - 1, origin, pattern)
    quantiles = scheme_quantiles(bt, origin - 1, pattern, scheme, LEVELS)
    err = y - pred
    cell: dict[str, Any] = {
        "rows": int(y.size),
        "mae": round(float(np.mean(np.abs(err))), 3),
        "rmse": round(float(np.sqrt(np.mean(err**2))), 3),
    }
    for key, q in quantiles.items():
        low, high = regression_interval(pred, q, scheme.score)
        cell[key] = {
            "coverage": round(float(np.mean((y >= low) & (y <= high))), 4),
            "mean_width": round(float(np.mean(high - low)), 3),
        }
    return cell


def scheme_table(bt: Backtest, scheme: Scheme, origins: Sequence[int] = ORIGINS) -> dict[str, dict[str, Any]]:
    """origin -> pattern -> cell."""
    return {str(o): {p: origin_cell(bt, o, p, scheme) for p in PATTERNS} for o in origins}


def gap(table: Mapping[str, Mapping[str, Any]]) -> float:
    """Mean |coverage@0.9 − 0.9| over every origin and pattern of a table."""
    key = level_key(TARGET_LEVEL)
    return float(np.mean([abs(c[key]["coverage"] - TARGET_LEVEL) for row in table.values() for c in row.values()]))


def mean_width(table: Mapping[str, Mapping[str, Any]]) -> float:
    key = level_key(TARGET_LEVEL)
    return float(np.mean([c[key]["mean_width"] for row in table.values() for c in row.values()]))


def choose_scheme(bt: Backtest, schemes: Sequence[Scheme] = SCHEMES) -> tuple[Scheme, dict[str, Any]]:
    """Replay every candidate at every origin; the smallest mean coverage gap at 0.9 wins (ties: narrower)."""
    tables = {s.key: scheme_table(bt, s) for s in schemes}
    candidates = {
        k: {"mean_abs_coverage_gap_90": round(gap(t), 4), "mean_width_90": round(mean_width(t), 3)}
        for k, t in tables.items()
    }
    best = min(
        schemes, key=lambda s: (candidates[s.key]["mean_abs_coverage_gap_90"], candidates[s.key]["mean_width_90"])
    )
    report = {
        "rule": "fit ≤ T; calibrate on horizon-1 scores of the newest year(s) ≤ T (year T scored by a sibling "
        "fitted ≤ T − 1); backtest origin Y uses T = Y − 1 and tests on Y",
        "chosen": best.key,
        "score": best.score,
        "years": best.years,
        "decay": best.decay,
        "candidates": candidates,
        "table": tables[best.key],
        "summary": summary(tables[best.key]),
    }
    return best, report


def summary(table: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per pattern: coverage@0.9 min/max/mean over origins, and the worst MAE from 2020 on."""
    key = level_key(TARGET_LEVEL)
    out: dict[str, Any] = {}
    for pattern in PATTERNS:
        cov = [row[pattern][key]["coverage"] for row in table.values()]
        late = [row[pattern]["mae"] for origin, row in table.items() if int(origin) >= 2020]
        out[pattern] = {
            "coverage_90_min": min(cov),
            "coverage_90_max": max(cov),
            "coverage_90_mean": round(float(np.mean(cov)), 4),
            "mae_max_from_2020": max(late) if late else None,
        }
    return out


def run(data_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    _, report = choose_scheme(Backtest(load(data_dir).frame, seed))
    return report


def table_lines(report: Mapping[str, Any]) -> list[str]:
    """The chosen scheme's table as Markdown rows (used by the CLI and the model card)."""
    lines = [
        "| origin | pattern | rows | cov@0.8 | cov@0.9 | cov@0.95 | width@0.8 | width@0.9 | width@0.95 | MAE | RMSE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for origin, row in report["table"].items():
        for pattern, c in row.items():
            cov = " | ".join(f"{c[level_key(lv)]['coverage']:.3f}" for lv in LEVELS)
            width = " | ".join(f"{c[level_key(lv)]['mean_width']:.2f}" for lv in LEVELS)
            lines.append(
                f"| {origin} | {PATTERNS[pattern]} ({pattern}) | {c['rows']} | {cov} | {width} | "
                f"{c['mae']:.2f} | {c['rmse']:.2f} |"
            )
    return lines


def _print(report: Mapping[str, Any]) -> None:
    print(f"rule: {report['rule']}")
    print(f"chosen scheme: {report['chosen']}")
    for key, cand in report["candidates"].items():
        print(f"  {key}: {cand}")
    print("\n".join(table_lines(report)))
    for pattern, s in report["summary"].items():
        print(f"  {PATTERNS[pattern]}: {s}")


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
