"""Matched-cost comparison: how far does each vector steer at the same damage to the model?

The multiplier is not a common scale across vectors (norms differ, and so does each one's cost per
unit of norm), so curves at equal ``m`` do not say which vector steers more. Here each vector gets
its own multipliers: for every budget of a utility cost, in both directions (``m > 0`` and
``m < 0``), the search finds the multiplier at which the cost reaches the budget, then the
behavior effect is measured there.

* **Cost** (``workbench.evaluate.utility.utility_per_text`` on neutral text): ``"kl"``, the mean
  ``KL(p_unsteered || p_steered)`` per predicted token (budgets 0.05, 0.1, 0.2, 0.5 by default), or
  ``"perplexity"``, the perplexity ratio minus one (budgets +5 %, +10 %, +25 %).
* **Search**: grow ``|m|`` geometrically from ``start`` until the cost passes the budget (or
  ``max_multiplier`` is passed: *unreached*, with the largest cost seen), then bisect on ``|m|``
  until the cost is within ``rel_tol * budget`` of it.
* **Effect** (``workbench.evaluate.preference.pair_logodds``, ``ab_pair_probs``): the held-out
  log-odds shift from ``m = 0`` per pair, mean with a paired bootstrap interval
  (``workbench.evaluate.effects.effect_vs_zero``, the rule of every analysis), at the found multipliers and at every multiplier the
  search visited within budget. The effect is not assumed monotone in ``m``: each budget also gets
  the best effect within budget and where it was found, and ``monotone`` says whether the visited
  points rise steadily.
* **Slope** near ``m = 0``: ``effect(m0) / sqrt(KL(m0))`` at a small ``m0``, which needs no search.
* **Equal norm**: every vector can first be rescaled to a reference vector's norm or a given norm.

``matched_cost(...)`` (options in one ``MatchedCostConfig``) returns a ``matched_cost`` result
(``workbench.core.results``); ``plot_cost_effect`` (``workbench.viz.plots``) and ``workbench report`` draw
from it alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.results import MATCHED_COST, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import load_neutral_text
from workbench.data.pairs import check_pairs
from workbench.evaluate.effects import effect_vs_zero
from workbench.evaluate.preference import _ab_pair_probs, _pair_logodds  # on checked input: matched_cost checks
from workbench.evaluate.utility import utility_per_text

Cost = Literal["kl", "perplexity"]
COSTS = ("kl", "perplexity")
DEFAULT_BUDGETS: dict[str, tuple[float, ...]] = {"kl": (0.05, 0.1, 0.2, 0.5), "perplexity": (0.05, 0.1, 0.25)}


def check_budgets(budgets: Sequence[float] | None, cost: str) -> list[float]:
    """Budgets as sorted positive floats (default: ``DEFAULT_BUDGETS[cost]``)."""
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r}: use one of {', '.join(COSTS)}")
    if budgets is None:
        return list(DEFAULT_BUDGETS[cost])
    out = []
    for b in budgets:
        try:
            x = float(b)
        except (TypeError, ValueError):
            raise ValueError(f"budgets: {b!r} is not a number") from None
        if not math.isfinite(x) or x <= 0:
            raise ValueError(f"budgets: {b!r} must be a positive number")
        out.append(x)
    if not out:
        raise ValueError("budgets: give at least one budget")
    return sorted(set(out))


def rescale(vectors: Mapping[str, SteeringVector], equal_norm: str | float | None) -> tuple[dict[str, SteeringVector], dict]:
    """Vectors rescaled to a reference vector's norm (its label) or a given norm; and the record."""
    vectors = dict(vectors)
    norms = {k: v.norm for k, v in vectors.items()}
    if equal_norm is None:
        return vectors, {"mode": None, "target_norm": None, "original_norms": norms}
    if isinstance(equal_norm, str) and equal_norm in vectors:
        target, mode = norms[equal_norm], f"vector:{equal_norm}"
    else:
        try:
            target, mode = float(equal_norm), "number"
        except (TypeError, ValueError):
            raise ValueError(f"equal_norm={equal_norm!r}: neither a vector label ({', '.join(vectors)}) nor a number") from None
        if not math.isfinite(target) or target <= 0:
            raise ValueError(f"equal_norm={equal_norm!r}: the norm must be positive")
    out = {}
    for k, v in vectors.items():
        if norms[k] == 0:
            out[k] = v  # a zero vector stays zero
        else:
            out[k] = v.normalized(target)
    return out, {"mode": mode, "target_norm": target, "original_norms": norms}


