"""Matched-cost comparison: how far does each vector steer at the same damage to the model?

The multiplier is not a common scale across vectors (norms differ, and so does each one's cost per
unit of norm), so curves at equal ``m`` do not say which vector steers more. Here each vector gets
its own multipliers: for every budget of a utility cost, in both directions (``m > 0`` and
``m < 0``), the search finds the multiplier at which the cost reaches the budget, then the
behavior effect is measured there.

* **Cost** (``workbench.evaluate.utility.utility_per_text`` on neutral text): ``"kl"``, the mean
  ``KL(p_unsteered || p_steered)`` per predicted token (budgets 0.05, 0.1, 0.2, 0.5 by default), or
  ``"perplexity"``, the perplexity ratio minus one (budgets +5 %, +10 %, +25 %).
* **Search**: from the cost at the slope's small ``m0`` (and whatever a smaller budget measured), step
  ``|m|`` up to where the cost's power law reaches the budget (``m**2`` from one point, the local power
  from two; from ``start`` when nothing is known) until the cost passes the budget (or ``max_multiplier``
  is passed: *unreached*, with the largest cost seen), then narrow the bracket (log-log interpolation,
  bisection when it stalls) until the cost is within ``rel_tol * budget`` of it.
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
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.results import MATCHED_COST, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.pairs import check_pairs
from workbench.engine.conditions import condition_deltas, start_layer
from workbench.engine.scoring import preference_logprobs
from workbench.evaluate.effects import effect_vs_zero
from workbench.evaluate.preference import _ab_pair_probs  # on checked input: matched_cost checks
from workbench.evaluate.utility import NeutralReference, check_texts, utility_passes

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
    start: float = 0.25  # the first probe when no cost is known; then steps up at most x growth**8, to max_multiplier
    growth: float = 2.0
    max_multiplier: float = 64.0
    rel_tol: float = 0.05  # the search stops when |cost - budget| <= rel_tol * budget
    max_iter: int = 30  # steps narrowing the bracket
    slope_multiplier: float = 0.05  # m0 of the slope effect(m0) / sqrt(KL(m0))
    n_boot: int = 1000  # bootstrap resamples of the effects' intervals
    seed: int = 0  # the bootstrap's seed
    utility_kw: Mapping[str, Any] = field(default_factory=dict)  # to utility_per_text (max_tokens, batch_size ...)
    logodds_kw: Mapping[str, Any] = field(default_factory=dict)  # to pair_logodds (system_prompt, batch_size ...)
    effect_grid: tuple[float, ...] = (0.5,)  # the effect also at these fractions of the largest multiplier within budget
    all_points: bool = False  # the effect at every visited multiplier within budget (the best-within-budget column)
    progress: bool = False  # a tqdm bar on stderr: the stage (layer, vector, direction, budget) and probes so far

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
        grid = tuple(self.effect_grid or ())
        if not all(isinstance(g, (int, float)) and 0 < g < 1 for g in grid):
            raise ValueError(f"effect_grid={self.effect_grid!r}: fractions between 0 and 1")
        object.__setattr__(self, "effect_grid", tuple(float(g) for g in grid))


class _CostProbe:
    """Costs on the neutral passages of the vectors that enter at one layer, memoised per (label, ``m``).

    Every multiplier asked for at once (``measure``) runs as a condition of ONE engine pass
    (``workbench.evaluate.utility.utility_passes``: the blocks below the vectors run once for all);
    the unsteered log-probs are computed on the first pass and reused (``NeutralReference``). The
    costs equal those of ``utility_per_text(model, {label: vector}, texts, [0, m])`` bit for bit.
    """

    def __init__(self, model: Model, vectors: Mapping[str, SteeringVector], texts: Sequence[str],
                 cost: str, utility_kw: Mapping[str, Any]):
        kw = dict(utility_kw)
        kw.pop("progress", None)
        self.model, self.vectors, self.cost = model, dict(vectors), cost
        self.reference = NeutralReference(model, texts, kw.pop("max_tokens", 128))
        self.kw = kw  # batch_size, precision, chunk
        self.seen: dict[str, dict[float, dict[str, float]]] = {label: {} for label in vectors}
        self.n_probes = 0  # (vector, multiplier) costs measured

    def measure(self, wanted: Sequence[tuple[str, float]]) -> None:
        """Measure every ``(label, m)`` not seen yet, all in one engine pass."""
        todo = list(dict.fromkeys((label, float(m)) for label, m in wanted if float(m) not in self.seen[label]))
        if not todo:
            return
        acc = utility_passes(self.model, self.reference, [(self.vectors[label], m) for label, m in todo], **self.kw)
        n_tok = self.reference.n_pred.numpy()
        base = self.reference.base.numpy()
        for (label, m), a in zip(todo, acc.numpy()):
            # the old probe's arithmetic: per-text frames of m = 0 and m, summed by pandas
            per = pd.DataFrame({"multiplier": np.repeat([0.0, m], len(n_tok)), "n_tokens": np.tile(n_tok, 2),
                                "nll_sum": np.concatenate([base[:, 0], a[:, 0]]),
                                "kl_sum": np.concatenate([base[:, 2], a[:, 2]])})
            tot = per.groupby("multiplier")[["n_tokens", "nll_sum", "kl_sum"]].sum()
            ppl0 = math.exp(tot.loc[0.0, "nll_sum"] / tot.loc[0.0, "n_tokens"])
            ppl = math.exp(tot.loc[m, "nll_sum"] / tot.loc[m, "n_tokens"])
            kl = float(tot.loc[m, "kl_sum"] / tot.loc[m, "n_tokens"])
            self.seen[label][m] = {"kl": kl, "perplexity": ppl / ppl0 - 1.0, "perplexity_value": ppl}
        self.n_probes += len(todo)

    def __call__(self, label: str, m: float) -> float:
        self.measure([(label, m)])
        return self.seen[label][float(m)][self.cost]


def _search(budget: float, direction: int, *, start: float, growth: float, max_multiplier: float, rel_tol: float,
            max_iter: int, known: Mapping[float, float] | None) -> Generator[float, float, dict[str, Any]]:
    """``search_budget`` as a generator: yields each multiplier to measure, is sent its cost, returns the answer."""
    lo, c_lo = 0.0, 0.0
    hi, c_hi = None, None
    below: tuple[float, float] | None = None  # the point below the budget before lo (the local power of the cost)
    max_seen, steps = 0.0, 0
    for a, c in sorted((known or {}).items()):  # what earlier searches (and the slope point) measured
        max_seen = max(max_seen, c)
        if abs(c - budget) <= rel_tol * budget:
            return {"reached": True, "multiplier": direction * a, "cost": c, "converged": True,
                    "max_cost_seen": max_seen, "steps": 0}
        if c < budget and hi is None:
            below = (lo, c_lo) if lo > 0 else below
            lo, c_lo = a, c
        elif c > budget and hi is None:
            hi, c_hi = a, c

    def step_up() -> float:
        """The next bracket probe: from ``start``; above a measured point, where the cost's power law through
        the last two points below the budget (from one point: cost ~ m**2, as near m = 0) reaches it, taking
        at least a step of 5 % and at most ``growth**8``."""
        if lo == 0 or c_lo <= 0:
            return start if lo == 0 else lo * growth
        power = 2.0
        if below is not None and below[1] > 0 and c_lo > below[1]:
            power = min(max(math.log(c_lo / below[1]) / math.log(lo / below[0]), 1.0), 4.0)
        return lo * min(max((budget / c_lo) ** (1.0 / power), 1.05), growth ** 8)

    def done(m: float, c: float) -> dict[str, Any] | None:
        """The final answer when the cost at ``direction * m`` is within tolerance of the budget."""
        if abs(c - budget) <= rel_tol * budget:
            return {"reached": True, "multiplier": direction * m, "cost": c, "converged": True,
                    "max_cost_seen": max_seen, "steps": steps}
        return None

    while hi is None:  # bracket
        if lo >= max_multiplier:
            return {"reached": False, "multiplier": None, "cost": None, "converged": False,
                    "max_cost_seen": max_seen, "steps": steps}
        a = min(step_up(), max_multiplier)
        c = yield direction * a
        steps, max_seen = steps + 1, max(max_seen, c)
        if (answer := done(a, c)) is not None:
            return answer
        if c > budget:
            hi, c_hi = a, c
            break
        below = (lo, c_lo) if lo > 0 else below
        lo, c_lo = a, c
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
        c = yield direction * mid
        steps, max_seen = steps + 1, max(max_seen, c)
        if (answer := done(mid, c)) is not None:
            return answer
        if c > budget:
            hi, c_hi = mid, c
        else:
            lo, c_lo = mid, c
        bisect = (hi - lo) > 0.5 * width
    # cost not continuous enough to hit the tolerance: the last point below the budget
    return {"reached": lo > 0, "multiplier": direction * lo if lo > 0 else None, "cost": c_lo if lo > 0 else None,
            "converged": False, "max_cost_seen": max_seen, "steps": steps}


def search_budget(probe: Any, budget: float, direction: int, *, start: float = 0.25, growth: float = 2.0,
                  max_multiplier: float = 64.0, rel_tol: float = 0.05, max_iter: int = 30,
                  known: Mapping[float, float] | None = None) -> dict[str, Any]:
    """Find ``m`` (sign ``direction``) with ``|cost(m) - budget| <= rel_tol * budget``; ``probe(m)`` is the cost.

    Brackets by stepping ``|m|`` up to ``max_multiplier``: from ``start`` when nothing is known, else from
    the costs already ``known`` (``{|m|: cost}`` in this direction, e.g. the slope point or a smaller
    budget's probes) to where the power law through the last two points below the budget (``m**2``
    from one) reaches it, at least 5 % and at most ``growth**8`` further (each step after a probe below
    the budget the same way); then narrows the bracket: each step interpolates in log-log (cost grows like
    a power of ``|m|``; from ``m = 0``, like ``m**2``), clamped inside the bracket, and bisects instead
    whenever the previous step kept less than half of it. Returns ``reached, multiplier, cost, converged, max_cost_seen, steps``.
    ``matched_cost`` runs the same search for every vector and direction in lockstep (``_search``).
    """
    gen = _search(budget, direction, start=start, growth=growth, max_multiplier=max_multiplier, rel_tol=rel_tol,
                  max_iter=max_iter, known=known)
    try:
        m = next(gen)
        while True:
            m = gen.send(probe(m))
    except StopIteration as stop:
        return stop.value


def _direction_search(seen: Mapping[float, Mapping[str, float]], direction: int, budgets: Sequence[float],
                      cost: str, stage: dict, search: Mapping[str, Any],
                      ) -> Generator[float, float, dict[float, dict[str, Any]]]:
    """The searches of one vector and direction, budgets ascending, each starting from every cost measured so
    far in this direction (``seen``, ``{m: costs}``: the slope point and what the smaller budgets visited)."""
    found = {}
    for b in budgets:
        stage["budget"] = b
        known = {abs(m): c[cost] for m, c in list(seen.items()) if m * direction > 0}
        gen = _search(b, direction, known=known, **search)
        try:
            m = next(gen)
            while True:
                m = gen.send((yield m))
        except StopIteration as stop:
            found[b] = stop.value
    return found


def _lockstep(probe: _CostProbe, tasks: Mapping[tuple[str, int], Generator], bar: Any,
              stages: Mapping[tuple[str, int], dict]) -> dict[tuple[str, int], Any]:
    """Run the searches side by side: each round, every search's next multiplier in one engine pass."""
    out: dict[tuple[str, int], Any] = {}

    def advance(key: tuple[str, int], value: float | None) -> None:
        gen, label = tasks[key], key[0]
        try:
            m = next(gen) if value is None else gen.send(value)
            while m in probe.seen[label]:  # memoised: no pass needed
                m = gen.send(probe.seen[label][m][probe.cost])
            pending[key] = m
        except StopIteration as stop:
            out[key] = stop.value
            pending.pop(key, None)

    pending: dict[tuple[str, int], float] = {}
    for key in tasks:
        advance(key, None)
    while pending:
        probe.measure([(key[0], m) for key, m in pending.items()])
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str("; ".join(f"{label} {'+' if d > 0 else '-'} budget {stages[(label, d)]['budget']:g}"
                                          for label, d in pending) + f"; probes {probe.n_probes}", refresh=False)
        for key, m in list(pending.items()):
            advance(key, probe.seen[key[0]][m][probe.cost])
    return out


