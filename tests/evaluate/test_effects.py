"""The one effect rule: the mean shift from m = 0 and its paired percentile bootstrap interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.evaluate.effects import Effect, effect_vs_zero, retained_vs_zero
from workbench.evaluate.statistics import bootstrap_ci, bootstrap_interval


def test_mean_and_interval_are_the_paired_bootstrap_of_the_shifts():
    rng = np.random.default_rng(1)
    base = rng.normal(size=40)
    at_m = base + 0.5 + 0.1 * rng.normal(size=40)
    e = effect_vs_zero(at_m, base, n_boot=500, seed=3)
    shift = at_m - base
    assert e.mean == float(shift.mean()) and e.n == 40
    assert (e.ci_low, e.ci_high) == bootstrap_ci(shift, n_boot=500, seed=3)
    assert e.ci_low < e.mean < e.ci_high
    # paired: a shared per-item offset does not widen the interval
    offset = 10 * rng.normal(size=40)
    assert effect_vs_zero(at_m + offset, base + offset, n_boot=500, seed=3).ci_high == pytest.approx(e.ci_high)
    assert e.columns("ab") == {"ab": e.mean, "ab_ci_low": e.ci_low, "ab_ci_high": e.ci_high}


def test_tensor_mean_keeps_its_precision():
    at_m = torch.tensor([0.1, 0.7, 0.3333], dtype=torch.float32)
    base = torch.tensor([0.0, 0.2, 0.1], dtype=torch.float32)
    e = effect_vs_zero(at_m, base, n_boot=0)
    assert e.mean == float((at_m - base).mean())  # the float32 mean, as the tables had it
    assert math.isnan(e.ci_low) and math.isnan(e.ci_high)  # n_boot=0: no interval


def test_edge_cases_and_errors():
    assert effect_vs_zero(np.zeros(5), np.zeros(5)) == Effect(0.0, 0.0, 0.0, 5)
    one = effect_vs_zero(np.array([2.0]), np.array([0.5]))
    assert (one.mean, one.ci_low, one.ci_high) == (1.5, 1.5, 1.5)
    assert math.isnan(effect_vs_zero(np.array([]), np.array([])).mean)
    with pytest.raises(ValueError, match="same items"):
        effect_vs_zero(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="both be tensors"):
        effect_vs_zero(torch.zeros(3), np.zeros(3))


def test_retained_share_and_its_interval():
    rng = np.random.default_rng(0)
    s0, t0 = rng.normal(size=30), rng.normal(size=30)
    s1, t1 = s0 + 2 + 0.3 * rng.normal(size=30), t0 + 1 + 0.3 * rng.normal(size=30)
    src, tgt, kept = retained_vs_zero(s1, s0, t1, t0, n_boot=400, seed=2)
    s, t = s1 - s0, t1 - t0
    assert (src.mean, tgt.mean, kept.mean) == (float(s.mean()), float(t.mean()), float(t.mean() / s.mean()))
    want = bootstrap_interval(30, lambda idx: t[idx].mean(1) / s[idx].mean(1), n_boot=400, seed=2)
    assert (kept.ci_low, kept.ci_high) == want and kept.ci_low < kept.mean < kept.ci_high
    same = retained_vs_zero(s1, s0, s1, s0)[2]
    assert (same.mean, same.ci_low, same.ci_high) == (1.0, 1.0, 1.0)
    assert math.isnan(retained_vs_zero(s0, s0, t1, t0)[2].mean)  # no source effect: no share
