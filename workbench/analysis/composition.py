"""Composition of steering vectors: several behaviors steered at once, synergy or interference.

BiPO (Cao et al. 2024, arXiv 2406.00045, section 4.4) adds two persona vectors together and finds
that both behaviors move. ``composition_table`` measures this for any set of vectors, each with its
own multiplier, at the same or different hooks (applied together with ``workbench.steer``): every
behavior is scored on its OWN held-out pairs (mean log-odds ``log p(matching) - log p(not
matching)``, as in ``workbench.engine.scoring.preference_logodds``) under no steering, each vector alone, and
the combination. For each behavior the table shows

* ``own_effect``: its own vector alone (change against no steering);
* ``cross_effect``: the sum of the other vectors' effects on it, each alone (cross-talk);
* ``combined_effect``: all vectors together;
* ``interaction = combined - (own + cross)``: zero if effects add; negative means the vectors
  interfere, positive that they reinforce each other beyond the sum (synergy);
* ``retained = combined / own``: the share of the behavior's own effect left in the combination.

Effects against no steering and their intervals follow the one rule of ``workbench.evaluate.effects``
(mean shift over pairs, paired percentile bootstrap). ``composition_table`` returns a
``CompositionResult`` (a ``composition`` result).

``hook_deltas`` checks the mechanics: the change of the activation at each hook under the
combination (at one hook point the vectors add exactly: ``base + m1 v1 + m2 v2``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.backend import Model
from workbench.core.results import COMPOSITION, Result, records, result, result_table
from workbench.core.vector import SteeringVector, parse_hook_name
from workbench.data.pairs import check_pairs
from workbench.engine.conditions import Condition
from workbench.engine.scoring import preference_logodds
from workbench.engine.steering import steer
from workbench.evaluate.effects import effect_vs_zero


def _check(vectors: Mapping[str, SteeringVector], multipliers: Mapping[str, float] | float,
           eval_pairs: Mapping[str, Sequence[Any]]) -> tuple[dict[str, float], dict[str, list[Any]]]:
    """The multiplier of each vector and each behavior's checked pairs (the inputs, checked once)."""
    if len(vectors) < 1:
        raise ValueError("give at least one vector")
    if isinstance(multipliers, (int, float)):
        mults = {k: float(multipliers) for k in vectors}
    else:
        missing = [k for k in vectors if k not in multipliers]
        if missing:
            raise ValueError(f"multipliers has no entry for {missing} (keys: {list(multipliers)})")
        mults = {k: float(multipliers[k]) for k in vectors}
    missing = [k for k in vectors if k not in eval_pairs or not eval_pairs[k]]
    if missing:
        raise ValueError(f"eval_pairs has no held-out pairs for {missing}: each vector's behavior is "
                         "measured on its own pairs")
    return mults, {k: check_pairs(eval_pairs[k], f"eval_pairs[{k!r}]") for k in vectors}


def composition_logodds(model: Model, vectors: Mapping[str, SteeringVector],
                        eval_pairs: Mapping[str, Sequence[Any]], multipliers: Mapping[str, float] | float = 1.0,
                        subsets: str = "singles", *, n_boot: int = 1000, seed: int = 0,
                        **kwargs: Any) -> pd.DataFrame:
    """Mean held-out log-odds of every behavior under each steering condition (tidy, long form).

    Args:
        model: the model (unchanged after the call).
        vectors: ``{behavior: vector}``; the keys name the behaviors.
        eval_pairs: ``{behavior: held-out pairs}`` for every key of ``vectors``.
        multipliers: one for all, or ``{behavior: multiplier}``.
        subsets: ``"singles"`` (none, each alone, all together) or ``"all"`` (every subset).
        n_boot, seed: the bootstrap of the effects' intervals (``workbench.evaluate.effects``).
        kwargs: passed to ``preference_logodds`` (``system_prompt``, ``batch_size``).

    Returns:
        The long table (the ``conditions`` of a composition result): columns ``condition``
        (``"none"``, ``"power"``, ``"power+wealth"`` ...), ``n_vectors``, ``behavior``, ``logodds``,
        ``effect`` (against ``"none"``) and its interval ``effect_ci_low``, ``effect_ci_high``.

    Raises:
        ValueError, TypeError: a behavior's pairs are missing or not preference pairs (``check_pairs``).
    """
    mults, pairs = _check(vectors, multipliers, eval_pairs)
    return _composition_logodds(model, vectors, pairs, mults, subsets, n_boot=n_boot, seed=seed, **kwargs)