@dataclass(frozen=True)
class MatchedCostConfig:
    """How ``matched_cost`` searches the multipliers and measures the effect (one field per option)."""

    cost: Cost = "kl"  # kl: mean KL(unsteered || steered) per token; perplexity: ratio - 1
    budgets: tuple[float, ...] | None = None  # cost budgets (None: DEFAULT_BUDGETS[cost])
    equal_norm: str | float | None = None  # rescale every vector first to this vector's norm (a label) or norm
    start: float = 0.25  # the bracket: |m| = start * growth**k up to max_multiplier
    growth: float = 2.0
    max_multiplier: float = 64.0
    rel_tol: float = 0.05  # the search stops when |cost - budget| <= rel_tol * budget
    max_iter: int = 30  # steps narrowing the bracket
    slope_multiplier: float = 0.05  # m0 of the slope effect(m0) / sqrt(KL(m0))
    n_boot: int = 1000  # bootstrap resamples of the effects' intervals
    seed: int = 0  # the bootstrap's seed
    utility_kw: Mapping[str, Any] = field(default_factory=dict)  # to utility_per_text (max_tokens, batch_size ...)
    logodds_kw: Mapping[str, Any] = field(default_factory=dict)  # to pair_logodds (system_prompt, batch_size ...)

    def __post_init__(self) -> None:
        check_budgets(self.budgets, self.cost)
        for name, low in (("start", 0), ("max_multiplier", 0), ("rel_tol", 0), ("slope_multiplier", 0), ("growth", 1)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low):
                raise ValueError(f"{name}={value!r}: must be a number > {low}")
        if self.max_multiplier < self.start:
            raise ValueError(f"max_multiplier={self.max_multiplier} is below start={self.start}")
        object.__setattr__(self, "utility_kw", dict(self.utility_kw or {}))  # None given: no options
        object.__setattr__(self, "logodds_kw", dict(self.logodds_kw or {}))


class _CostProbe:
    """Cost of one vector at multipliers, through ``utility_per_text`` (memoised)."""

    def __init__(self, model: Model, label: str, vector: SteeringVector, texts: Sequence[str],
                 cost: str, utility_kw: Mapping[str, Any]):
        self.model, self.label, self.vector, self.texts = model, label, vector, list(texts)
        self.cost, self.kw = cost, dict(utility_kw)
        self.seen: dict[float, dict[str, float]] = {}

    def __call__(self, m: float) -> float:
        m = float(m)
        if m not in self.seen:
            per = utility_per_text(self.model, {self.label: self.vector}, self.texts, [0.0, m], progress=False,
                                   **self.kw)
            tot = per.groupby("multiplier")[["n_tokens", "nll_sum", "kl_sum"]].sum()
            ppl0 = math.exp(tot.loc[0.0, "nll_sum"] / tot.loc[0.0, "n_tokens"])
            ppl = math.exp(tot.loc[m, "nll_sum"] / tot.loc[m, "n_tokens"])
            kl = float(tot.loc[m, "kl_sum"] / tot.loc[m, "n_tokens"])
            self.seen[m] = {"kl": kl, "perplexity": ppl / ppl0 - 1.0, "perplexity_value": ppl}
        return self.seen[m][self.cost]