def _effects(model: Model, vectors: Mapping[str, SteeringVector], pairs: Sequence[Any],
             mults_of: Mapping[str, Sequence[float]], ab_pairs: Sequence[Any] | None, n_boot: int, seed: int,
             kw: Mapping[str, Any]) -> dict[str, dict[float, dict]]:
    """Per vector and multiplier: log-odds shift from m = 0 (and A/B p_matching shift) with bootstrap intervals.

    The log-odds of all the vectors (entering at one layer) and multipliers come from ONE engine pass;
    the numbers equal ``_pair_logodds``' per vector. ``pairs`` and ``ab_pairs`` were checked by
    ``matched_cost``; the vectors are checked against the model by the engine."""
    mults = {label: sorted(set([0.0, *map(float, ms)])) for label, ms in mults_of.items()}
    conds, where = [()], {}
    for label, ms in mults.items():
        for m in ms:
            if m != 0:
                where[(label, m)] = len(conds)
                conds.append(((vectors[label], m),))
    lp_kw = {k: v for k, v in kw.items() if k != "progress"}
    lp, _ = preference_logprobs(model, pairs, conds, **lp_kw)
    lp = lp.double().numpy()
    logodds = lp[:, :, 0] - lp[:, :, 1]  # (conditions, pairs), as _pair_logodds
    out: dict[str, dict[float, dict]] = {}
    for label, ms in mults.items():
        out[label] = {m: {} for m in ms}
        for m in ms:
            out[label][m] |= effect_vs_zero(logodds[where.get((label, m), 0)], logodds[0], n_boot=n_boot,
                                            seed=seed).columns("effect")
        if ab_pairs is not None:
            ab_kw = {k: v for k, v in kw.items() if k in ("system_prompt", "batch_size", "precision")}
            df = _ab_pair_probs(model, {label: [vectors[label]]}, ab_pairs, ms, progress=False, **ab_kw)
            wide = df.pivot(index="pair", columns="multiplier", values="p_matching")  # (pairs, multipliers)
            base = wide[0.0].to_numpy(np.float64)
            for m in ms:
                out[label][m] |= effect_vs_zero(wide[m].to_numpy(np.float64), base, n_boot=n_boot,
                                                seed=seed).columns("ab")
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
            ``n_boot``, ``seed``, ``utility_kw`` / ``logodds_kw`` for ``utility_per_text`` / ``pair_logodds``,
            ``effect_grid``, ``all_points``, ``progress``).
        ab_pairs: A/B pairs; also report the shift of p(matching letter).
        options: ``MatchedCostConfig`` fields given as keywords (applied to ``config``).

    Returns:
        A ``matched_cost`` result: ``rows`` one per (vector, direction, budget) with the found
        multiplier, its cost and the effect there, the best effect within budget and its multiplier;
        ``points`` every multiplier where the effect was measured (the found ones, the slope's and the
        ``effect_grid``; with ``all_points``, every visited one) with its cost and effect; ``slopes`` the
        effect per sqrt(KL) near m = 0 per vector and direction; ``work`` the cost probes and engine
        passes it took.

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
    texts = check_texts(texts)
    used, norm_info = rescale(vectors, cfg.equal_norm)
    search = {"start": start, "growth": growth, "max_multiplier": max_multiplier, "rel_tol": rel_tol,
              "max_iter": max_iter}
    cutoff = max(budgets)
    groups: dict[int, list[str]] = {}  # vectors entering at the same layer share every engine pass
    for label, vec in used.items():
        groups.setdefault(start_layer(model, condition_deltas(((vec, 1.0),))), []).append(label)
    found: dict[tuple[str, int, float], dict] = {}
    eff: dict[str, dict[float, dict]] = {}
    cost_at: dict[str, dict[float, dict]] = {}
    work = {"cost_probes": 0, "cost_passes": 0, "effect_conditions": 0, "effect_passes": 0}
    bar = tqdm(desc="matched cost", unit="pass", disable=not cfg.progress, leave=False)
    try:
        for layer, labels in sorted(groups.items()):
            group = {label: used[label] for label in labels}
            probe = _CostProbe(model, group, texts, cost, cfg.utility_kw)
            stages = {(label, d): {"budget": budgets[0]} for label in labels for d in (1, -1)}
            bar.set_description(f"matched cost: search at layer {layer}")
            # the slope points first: the searches start where cost ~ m**2 from there reaches the budget
            probe.measure([(label, d * slope_multiplier) for label in labels for d in (1, -1)])
            bar.update(1)
            tasks = {(label, d): _direction_search(probe.seen[label], d, budgets, cost, stages[(label, d)], search)
                     for label in labels for d in (1, -1)}
            for (label, d), answers in _lockstep(probe, tasks, bar, stages).items():
                for b, s in answers.items():
                    found[(label, d, b)] = s
            within = {label: [m for m, s in probe.seen[label].items() if s[cost] <= cutoff * (1 + rel_tol)]
                      for label in labels}  # the visited multipliers within the largest budget, and the slope's
            if cfg.all_points:
                mults_of = within
            else:
                chosen = {label: {d * slope_multiplier for d in (1, -1)} | {
                    found[(label, d, b)]["multiplier"] for d in (1, -1) for b in budgets
                    if found[(label, d, b)]["reached"]} for label in labels}
                grid = [(label, d * f * anchor) for label in labels for d in (1, -1)  # fractions of the largest
                        for anchor in [max((abs(m) for m in within[label] if m * d > 0), default=0.0)] if anchor > 0
                        for f in cfg.effect_grid]
                probe.measure(grid)  # their costs (for the points table), all in one pass
                mults_of = {label: [m for m in chosen[label] | {m for lab, m in grid if lab == label}
                                    if probe.seen[label][m][cost] <= cutoff * (1 + rel_tol)] for label in labels}
            bar.set_description(f"matched cost: effects at layer {layer}")
            eff |= _effects(model, group, pairs, mults_of, ab_pairs, n_boot, seed, cfg.logodds_kw)
            bar.update(1)
            for label in labels:
                cost_at[label] = {m: probe.seen[label][m] for m in eff[label] if m != 0} | {
                    0.0: {"kl": 0.0, "perplexity": 0.0}}
            work["cost_probes"] += probe.n_probes
            work["cost_passes"] += probe.reference.n_passes
            work["effect_conditions"] += 1 + sum(len([m for m in eff[label] if m != 0]) for label in labels)
            work["effect_passes"] += 1
    finally:
        bar.close()
    rows, points, slopes = [], [], []
    for label in used:
        e, c_at = eff[label], cost_at[label]
        for m in sorted(e):
            points.append({"vector": label, "direction": int(np.sign(m)), "multiplier": m,
                           "cost": c_at[m][cost], "kl": c_at[m]["kl"],
                           "perplexity_ratio": 1.0 + c_at[m]["perplexity"]} | e[m])
        for d in (1, -1):
            m0 = d * slope_multiplier
            kl0 = c_at[m0]["kl"]
            e0 = e[m0]["effect"]
            slopes.append({"vector": label, "direction": d, "multiplier": m0, "kl": kl0, "effect": e0,
                           "slope": e0 / math.sqrt(kl0) if kl0 > 0 else None})
            for b in budgets:
                s = found[(label, d, b)]
                inside = sorted((m for m in e if m * d > 0 and c_at[m][cost] <= b * (1 + rel_tol)), key=abs)
                series = [d * e[m]["effect"] for m in inside]
                best = max(inside, key=lambda m: d * e[m]["effect"], default=None)
                row = {"vector": label, "direction": d, "budget": b, "reached": s["reached"],
                       "converged": s["converged"], "multiplier": s["multiplier"], "cost": s["cost"],
                       "max_cost_seen": s["max_cost_seen"], "search_steps": s["steps"]}
                at = e.get(s["multiplier"], {}) if s["reached"] else {}
                for k in ("effect", "effect_ci_low", "effect_ci_high", "ab", "ab_ci_low", "ab_ci_high"):
                    if k in at or k.startswith("effect"):
                        row[k] = at.get(k)
                row |= {"best_effect": e[best]["effect"] if best is not None else None,
                        "best_ci_low": e[best]["effect_ci_low"] if best is not None else None,
                        "best_ci_high": e[best]["effect_ci_high"] if best is not None else None,
                        "best_multiplier": best, "best_cost": c_at[best][cost] if best is not None else None,
                        "n_within_budget": len(inside),
                        "monotone": bool(all(y >= x for x, y in zip(series, series[1:])))}
                rows.append(row)
    return result(MATCHED_COST, cost=cost, budgets=budgets,
                  search={"start": start, "growth": growth, "max_multiplier": max_multiplier, "rel_tol": rel_tol,
                          "max_iter": max_iter, "slope_multiplier": slope_multiplier, "bracket": "power law",
                          "effect_points": "all" if cfg.all_points else "found+grid",
                          "effect_grid": list(cfg.effect_grid)},
                  equal_norm=norm_info, norms={k: v.norm for k, v in used.items()},
                  n_pairs=len(pairs), n_texts=len(texts), n_ab_pairs=len(ab_pairs) if ab_pairs else 0,
                  n_boot=n_boot, seed=seed, work=work,
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
