"""Which fitted model gives which number: the held-out scheme (one model) and ``[split] refit`` (three).

Held out (the default): one model, fitted on the training rows, is calibrated on the calibration rows, tested on
the test rows and served.

Refit (a time column; the rule of a forecaster who serves the newest data): the served model is fitted on every
row, so no later period is left to test it on. Its intervals are the horizon-one scores of a sibling fitted on the
rows before the test period, scored on the test period: the distance the served model meets next. The figures
reported for the test period are that sibling's, its own intervals calibrated the same way one period earlier (the
first model, fitted before the calibration period, scored on it). Each fit chooses its rounds on the newest
rows it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tabserve.errors import BuildError
from tabserve.manifest import level_key
from tabserve.training.build.calibrate import Predict, conformal_tables, floored, test_metrics
from tabserve.training.build.graph import Graph, ready
from tabserve.training.build.infer import Schema
from tabserve.training.build.sources import Servable, train_for_me
from tabserve.training.build.spec import BuildSpec
from tabserve.training.build.table import Rows, Splits, refit_splits


@dataclass(frozen=True, slots=True)
class Refitted:
    served: Servable
    served_graph: Graph
    served_splits: Splits
    tester: Servable
    tester_graph: Graph
    tester_splits: Splits


def refit(
    schema: Schema, splits: Splits, frame: pd.DataFrame, rows: Rows, seed: int, spec: BuildSpec, encode_with: Any
) -> Refitted:
    """The sibling fitted on the rows before the test period, and the model fitted on every row."""
    before_test, everything = refit_splits(frame, rows, schema, splits, splits.validation.rows > 0)
    tester = train_for_me(schema, before_test, rows, seed, spec, encode_with)
    served = train_for_me(schema, everything, rows, seed, spec, encode_with)
    return Refitted(
        served=served,
        served_graph=ready(served, schema, everything, rows),
        served_splits=everything,
        tester=tester,
        tester_graph=ready(tester, schema, before_test, rows),
        tester_splits=before_test,
    )


@dataclass(frozen=True, slots=True)
class Calibrated:
    levels: list[float]
    quantiles: dict[str, dict[str, float]]
    """Published: pattern -> level -> quantile."""
    calibration_rows: dict[str, int]
    tests: dict[str, Any]
    test_output: npt.NDArray[np.float64]
    """The tested model's raw output on every test row (the card's plots)."""


def calibrate(
    first: Predict,
    tester: Predict | None,
    splits: Splits,
    pattern_inputs: Sequence[str],
    task: str,
    score: str,
    names: dict[str, str],
    floor: float | None = None,
) -> Calibrated:
    """Held out when ``tester`` is None (``first`` is calibrated, tested and served); else the refit rule (``first``
    calibrates ``tester``, which is tested, and whose test-period scores are published). A regression ``floor``
    applies to every prediction and bound, as serving applies it."""
    if floor is not None:
        first = floored(first, floor)
        tester = None if tester is None else floored(tester, floor)
    levels, quantiles, cal_rows = conformal_tables(first, splits.calibration, pattern_inputs, task, score)
    tested, published, published_rows = first, quantiles, cal_rows
    if tester is not None:
        tested = tester
        later, published, published_rows = conformal_tables(tester, splits.test, pattern_inputs, task, score)
        levels = [level for level in levels if level in later]
    if not levels:
        where = "test" if tester is not None else "calibration"
        raise BuildError(f"the {where} split is too small for any confidence level: rows per pattern {published_rows}")
    tests = test_metrics(tested, splits.test, pattern_inputs, task, score, levels, quantiles, names, floor)
    return Calibrated(
        levels=levels,
        quantiles={key: {level_key(lv): table[level_key(lv)] for lv in levels} for key, table in published.items()},
        calibration_rows=published_rows,
        tests=tests,
        test_output=tested(splits.test),
    )


def refit_report(refitted: Refitted, splits: Splits) -> dict[str, Any]:
    """The manifest's account of the three fits (``metrics.refit``)."""

    def fit(servable: Servable, fitted_on: Splits) -> dict[str, Any]:
        return {"train_rows": fitted_on.train.rows, "validation_rows": fitted_on.validation.rows, **servable.details}

    return {
        "rule": "served: fitted on every row; intervals: the horizon-one scores on the test period of a sibling "
        "fitted before it; test figures: that sibling's, calibrated on the calibration period by the first model "
        "(fitted before the calibration period)",
        "first": {"train_rows": splits.train.rows, "validation_rows": splits.validation.rows},
        "tester": fit(refitted.tester, refitted.tester_splits),
        "served": fit(refitted.served, refitted.served_splits),
    }