def search_budget(probe: Any, budget: float, direction: int, *, start: float = 0.25, growth: float = 2.0,
                  max_multiplier: float = 64.0, rel_tol: float = 0.05, max_iter: int = 30,
                  known: Mapping[float, float] | None = None) -> dict[str, Any]:
    """Find ``m`` (sign ``direction``) with ``|cost(m) - budget| <= rel_tol * budget``.

    Brackets by growing ``|m|`` from ``start`` by ``growth`` up to ``max_multiplier`` (starting from
    the costs already ``known``, ``{|m|: cost}`` in this direction, e.g. from a smaller budget), then
    narrows the bracket: each step interpolates in log-log (cost grows like a power of ``|m|``; from
    ``m = 0``, like ``m**2``), clamped inside the bracket, and bisects instead whenever the previous
    step kept less than half of it. Returns ``reached, multiplier, cost, converged, max_cost_seen, steps``.
    """
    lo, c_lo = 0.0, 0.0
    hi, c_hi = None, None
    max_seen, steps = 0.0, 0
    for a, c in sorted((known or {}).items()):  # what earlier searches measured
        max_seen = max(max_seen, c)
        if abs(c - budget) <= rel_tol * budget:
            return {"reached": True, "multiplier": direction * a, "cost": c, "converged": True,
                    "max_cost_seen": max_seen, "steps": 0}
        if c < budget and hi is None:
            lo, c_lo = a, c
        elif c > budget and hi is None:
            hi, c_hi = a, c

    def measure(m: float) -> tuple[float, dict[str, Any] | None]:
        """Cost at ``direction * m``, and the final answer when it is within tolerance of the budget."""
        nonlocal max_seen, steps
        c = probe(direction * m)
        steps += 1
        max_seen = max(max_seen, c)
        if abs(c - budget) <= rel_tol * budget:
            return c, {"reached": True, "multiplier": direction * m, "cost": c, "converged": True,
                       "max_cost_seen": max_seen, "steps": steps}
        return c, None

    a = start if lo == 0 else lo * growth
    while hi is None:  # bracket
        if lo >= max_multiplier:
            return {"reached": False, "multiplier": None, "cost": None, "converged": False,
                    "max_cost_seen": max_seen, "steps": steps}
        a = min(a, max_multiplier)
        c, done = measure(a)
        if done:
            return done
        if c > budget:
            hi, c_hi = a, c
            break
        lo, c_lo = a, c
        a = a * growth
    bisect = False
    for _ in range(max_iter):  # narrow the bracket
        width = hi - lo
        if bisect or not (c_hi > 0 and budget > 0):
            mid = (lo + hi) / 2
        elif lo == 0 or c_lo <= 0:
            mid = hi * math.sqrt(budget / c_hi)  # cost ~ m**2 near m = 0
        else:
            t = (math.log(budget) - math.log(c_lo)) / (math.log(c_hi) - math.log(c_lo))
            mid = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
        mid = min(max(mid, lo + 0.02 * width), hi - 0.02 * width)
        c, done = measure(mid)
        if done:
            return done
        if c > budget:
            hi, c_hi = mid, c
        else:
            lo, c_lo = mid, c
        bisect = (hi - lo) > 0.5 * width
    # cost not continuous enough to hit the tolerance: the last point below the budget
    return {"reached": lo > 0, "multiplier": direction * lo if lo > 0 else None, "cost": c_lo if lo > 0 else None,
            "converged": False, "max_cost_seen": max_seen, "steps": steps}


def _effects(model: Model, label: str, vector: SteeringVector, pairs: Sequence[Any], mults: Sequence[float],
             ab_pairs: Sequence[Any] | None, n_boot: int, seed: int, kw: Mapping[str, Any]) -> dict[float, dict]:
    """Per multiplier: log-odds shift from m = 0 (and A/B p_matching shift) with bootstrap intervals.

    ``pairs`` and ``ab_pairs`` were checked by ``matched_cost``; the vector is checked against the
    model by the engine."""
    mults = sorted(set([0.0, *map(float, mults)]))
    out: dict[float, dict] = {m: {} for m in mults}
    spec = {label: [vector]}
    tables = [("effect", _pair_logodds(model, spec, pairs, mults, progress=False, **kw), "logodds")]
    if ab_pairs is not None:
        ab_kw = {k: v for k, v in kw.items() if k in ("system_prompt", "batch_size", "precision")}
        tables.append(("ab", _ab_pair_probs(model, spec, ab_pairs, mults, progress=False, **ab_kw), "p_matching"))
    for name, df, col in tables:
        wide = df.pivot(index="pair", columns="multiplier", values=col)  # (pairs, multipliers)
        base = wide[0.0].to_numpy(np.float64)
        for m in mults:
            out[m] |= effect_vs_zero(wide[m].to_numpy(np.float64), base, n_boot=n_boot, seed=seed).columns(name)
    return out


