"""Side effects of steering: the entanglement matrix of behavior vectors (SteeringControl / SteeringSafety 2025).

A vector trained for one behavior should move that behavior and leave the others alone.
SteeringControl (Siu et al. 2025, arXiv 2509.13450, later SteeringSafety) measures each vector's
effect on behaviors it was not trained for ("entanglement") and on general capability. Here each
vector, at one multiplier of its own (its matched-cost multiplier from a ``compare`` result,
``matched_multipliers``, or a given one), is scored on every target set of held-out pairs (the other
behaviors', the refusal pairs) and, when given, on TruthfulQA MC1 (Lin et al. 2021):

* on a set of pairs, the effect is the mean shift of the held-out log-odds ``log p(matching) - log
  p(not matching)`` from ``m = 0`` with its paired bootstrap interval
  (``workbench.evaluate.effects.effect_vs_zero``, the rule ``matched_cost`` uses, on the same scores:
  the diagonal is the on-target effect ``compare`` reports at that multiplier);
* on TruthfulQA MC1, the shift of the accuracy (a share of questions, not nats);
* ``normalized`` divides each effect by the vector's on-target effect (its own behavior's pairs), so a
  row reads "how much of the intended effect this vector also has on that target" (1 on the
  diagonal). TruthfulQA's column is accuracy points per on-target nat.

``measure_entanglement`` returns an ``entanglement`` result (``workbench.core.results``): ``rows`` one per
(vector, target); ``workbench.viz.comparisons.plot_entanglement`` draws the matrix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
from workbench.core.results import ENTANGLEMENT, MATCHED_COST, Result, ResultFormatError, from_dict, result
from workbench.core.vector import SteeringVector
from workbench.data.pairs import MCQuestion, check_pairs
from workbench.engine.scoring import preference_logprobs
from workbench.evaluate.effects import effect_vs_zero
from workbench.evaluate.truthfulqa import check_truthfulqa, truthfulqa_per_question

#: the target name of TruthfulQA MC1 in the rows
TRUTHFULQA_TARGET = "truthfulqa_mc1"


@dataclass(frozen=True)
class EntanglementConfig:
    """How ``entanglement`` scores the vectors (one field per option)."""

    multiplier: float = 1.0  # m of every vector not in `multipliers`
    multipliers: Mapping[str, float] | None = None  # {vector label: m}: e.g. matched-cost multipliers
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # the chat prompt's system turn
    batch_size: int = 16  # pairs per forward pass
    max_length: int | None = 256  # prompts cut from the left beyond this many tokens (as compare)
    n_boot: int = 1000  # bootstrap resamples of every interval (0: none)
    seed: int = 0  # bootstrap seed
    progress: bool = False  # progress bars

    def __post_init__(self) -> None:
        object.__setattr__(self, "multipliers", {str(k): float(v) for k, v in (self.multipliers or {}).items()})
        for name, m in [("multiplier", self.multiplier), *self.multipliers.items()]:
            if isinstance(m, bool) or not isinstance(m, numbers.Real) or not math.isfinite(m):
                raise ValueError(f"multiplier of {name!r} must be a finite number, got {m!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 0:
            raise ValueError(f"n_boot must be an integer >= 0, got {self.n_boot!r}")


def matched_multipliers(compare: Mapping[str, Mapping[str, Any]], vector: str, budget: float,
                        direction: int = 1) -> dict[str, float]:
    """The multiplier each ``compare`` (``matched_cost``) result found for ``vector`` at ``budget``.

    Args:
        compare: ``{label: matched_cost result}`` (e.g. one per behavior).
        vector: the vector label inside each result (``"bipo"``).
        budget: one of the results' budgets.
        direction: ``1`` (toward the behavior) or ``-1``.

    Returns:
        ``{label: multiplier}``.

    Raises:
        ValueError: a result that is not ``matched_cost``, or with no reached row for this vector,
            direction and budget (named).
    """
    out = {}
    for label, res in compare.items():
        res = from_dict(res)
        if res.kind != MATCHED_COST:
            raise ValueError(f"compare[{label!r}] is a {res.kind} result, not {MATCHED_COST}")
        rows = res.table("rows")
        hit = rows[(rows["vector"] == vector) & (rows["direction"] == direction) & (rows["budget"] == float(budget))
                   & rows["reached"].astype(bool)]
        if hit.empty:
            raise ValueError(f"compare[{label!r}]: no reached row for vector {vector!r}, direction {direction:+d}, "
                             f"budget {budget:g} (budgets: {sorted(set(rows['budget']))})")
        out[str(label)] = float(hit["multiplier"].iloc[0])
    return out


def _logodds(model: Model, pairs: Sequence[Any], conditions: list, cfg: EntanglementConfig) -> np.ndarray:
    """``(n_conditions, n_pairs)`` float64 log-odds, computed as ``pair_logodds`` computes them."""
    lp, _ = preference_logprobs(model, pairs, conditions, system_prompt=cfg.system_prompt, max_length=cfg.max_length,
                                batch_size=cfg.batch_size, progress=cfg.progress)
    lp = lp.double().numpy()
    return lp[:, :, 0] - lp[:, :, 1]


def measure_entanglement(model: Model, vectors: Mapping[str, SteeringVector], targets: Mapping[str, Sequence[Any]],
                 config: EntanglementConfig | None = None, *,
                 truthfulqa: tuple[Sequence[MCQuestion], Sequence[MCQuestion] | None] | None = None,
                 on_target: Mapping[str, str] | None = None, **options: Any) -> Result:
    """Each vector's effect on every target set of held-out pairs (and TruthfulQA MC1), normalised by its own.

    Args:
        model: the model (unchanged; no hook remains).
        vectors: ``{label: vector}``, e.g. one BiPO vector per behavior, labelled by the behavior.
        targets: ``{name: held-out preference pairs}``: every behavior's, the refusal pairs.
        config: the options (``EntanglementConfig``: ``multiplier``, ``multipliers``, ``system_prompt``,
            ``batch_size``, ``max_length``, ``n_boot``, ``seed``, ``progress``).
        truthfulqa: ``(mc1, mc2)`` question lists (``workbench.data.load_truthfulqa``); MC1 is scored.
        on_target: ``{vector label: target name}`` of each vector's own behavior (default: the target
            of the same name, when there is one).
        **options: ``EntanglementConfig`` fields given as keywords.

    Returns:
        An ``entanglement`` result: ``rows`` one per (vector, target): ``vector, target, multiplier,
        n, effect, effect_ci_low, effect_ci_high, unit`` (``"logodds"`` or ``"mc1_accuracy"``),
        ``on_target`` (the vector's own effect) and ``normalized`` (effect / on-target effect; NaN
        without one); ``vectors``, ``targets``, ``multipliers``, ``on_target``.

    Raises:
        ValueError, TypeError: no vector or target, pairs that are not preference pairs, an
            ``on_target`` naming an unknown target.

    Example:
        >>> res = measure_entanglement(model, {"power-seeking": v_power, "wealth-seeking": v_wealth},
        ...                    {b: load_behavior(b, "test") for b in ("power-seeking", "wealth-seeking")},
        ...                    multipliers={"power-seeking": 1.2, "wealth-seeking": 0.9})
        >>> res.table()[["vector", "target", "normalized"]]
    """
    cfg = with_options(EntanglementConfig, config, options, "measure_entanglement")
    if not vectors:
        raise ValueError("vectors is empty: give at least one vector")
    if not targets:
        raise ValueError("targets is empty: give at least one set of held-out pairs")
    targets = {str(name): check_pairs(pairs, f"targets[{name!r}]") for name, pairs in targets.items()}
    own = {label: name for label, name in (on_target or {}).items()}
    for label, name in own.items():
        if name not in targets:
            raise ValueError(f"on_target[{label!r}] = {name!r} is not a target ({', '.join(targets)})")
    own = {label: own.get(label, label if label in targets else None) for label in vectors}
    mc1 = check_truthfulqa(truthfulqa[0], None)[0] if truthfulqa is not None else []
    labels = list(vectors)
    mult = {label: cfg.multipliers.get(label, cfg.multiplier) for label in labels}
    conditions = [()] + [((vectors[label], mult[label]),) for label in labels]
    rows = []
    for name, pairs in targets.items():  # one pass per target set: every vector's condition together
        lo = _logodds(model, pairs, conditions, cfg)  # (1 + n_vectors, n_pairs)
        for k, label in enumerate(labels):
            e = effect_vs_zero(lo[1 + k], lo[0], n_boot=cfg.n_boot, seed=cfg.seed)
            rows.append({"vector": label, "target": name, "multiplier": mult[label], "n": e.n, "unit": "logodds"}
                        | e.columns())
    if mc1:
        for label in labels:
            m = mult[label]
            per = truthfulqa_per_question(model, {label: vectors[label]}, mc1, None, [0.0] if m == 0 else [0.0, m],
                                          system_prompt=cfg.system_prompt, batch_size=cfg.batch_size,
                                          progress=cfg.progress)
            wide = per.pivot(index="question", columns="multiplier", values="score")  # (questions, multipliers)
            e = effect_vs_zero(wide[m].to_numpy(np.float64), wide[0.0].to_numpy(np.float64), n_boot=cfg.n_boot,
                               seed=cfg.seed)
            rows.append({"vector": label, "target": TRUTHFULQA_TARGET, "multiplier": mult[label], "n": e.n,
                         "unit": "mc1_accuracy"} | e.columns())
    table = pd.DataFrame(rows)
    diag = {label: float(table[(table.vector == label) & (table.target == own[label])]["effect"].iloc[0])
            if own[label] is not None else math.nan for label in labels}
    table["on_target"] = table["vector"].map(diag)
    table["normalized"] = [e / d if d and math.isfinite(d) else math.nan
                           for e, d in zip(table["effect"], table["on_target"])]
    return result(ENTANGLEMENT, vectors=labels, targets=list(targets) + ([TRUTHFULQA_TARGET] if mc1 else []),
                  multipliers=mult, on_target=own,
                  model=str(model.cfg.model_name), n_boot=cfg.n_boot, seed=cfg.seed,
                  system_prompt=cfg.system_prompt, rows=table)


def entanglement_matrix(res: Mapping[str, Any], value: str = "normalized") -> pd.DataFrame:
    """The matrix of an ``entanglement`` result: vectors as rows, targets as columns, in the result's order.

    Raises:
        ResultFormatError: not an entanglement result, or no such column.
    """
    res = from_dict(res)
    if res.kind != ENTANGLEMENT:
        raise ResultFormatError(f"entanglement_matrix reads an {ENTANGLEMENT} result, not {res.kind}")
    df = res.table()
    if value not in df.columns:
        raise ResultFormatError(f"entanglement_matrix: no column {value!r} in {list(df.columns)}")
    wide = df.pivot(index="vector", columns="target", values=value)
    return wide.reindex(index=list(res.get("vectors") or wide.index), columns=list(res.get("targets") or wide.columns))


__all__ = ["TRUTHFULQA_TARGET", "EntanglementConfig", "entanglement_matrix", "matched_multipliers",
           "measure_entanglement"]
