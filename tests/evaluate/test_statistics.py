"""Tests for workbench.evaluate.statistics: multiplier checks, the percentile bootstrap, summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.evaluate.statistics import bootstrap_ci, bootstrap_interval, check_multipliers, summarize


def test_check_multipliers_names_the_bad_value():
    assert check_multipliers([1, "2", 0.5]) == [1.0, 2.0, 0.5] and check_multipliers(3) == [3.0]
    for bad, match in (([1, "x"], r"multipliers\[1\] = 'x' is not a number"), ([float("inf")], "finite"),
                       ([True], "finite"), ([], "empty")):
        with pytest.raises(ValueError, match=match):
            check_multipliers(bad)


def test_check_multipliers_refuses_a_multiplier_given_twice():
    with pytest.raises(ValueError, match=r"^multipliers\[0\] = 1 and multipliers\[1\] = 1 are the same multiplier 1; "
                                         "give each multiplier once$"):
        check_multipliers([1, 1])
    with pytest.raises(ValueError, match=r"multipliers\[1\] = -0.0 and multipliers\[2\] = 0 are the same multiplier 0;"):
        check_multipliers([2, -0.0, 0])  # -0 is 0: one row per multiplier in every table
    assert check_multipliers((-1.0, 0.0, 1.0)) == [-1.0, 0.0, 1.0]


def test_bootstrap_matches_a_plain_resampling_and_edges():
    x = np.arange(10, dtype=float) ** 2
    rng = np.random.default_rng(4)
    plain = x[rng.integers(0, 10, size=(500, 10))].mean(1)  # the same random stream, drawn at once
    assert bootstrap_ci(x, n_boot=500, seed=4) == pytest.approx(tuple(np.quantile(plain, [0.025, 0.975])))
    assert bootstrap_ci([2.5]) == (2.5, 2.5)
    assert all(np.isnan(bootstrap_ci(x, n_boot=0)))
    assert all(np.isnan(bootstrap_interval(0, lambda idx: idx.mean(1))))


def test_summarize_groups_in_order_with_extras():
    df = pd.DataFrame({"vector": ["b", "b", "a", "a"], "multiplier": [1.0, 1.0, 0.0, 0.0], "v": [1.0, 3.0, -1.0, 0.0]})
    s = summarize(df, "v", n_boot=50, extra={"positive": lambda g: (g["v"] > 0).mean()})
    assert list(s.vector) == ["b", "a"] and list(s["mean"]) == [2.0, -0.5] and list(s.positive) == [1.0, 0.0]
    assert list(s.columns) == ["vector", "multiplier", "n", "mean", "ci_low", "ci_high", "positive"]