def matched_cost(model: Model, vectors: Mapping[str, SteeringVector], pairs: Sequence[Any],
                 texts: Sequence[str] | None = None, config: MatchedCostConfig | None = None, *,
                 ab_pairs: Sequence[Any] | None = None, **options: Any) -> Result:
    """Effect of each vector at the multipliers where its cost reaches each budget, both directions.

    Args:
        model: the model (unchanged by the call).
        vectors: ``{label: vector}``.
        pairs: held-out preference pairs (the effect: log-odds shift from m = 0).
        texts: neutral passages for the cost (default: ``workbench.data.behaviors.load_neutral_text()``).
        config: the options (``MatchedCostConfig``: ``cost``, ``budgets``, ``equal_norm``, the search's
            ``start``, ``growth``, ``max_multiplier``, ``rel_tol``, ``max_iter``, ``slope_multiplier``,
            ``n_boot``, ``seed``, ``utility_kw`` / ``logodds_kw`` for ``utility_per_text`` / ``pair_logodds``).
        ab_pairs: A/B pairs; also report the shift of p(matching letter).
        options: ``MatchedCostConfig`` fields given as keywords (applied to ``config``).

    Returns:
        A ``matched_cost`` result: ``rows`` one per (vector, direction, budget) with the found
        multiplier, its cost and the effect there, the best effect within budget and its multiplier;
        ``points`` every visited multiplier with its cost and effect; ``slopes`` the effect per
        sqrt(KL) near m = 0 per vector and direction.

    Raises:
        ValueError, TypeError: ``pairs`` or ``ab_pairs`` are not preference pairs
            (``workbench.data.pairs.check_pairs``, run once here).

    Example:
        >>> res = matched_cost(model, {"bipo": bipo, "caa": caa}, test, budgets=[0.1], n_boot=200)
        >>> cost_effect_table(res)
    """
    cfg = with_options(MatchedCostConfig, config, options, "matched_cost")
    cost, budgets, n_boot, seed = cfg.cost, check_budgets(cfg.budgets, cfg.cost), cfg.n_boot, cfg.seed
    start, growth, max_multiplier, rel_tol = cfg.start, cfg.growth, cfg.max_multiplier, cfg.rel_tol
    max_iter, slope_multiplier = cfg.max_iter, cfg.slope_multiplier
    if not vectors:
        raise ValueError("vectors is empty: give at least one vector")
    pairs = check_pairs(pairs)  # once, with ab_pairs; nothing below checks again
    ab_pairs = None if ab_pairs is None else check_pairs(ab_pairs, "ab_pairs")
    texts = list(load_neutral_text() if texts is None else texts)
    used, norm_info = rescale(vectors, cfg.equal_norm)
    rows, points, slopes = [], [], []
    for label, vec in used.items():
        probe = _CostProbe(model, label, vec, texts, cost, cfg.utility_kw)
        found = {}
        for d in (1, -1):
            for b in budgets:  # ascending: each search starts from what the smaller budgets measured
                known = {abs(m): s[cost] for m, s in probe.seen.items() if m * d > 0}
                found[(d, b)] = search_budget(probe, b, d, start=start, growth=growth, max_multiplier=max_multiplier,
                                              rel_tol=rel_tol, max_iter=max_iter, known=known)
        for d in (1, -1):
            probe(d * slope_multiplier)
        cutoff = max(budgets)
        eval_m = [m for m, s in probe.seen.items() if s[cost] <= cutoff * (1 + rel_tol)]
        eff = _effects(model, label, vec, pairs, eval_m, ab_pairs, n_boot, seed, cfg.logodds_kw)
        cost_at = {m: probe.seen[m] for m in eval_m} | {0.0: {"kl": 0.0, "perplexity": 0.0}}
        for m in sorted(eff):
            points.append({"vector": label, "direction": int(np.sign(m)), "multiplier": m,
                           "cost": cost_at[m][cost], "kl": cost_at[m]["kl"],
                           "perplexity_ratio": 1.0 + cost_at[m]["perplexity"]} | eff[m])
        for d in (1, -1):
            m0 = d * slope_multiplier
            kl0 = probe.seen[m0]["kl"]
            e0 = eff[m0]["effect"]
            slopes.append({"vector": label, "direction": d, "multiplier": m0, "kl": kl0, "effect": e0,
                           "slope": e0 / math.sqrt(kl0) if kl0 > 0 else None})
            for b in budgets:
                s = found[(d, b)]
                inside = sorted((m for m in eff if m * d > 0 and cost_at[m][cost] <= b * (1 + rel_tol)), key=abs)
                series = [d * eff[m]["effect"] for m in inside]
                best = max(inside, key=lambda m: d * eff[m]["effect"], default=None)
                row = {"vector": label, "direction": d, "budget": b, "reached": s["reached"],
                       "converged": s["converged"], "multiplier": s["multiplier"], "cost": s["cost"],
                       "max_cost_seen": s["max_cost_seen"], "search_steps": s["steps"]}
                at = eff.get(s["multiplier"], {}) if s["reached"] else {}
                for k in ("effect", "effect_ci_low", "effect_ci_high", "ab", "ab_ci_low", "ab_ci_high"):
                    if k in at or k.startswith("effect"):
                        row[k] = at.get(k)
                row |= {"best_effect": eff[best]["effect"] if best is not None else None,
                        "best_ci_low": eff[best]["effect_ci_low"] if best is not None else None,
                        "best_ci_high": eff[best]["effect_ci_high"] if best is not None else None,
                        "best_multiplier": best, "best_cost": cost_at[best][cost] if best is not None else None,
                        "n_within_budget": len(inside),
                        "monotone": bool(all(y >= x for x, y in zip(series, series[1:])))}
                rows.append(row)
    return result(MATCHED_COST, cost=cost, budgets=budgets,
                  search={"start": start, "growth": growth, "max_multiplier": max_multiplier, "rel_tol": rel_tol,
                          "max_iter": max_iter, "slope_multiplier": slope_multiplier},
                  equal_norm=norm_info, norms={k: v.norm for k, v in used.items()},
                  n_pairs=len(pairs), n_texts=len(texts), n_ab_pairs=len(ab_pairs) if ab_pairs else 0,
                  n_boot=n_boot, seed=seed,
                  rows=pd.DataFrame(rows), points=pd.DataFrame(points), slopes=pd.DataFrame(slopes))


