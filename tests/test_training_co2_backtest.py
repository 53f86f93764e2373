"""co2 rolling-origin backtest: the calibration rule uses the right years and siblings, and weights."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

pytest.importorskip("lightgbm")

from tabserve.training.co2_backtest import Backtest, Scheme, calibration_scores, origin_cell
from tabserve.training.conformal import conformal_quantile, weighted_conformal_quantile


class RecordingBacktest(Backtest):
    """Predictions are synthetic: actual 100 for every row, predicted 100 + error; errors per test year."""

    def __init__(self, errors: dict[int, npt.NDArray[np.float64]]) -> None:
        super().__init__(pd.DataFrame(), seed=0)
        self.calls: list[tuple[int, int, str]] = []
        self.errors = errors

    def predict(
        self, last_year: int, year: int, pattern: str
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        self.calls.append((last_year, year, pattern))
        err = self.errors[year]
        return np.full(err.size, 100.0), 100.0 + err


def test_origin_fits_on_earlier_years_and_calibrates_on_the_newest_with_a_horizon_one_sibling() -> None:
    bt = RecordingBacktest({2020: np.arange(1.0, 101.0), 2021: np.array([5.0, 50.0, 95.0, 99.5])})
    cell = origin_cell(bt, 2021, "000", Scheme("absolute", 1, 1.0))
    assert bt.calls[0] == (2020, 2021, "000")  # the model fitted < 2021 meets 2021
    assert (2019, 2020, "000") in bt.calls  # 2020 scored by the sibling fitted ≤ 2019
    assert all(year != 2021 or last == 2020 for last, year, _ in bt.calls)
    # scores 1..100: q(0.9) = ceil(101·0.9) = 91st = 91 -> 5, 50 inside, 95 and 99.5 outside
    assert cell["0.9"]["coverage"] == 0.5 and cell["0.9"]["mean_width"] == 182.0
    assert cell["0.95"]["coverage"] == 0.75  # q(0.95) = 96
    assert cell["mae"] == pytest.approx(62.375, abs=1e-3)


def test_two_year_scheme_pools_the_year_before_with_its_own_sibling_and_weight() -> None:
    bt = RecordingBacktest({2020: np.ones(3), 2019: np.full(2, 2.0)})
    scores, weights = calibration_scores(bt, 2020, "001", Scheme("absolute", 2, 0.5))
    assert bt.calls == [(2019, 2020, "001"), (2018, 2019, "001")]
    assert scores.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.5, 0.5]


def test_weighted_quantile_equals_the_plain_one_for_equal_weights_and_leans_to_heavy_rows() -> None:
    rng = np.random.default_rng(3)
    for n in (5, 19, 100):
        s = rng.random(n)
        for level in (0.5, 0.8, 0.9, 0.95):
            assert weighted_conformal_quantile(s, np.ones(n), level) == conformal_quantile(s, level)
    scores = np.arange(1.0, 11.0)
    assert weighted_conformal_quantile(scores, np.ones(10), 0.95) == math.inf
    heavy_low = np.where(scores <= 5, 10.0, 0.1)
    assert weighted_conformal_quantile(scores, heavy_low, 0.9) <= 5.0
