"""co2 conformal backtest: the shipped calibration scheme is replayed with the right years and siblings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

pytest.importorskip("lightgbm")

from tabserve.training.co2_backtest import Backtest, specs_backtest


class RecordingBacktest(Backtest):
    """Errors are synthetic: calibration rows score 1..100, 'test' rows score whatever the test asks for."""

    def __init__(self, test_scores: npt.NDArray[np.float64]) -> None:
        super().__init__(pd.DataFrame(), seed=0)
        self.calls: list[tuple[int, tuple[int, ...], str]] = []
        self.test_scores = test_scores

    def errors(self, last_year: int, years: Sequence[int], pattern: str) -> npt.NDArray[np.float64]:
        self.calls.append((last_year, tuple(years), pattern))
        if len(years) == 2:
            return self.test_scores
        return np.arange(1.0, 51.0) if last_year % 2 else np.arange(51.0, 101.0)


def test_specs_scheme_calibrates_next_year_with_both_older_siblings_and_tests_two_years_later() -> None:
    bt = RecordingBacktest(np.array([10.0, 95.0, 99.0, 100.5]))
    (row,) = specs_backtest(bt, origins=[2014])
    assert bt.calls == [(2013, (2015,), "000"), (2012, (2015,), "000"), (2014, (2016, 2017), "000")]
    assert row["calibration_year"] == 2015 and row["test_years"] == [2016, 2017]
    assert row["touches_test_split"] is False
    # calibration scores 1..100: q(0.9) is the ceil(101·0.9) = 91st smallest = 91, q(0.95) = 96
    assert row["q90_calibration"] == 91.0
    assert row["coverage"]["0.9"] == 0.25  # only 10 ≤ 91
    assert row["coverage"]["0.95"] == 0.5  # 10 and 95 ≤ 96


def test_an_origin_whose_test_years_reach_2019_is_marked_as_the_test_split() -> None:
    (row,) = specs_backtest(RecordingBacktest(np.array([1.0])), origins=[2017])
    assert row["test_years"] == [2019, 2020] and row["touches_test_split"] is True