def cost_effect_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """The result's ``rows`` as a readable table (from the saved result alone)."""
    df = pd.DataFrame(result["rows"])

    def iv(r: pd.Series, k: str, lo: str, hi: str) -> str:
        if r.get(k) is None or pd.isna(r.get(k)):
            return "unreached" if k == "effect" else ""
        return f"{r[k]:+.2f} [{r[lo]:+.2f}, {r[hi]:+.2f}]"

    out = pd.DataFrame({
        "vector": df["vector"], "direction": df["direction"].map({1: "m > 0", -1: "m < 0"}),
        "budget": df["budget"],
        "multiplier": [f"{m:+.3g}" if m is not None and not pd.isna(m) else "-" for m in df["multiplier"]],
        "cost": [f"{c:.3g}" if c is not None and not pd.isna(c) else f"max {x:.3g}"
                 for c, x in zip(df["cost"], df["max_cost_seen"])],
        "effect [95 % CI]": [iv(r, "effect", "effect_ci_low", "effect_ci_high") for _, r in df.iterrows()],
        "best within budget": [iv(r, "best_effect", "best_ci_low", "best_ci_high")
                               + (f" at m={r['best_multiplier']:+.3g}" if r.get("best_multiplier") is not None
                                  and not pd.isna(r.get("best_multiplier")) else "") for _, r in df.iterrows()],
        "monotone": df["monotone"].map({True: "yes", False: "no"}),
    })
    return out


def headline_table(results: Mapping[str, Mapping[str, Any]], budgets: Sequence[float] | None = None) -> pd.DataFrame:
    """Several matched-cost results side by side: one row per (result, budget, direction), one column
    per vector, each cell ``"+X.XX [lo, hi]"`` (the effect at the found multiplier), ``"unreached (max
    c)"`` when the budget was never reached, with ``*`` when the visited effects were not monotone.

    Args:
        results: ``{name: matched_cost result}`` (e.g. one per behavior), from the saved JSON alone.
        budgets: the budgets to show (default: every budget of every result).
    """
    out = []
    for name, res in results.items():
        df = pd.DataFrame(res["rows"])
        wanted = sorted(set(df["budget"])) if budgets is None else [float(b) for b in budgets]
        for b in wanted:
            for d in (1, -1):
                part = df[np.isclose(df["budget"], b) & (df["direction"] == d)]
                if part.empty:
                    continue
                row: dict[str, Any] = {"result": name, "budget": b, "direction": "m > 0" if d > 0 else "m < 0"}
                for r in part.to_dict("records"):
                    if r.get("effect") is None or pd.isna(r.get("effect")):
                        cell = f"unreached (max {r['max_cost_seen']:.3g})"
                    else:
                        cell = f"{r['effect']:+.2f} [{r['effect_ci_low']:+.2f}, {r['effect_ci_high']:+.2f}]"
                    row[r["vector"]] = cell + ("" if r.get("monotone", True) else " *")
                out.append(row)
    return pd.DataFrame(out)


__all__ = ["COSTS", "DEFAULT_BUDGETS", "MatchedCostConfig", "check_budgets", "cost_effect_table", "headline_table", "matched_cost",
           "rescale", "search_budget"]