def _composition_logodds(model: Model, vectors: Mapping[str, SteeringVector], eval_pairs: Mapping[str, list[Any]],
                         mults: dict[str, float], subsets: str, *, n_boot: int, seed: int,
                         **kwargs: Any) -> pd.DataFrame:
    """``composition_logodds`` on checked inputs (``_check``)."""
    keys = list(vectors)
    if subsets == "singles":
        combos = [()] + [(k,) for k in keys] + ([tuple(keys)] if len(keys) > 1 else [])
    elif subsets == "all":
        combos = [c for r in range(len(keys) + 1) for c in itertools.combinations(keys, r)]
    else:
        raise ValueError(f"subsets={subsets!r}: use 'singles' or 'all'")
    conditions: list[Condition] = [[(vectors[k], mults[k]) for k in c] for c in combos]
    rows = []
    for behavior in keys:
        lo = preference_logodds(model, eval_pairs[behavior], conditions, **kwargs)  # (n_cond, n)
        for combo, values in zip(combos, lo):
            effect = effect_vs_zero(values, lo[0], n_boot=n_boot, seed=seed)
            rows.append({"condition": "+".join(combo) or "none", "n_vectors": len(combo), "behavior": behavior,
                         "logodds": float(values.mean())} | effect.columns())
    table = pd.DataFrame(rows)
    table.attrs["multipliers"] = mults
    return table


class CompositionResult(Result):
    """A ``composition`` result (``workbench.core.results.Result``): ``.table()`` one row per behavior
    (module docstring); ``.conditions`` the long form (``composition_logodds``); ``.multipliers`` the
    multiplier of each vector. Made as ``CompositionResult(table, conditions, multipliers)`` or from a
    composition mapping."""

    KIND = COMPOSITION

    def __init__(self, table: pd.DataFrame | Mapping[str, Any], conditions: pd.DataFrame | None = None,
                 multipliers: Mapping[str, float] | None = None) -> None:
        if isinstance(table, pd.DataFrame):
            table = result(COMPOSITION, multipliers=dict(multipliers or {}), rows=table, conditions=conditions)
        super().__init__(table)

    @property
    def conditions(self) -> pd.DataFrame:
        """The long table: every behavior under every condition."""
        return result_table(self, "conditions")

    @property
    def multipliers(self) -> dict[str, float]:
        return dict(self["multipliers"])

    def to_dict(self, **info: Any) -> dict[str, Any]:
        """JSON-ready: ``{"kind": "composition", "schema_version", **info, "multipliers", "rows", "conditions"}``."""
        return dict(self.with_info(**info)) if info else dict(self)

    def records(self) -> list[dict[str, Any]]:
        """The per-behavior table as JSON-ready row dicts."""
        return records(self["rows"])



def composition_table(model: Model, vectors: Mapping[str, SteeringVector],
                      eval_pairs: Mapping[str, Sequence[Any]], multipliers: Mapping[str, float] | float = 1.0,
                      *, n_boot: int = 1000, seed: int = 0, **kwargs: Any) -> CompositionResult:
    """Per behavior: own, cross, combined effect, interaction and retained share (module docstring).

    The arguments are those of ``composition_logodds`` (``kwargs``: ``system_prompt``, ``batch_size``);
    the inputs are checked here, once (a behavior's pairs by ``workbench.data.pairs.check_pairs``).

    Example:
        >>> res = composition_table(model, {"power": p, "wealth": w},
        ...                         {"power": power_test, "wealth": wealth_test}, multipliers=1.0)
        >>> res.table()[["behavior", "own_effect", "combined_effect", "interaction"]]
    """
    mults, pairs = _check(vectors, multipliers, eval_pairs)  # once; nothing below checks again
    long = _composition_logodds(model, vectors, pairs, mults, "singles", n_boot=n_boot, seed=seed, **kwargs)
    mults = long.attrs["multipliers"]
    keys = list(vectors)
    combined = "+".join(keys)
    rows = []
    for b in keys:
        sub = long[long.behavior == b].set_index("condition")
        own = float(sub.effect[b])
        cross = float(sum(sub.effect[k] for k in keys if k != b))
        comb = float(sub.effect[combined])
        rows.append({"behavior": b, "multiplier": mults[b], "base_logodds": float(sub.logodds["none"]),
                     "own_effect": own, "cross_effect": cross, "combined_effect": comb,
                     "interaction": comb - own - cross, "retained": comb / own if own != 0 else float("nan")})
    return CompositionResult(pd.DataFrame(rows), long, dict(mults))


@torch.no_grad()
def hook_deltas(model: Model, tokens: Int[Tensor, "batch pos"], vectors: Sequence[SteeringVector],
                multipliers: Sequence[float], attention_mask: Int[Tensor, "batch pos"] | None = None,
                ) -> dict[str, Float[Tensor, "batch pos d_model"]]:
    """Activation at each vector's hook under the combination minus the unsteered activation.

    For vectors sharing one hook the delta there is exactly ``sum_i m_i v_i``; a vector at a later
    hook also sees what the earlier ones changed upstream.
    """
    names = sorted({v.hook_name for v in vectors})
    mask = attention_mask if attention_mask is not None else torch.ones_like(tokens)
    stop = max(parse_hook_name(n)[0] for n in names) + 1
    _, base = model.run_with_cache(tokens, attention_mask=mask, names_filter=names, stop_at_layer=stop)
    with steer(model, list(vectors), list(multipliers)):
        _, steered = model.run_with_cache(tokens, attention_mask=mask, names_filter=names, stop_at_layer=stop)
    return {n: steered[n] - base[n] for n in names}
