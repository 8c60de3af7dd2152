"""Route comparison: do two steering vectors (methods, layers, training checkpoints) work through the same
components?

The *route* of a vector is its per-component profile of exact activation patching
(``workbench.analysis.patching``): the mean effect each head, MLP and the direct path carry, per
direction (necessity, sufficiency). Two routes are compared by the cosine of their profiles over the
components both have (heads, MLPs and the direct path: blocks are left out, they sum their heads and MLP).
The cosine of the effects equals that of the shares (a share is the effect over the vector's own total
effect, one constant per vector), so routes of vectors of different strength compare directly.
A profile may also come from attribution patching (``workbench.analysis.attribution``: the same rows,
one forward/backward pair instead of one pass per component), for sweeps over many vectors such as a
run's training checkpoints; the table's ``estimate`` column says which (``exact``, ``attribution``), and
the attribution result's rank agreement with the exact one is what says whether it may stand in.
Comparisons "at equal utility cost" (BiPO, Cao et al. 2024, arXiv 2406.00045, against CAA, Rimsky et al.
2023, arXiv 2312.06681, and RePS, Wu et al. 2025, arXiv 2505.20809) take each vector's multiplier from a
``matched_cost`` result (``route_multipliers``).

    >>> ms = route_multipliers(load_result("results/full/compare_power-seeking.json"), budget=0.1)
    >>> res = route_patching(model, {k: (vectors[k], ms[k]) for k in ("bipo", "caa")}, test_pairs)
    >>> res.table("cosines")
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.analysis.attribution import attribution_patching
from workbench.analysis.patching import PatchingConfig, activation_patching
from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.results import ACTIVATION_PATCHING, ATTRIBUTION_PATCHING, MATCHED_COST, MECHANISM_ROUTES, Result, result
from workbench.core.vector import SteeringVector

#: the component types a route profile is made of (a block is the sum of its heads and MLP)
PROFILE_TYPES = ("head", "mlp", "direct")
#: the results a profile may come from, and what the table calls each
_ESTIMATES = {ACTIVATION_PATCHING: "exact", ATTRIBUTION_PATCHING: "attribution"}


def route_profiles(results: Mapping[str, Result]) -> pd.DataFrame:
    """``{label: activation_patching or attribution_patching result}`` -> one long table, ``label`` first.

    The ``estimate`` column is ``exact`` (activation patching) or ``attribution``.
    """
    if not results:
        raise ValueError("results={}: give at least one activation_patching result")
    frames = []
    for label, res in results.items():
        if res.get("kind") not in _ESTIMATES:
            raise ValueError(f"results[{label!r}] is a {res.get('kind')!r} result, not {ACTIVATION_PATCHING!r} "
                             f"or {ATTRIBUTION_PATCHING!r}")
        t = res.table().copy()
        t.insert(0, "label", str(label))
        t.insert(1, "estimate", _ESTIMATES[res["kind"]])
        t["multiplier"] = float(res["multiplier"])
        t["total_effect"] = float(res["total_effect"])
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def profile_cosines(profiles: pd.DataFrame, column: str = "effect") -> pd.DataFrame:
    """Cosine of every two labels' profiles of ``column``, per direction, over all profile components
    (``"all"``) and per type (``"head"``, ``"mlp"``).

    Returns:
        Columns ``direction, components, label_a, label_b, n_components, cosine``.
    """
    rows = []
    labels = list(dict.fromkeys(profiles["label"]))
    for d, g in profiles[profiles["type"].isin(PROFILE_TYPES)].groupby("direction", sort=False):
        wide = g.pivot_table(index=["component", "type"], columns="label", values=column)
        for subset in ("all", "head", "mlp"):
            w = wide if subset == "all" else wide[wide.index.get_level_values("type") == subset]
            for a, b in itertools.combinations(labels, 2):
                if a not in w or b not in w:
                    continue
                both = w[[a, b]].dropna()
                rows.append({"direction": d, "components": subset, "label_a": a, "label_b": b,
                             "n_components": len(both), "cosine": _cosine(both[a].to_numpy(), both[b].to_numpy())})
    return pd.DataFrame(rows, columns=["direction", "components", "label_a", "label_b", "n_components", "cosine"])


def compare_routes(results: Mapping[str, Result], column: str = "effect") -> Result:
    """The route comparison of patching results (exact or attribution) of several vectors (module docstring).

    Returns:
        A ``mechanism_routes`` result: ``rows`` (``route_profiles``: every component of every label
        with its effect and share and their intervals, the label's ``multiplier`` and ``total_effect``),
        ``cosines`` (``profile_cosines``), ``labels``, ``multipliers`` ({label: m}).
    """
    profiles = route_profiles(results)
    return result(MECHANISM_ROUTES, rows=profiles, cosines=profile_cosines(profiles, column),
                  labels=[str(k) for k in results], multipliers={str(k): float(r["multiplier"])
                                                                 for k, r in results.items()})


def route_patching(model: Model, vectors: Mapping[str, tuple[SteeringVector, float]], pairs: Sequence[Any],
                   config: PatchingConfig | None = None, estimate: str = "exact", **options: Any) -> Result:
    """``activation_patching`` of each ``{label: (vector, multiplier)}`` and their ``compare_routes``.

    Labels are free: methods (``"bipo"``, ``"caa"``), layers, or training checkpoints
    (``"epoch 1"``, ...). ``estimate="attribution"`` takes each profile from ``attribution_patching``
    instead (one forward/backward pair per vector). The per-label patching results are kept under
    ``results`` ({label: result}).
    """
    if estimate not in ("exact", "attribution"):
        raise ValueError(f"estimate={estimate!r}: choose 'exact' or 'attribution'")
    patch = activation_patching if estimate == "exact" else attribution_patching
    cfg = with_options(PatchingConfig, config, options, "route_patching")
    if not vectors:
        raise ValueError("vectors={}: give {label: (vector, multiplier)}")
    runs = {}
    for label, spec in vectors.items():
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(f"vectors[{label!r}] must be a (vector, multiplier) tuple")
        runs[str(label)] = patch(model, spec[0], pairs, float(spec[1]), cfg)
    return compare_routes(runs).with_info(results={k: dict(v) for k, v in runs.items()})


def route_multipliers(compare: Mapping[str, Any], budget: float, direction: int = 1) -> dict[str, float]:
    """``{vector: multiplier}`` at one utility-cost ``budget`` of a ``matched_cost`` result (``compare``).

    Raises:
        ValueError: not a ``matched_cost`` result, or no row at that budget and direction.
    """
    if compare.get("kind") != MATCHED_COST:
        raise ValueError(f"compare is a {compare.get('kind')!r} result, not {MATCHED_COST!r}")
    out = {r["vector"]: float(r["multiplier"]) for r in compare["rows"]
           if r.get("direction") == direction and np.isclose(float(r.get("budget", np.nan)), budget)
           and r.get("multiplier") is not None}
    if not out:
        have = sorted({r.get("budget") for r in compare["rows"]})
        raise ValueError(f"budget={budget}: the matched_cost result has no row at it (budgets: {have})")
    return out


__all__ = ["PROFILE_TYPES", "compare_routes", "route_multipliers", "profile_cosines", "route_patching",
           "route_profiles"]
