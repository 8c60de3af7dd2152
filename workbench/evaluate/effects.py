"""The effect of steering relative to m = 0, and its interval: one rule for every analysis.

BiPO (Cao et al. 2024, arXiv 2406.00045) and CAA (Rimsky et al. 2023, arXiv 2312.06681) judge a
steering vector by how far it moves a per-item score (the held-out log-odds ``log p(matching) - log
p(not matching)``, the probability of the matching A/B letter, ...) at multiplier ``m`` against the
unsteered model. Every analysis that reports such an effect (``workbench.analysis.sweep``,
``composition``, ``transfer``, ``equal_cost``) computes it here, from the per-item values at ``m`` and
at ``m = 0`` of the same items:

* the **effect** is the mean of the per-item shifts ``value(m) - value(0)``, computed in the precision
  of the values given (so a table keeps the numbers it had);
* its **interval** is the paired percentile bootstrap over items of that mean
  (``workbench.evaluate.statistics.bootstrap_interval``, fixed seed): each resample draws items, and
  both of an item's values come with it;
* the **share retained** by a second effect (a vector moved to another model) is the ratio of the two
  mean shifts, with its interval from the same resamples of items for both.

    >>> e = effect_vs_zero(logodds_at_plus_one, logodds_unsteered)
    >>> e.mean, (e.ci_low, e.ci_high)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float
from torch import Tensor

from workbench.evaluate.statistics import bootstrap_ci, bootstrap_interval

Values = Float[Tensor, " n"] | Float[np.ndarray, " n"]


@dataclass(frozen=True)
class Effect:
    """A mean shift from ``m = 0`` and its percentile bootstrap interval (NaN where not computed)."""

    mean: float  # mean over items of value(m) - value(0)
    ci_low: float  # lower end of the interval (``level``, 95 % by default)
    ci_high: float  # upper end
    n: int  # items

    def columns(self, name: str = "effect") -> dict[str, float]:
        """``{name: mean, name_ci_low: ..., name_ci_high: ...}``: the columns of a tidy table."""
        return {name: self.mean, f"{name}_ci_low": self.ci_low, f"{name}_ci_high": self.ci_high}


def _shift(at_m: Values, at_zero: Values) -> tuple[Tensor | np.ndarray, np.ndarray]:
    """The per-item shift in the values' own type and precision, and as float64 numpy."""
    if isinstance(at_m, Tensor) != isinstance(at_zero, Tensor):
        raise TypeError("at_m and at_zero must both be tensors or both be arrays")
    if not isinstance(at_m, Tensor):
        at_m, at_zero = np.asarray(at_m, dtype=np.float64), np.asarray(at_zero, dtype=np.float64)
    if at_m.shape != at_zero.shape or len(at_m.shape) != 1:
        raise ValueError(f"at_m and at_zero must be 1-d values of the same items, got shapes "
                         f"{tuple(at_m.shape)} and {tuple(at_zero.shape)}")
    diff = at_m - at_zero  # (n,)
    values = diff.detach().double().cpu().numpy() if isinstance(diff, Tensor) else diff
    return diff, values


def effect_vs_zero(at_m: Values, at_zero: Values, *, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> Effect:
    """The mean shift of per-item values from ``m = 0`` to ``m``, with its paired bootstrap interval.

    Args:
        at_m: ``(n,)`` per-item values under steering (tensor or array).
        at_zero: ``(n,)`` the same items' values unsteered (the same type as ``at_m``).
        n_boot: bootstrap resamples; ``0`` skips the interval (NaN).
        level: coverage of the interval.
        seed: the bootstrap's seed.

    Returns:
        ``Effect``: the mean (in the values' precision: a float32 tensor gives its float32 mean), the
        interval over items (one item: zero width; none: NaN).

    Raises:
        ValueError: the two are not 1-d values of the same length.
    """
    diff, values = _shift(at_m, at_zero)
    if values.size == 0:
        return Effect(math.nan, math.nan, math.nan, 0)
    lo, hi = bootstrap_ci(values, n_boot=n_boot, level=level, seed=seed)
    return Effect(float(diff.mean()), lo, hi, int(values.size))


def retained_vs_zero(source_at_m: Values, source_at_zero: Values, target_at_m: Values, target_at_zero: Values,
                     *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[Effect, Effect, Effect]:
    """Two effects of the same items (a source and a target) and the share of the source's retained.

    Returns:
        ``(source, target, retained)``: the two ``effect_vs_zero`` means (without intervals) and
        ``target / source`` with the interval of that ratio over paired resamples of items (both
        effects from the same resample); NaN when the source effect is zero.
    """
    _, s = _shift(source_at_m, source_at_zero)
    _, t = _shift(target_at_m, target_at_zero)
    if s.shape != t.shape:
        raise ValueError(f"source and target must score the same items, got {s.size} and {t.size}")
    source = Effect(float(s.mean()), math.nan, math.nan, int(s.size))
    target = Effect(float(t.mean()), math.nan, math.nan, int(t.size))
    if s.mean() == 0:
        return source, target, Effect(math.nan, math.nan, math.nan, int(s.size))
    lo, hi = bootstrap_interval(len(s), lambda idx: t[idx].mean(1) / s[idx].mean(1), n_boot=n_boot, level=level,
                                seed=seed)
    return source, target, Effect(float(t.mean() / s.mean()), lo, hi, int(s.size))


__all__ = ["Effect", "effect_vs_zero", "retained_vs_zero"]
