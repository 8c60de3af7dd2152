"""Shared pieces of the evaluation suite: defaults, input checks, bootstrap intervals, summaries.

The evaluation modules (``workbench.evaluate.suite`` and its sibling metric modules) measure steering across
multipliers, as in the curves of BiPO (Cao et al. 2024, arXiv 2406.00045). Every interval they
report is a percentile bootstrap over items (pairs, questions, passages, prompts) with a fixed seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.core.results import records  # noqa: F401  (re-exported: the evaluation modules' JSON rows)

DEFAULT_MULTIPLIERS: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
#: Columns of every summary table: one row per (vector, multiplier).
SUMMARY_COLUMNS = ("vector", "multiplier", "n", "mean", "ci_low", "ci_high")


def check_multipliers(multipliers: Iterable[Any], what: str = "multipliers") -> list[float]:
    """Multipliers as floats; non-numbers, NaN/inf, a value given twice (``1 1``, ``-0 0``: every table has one
    row per multiplier) and an empty list are errors naming the bad value."""
    multipliers = [multipliers] if isinstance(multipliers, (int, float)) else list(multipliers)
    out = []
    for i, m in enumerate(multipliers):
        try:
            x = float(m)
        except (TypeError, ValueError):
            raise ValueError(f"{what}[{i}] = {m!r} is not a number") from None
        if isinstance(m, bool) or not math.isfinite(x):
            raise ValueError(f"{what}[{i}] = {m!r} is not a finite number")
        if x in out:  # -0.0 == 0.0: the same multiplier
            j = out.index(x)
            raise ValueError(f"{what}[{j}] = {multipliers[j]!r} and {what}[{i}] = {m!r} are the same multiplier "
                             f"{x + 0.0:g}; give each multiplier once")
        out.append(x)
    if not out:
        raise ValueError(f"{what} is empty: give at least one multiplier, e.g. -2 -1 0 1 2")
    return out


def bootstrap_interval(n: int, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The one percentile bootstrap: ``statistic(idx)`` over ``n_boot`` resamples of ``n`` items.

    ``statistic`` maps a ``(k, n)`` array of resampled item indices to ``k`` values (drawn in chunks of
    bounded memory, the same random stream as one draw). ``n_boot=0`` gives ``(nan, nan)``.
    """
    if n_boot <= 0 or n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bounded memory for many items
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        stats[s: s + k] = statistic(rng.integers(0, n, size=(k, n)))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray | Sequence[float], n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling items with replacement).

    One item gives a zero-width interval; ``n_boot=0`` gives ``(nan, nan)``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    return bootstrap_interval(x.size, lambda idx: x[idx].mean(1), n_boot=n_boot, level=level, seed=seed)


def summarize(per_item: pd.DataFrame, value: str, *, by: Sequence[str] = ("vector", "multiplier"),
              extra: dict[str, Any] | None = None, n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> pd.DataFrame:
    """One row per group: ``n``, ``mean`` of ``value`` and its bootstrap interval.

    Args:
        per_item: one row per item and group.
        value: the column to average.
        by: grouping columns (kept in the output, in order of first appearance).
        extra: more columns: ``{name: callable(group) -> float}``.
    """
    rows = []
    for keys, g in per_item.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        x = g[value].to_numpy(dtype=np.float64)
        lo, hi = bootstrap_ci(x, n_boot=n_boot, level=level, seed=seed)
        row = dict(zip(by, keys)) | {"n": int(x.size), "mean": float(x.mean()), "ci_low": lo, "ci_high": hi}
        for name, fn in (extra or {}).items():
            row[name] = float(fn(g))
        rows.append(row)
    return pd.DataFrame(rows)
