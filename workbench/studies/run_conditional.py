"""The ``workbench conditional`` run: CAST-gated steering vectors (Lee et al. 2024, arXiv 2409.05907).

``workbench.analysis.conditional.conditional_steering`` fits a condition (the topic's questions against the
other embedded questions and instructions; grid over layer, comparator and threshold by F1) and measures
the gated vectors: the effect kept on the topic's held-out pairs and the KL spared on other prompts. The run
checks its options and paths before the model loads, writes the result JSON atomically and, when asked,
the fitted condition (``SteeringCondition.save``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.analysis.conditional import conditional_steering
from workbench.data.behaviors import list_behaviors
from workbench.studies.runs import (Log, ModelOptions, RunError, check_at_least_one, check_out, load_vectors, silent,
                                    write_result)
from workbench.viz.report import markdown_table


@dataclass(kw_only=True)
class ConditionalRun(ModelOptions):
    """Options of ``workbench conditional``."""

    vector: Sequence[str]  # vector directories (BiPO, CAA, RePS ...)
    out: str  # result JSON (kind "conditional")
    topic: str = "power-seeking"  # the embedded behavior whose questions open the gate
    layers: Sequence[int] | None = None  # candidate condition layers (None: all up to the vectors' layer)
    multiplier: float = 1.0  # m of m * v when the gate is open
    limit: int | None = None  # at most N questions per group and split
    save_condition: str | None = None  # also write the fitted condition to this directory
    n_boot: int = 1000
    seed: int = 0


def conditional_run(config: ConditionalRun, log: Log = silent) -> dict[str, Any]:
    """Fit the condition, measure the gated vectors, write ``config.out`` (and the condition); returns the result."""
    check_at_least_one(config, "limit", "n_boot")
    if config.limit is not None and config.limit < 2:
        raise RunError(f"--limit must be >= 2, got {config.limit}")
    if config.topic not in list_behaviors() or config.topic == "refusal":
        raise RunError(f"--topic {config.topic!r}: not an embedded behavior with questions "
                       f"({', '.join(b for b in list_behaviors() if b != 'refusal')})")
    config.check_model()
    out = check_out("--out", config.out, kind="file")
    cond_dir = check_out("--save-condition", config.save_condition, kind="dir")
    try:
        vectors, sources = load_vectors(config.vector)
    except ValueError as exc:
        raise RunError(f"--vector: {exc}") from None
    model = config.load_model()
    log(f"fitting the condition for {config.topic} and measuring {', '.join(vectors)}")
    try:
        res = conditional_steering(model, vectors, config.topic, layers=config.layers, multiplier=config.multiplier,
                                   limit=config.limit, n_boot=config.n_boot, seed=config.seed)
    except ValueError as exc:
        raise RunError(f"conditional: {exc}") from None
    condition = res.steering_condition
    res["sources"] = sources
    if cond_dir is not None:
        condition.save(cond_dir)
        res["condition"]["saved_to"] = str(config.save_condition)
    return write_result(res, out, model)


def format_conditional(result: Mapping[str, Any]) -> str:
    """A conditional result as text: the chosen condition and a markdown table per vector."""
    c = result["condition"]
    head = (f"condition: {c['hook_name']} (layer {c['layer']}), score {c['comparator']} {c['threshold']:.4g}; "
            f"F1 train {c['f1_train']:.3f}, held-out {c['f1_test']:.3f} (precision {c['precision_test']:.3f}, "
            f"recall {c['recall_test']:.3f})")
    keys = ("vector", "multiplier", "effect_ungated", "effect_gated", "kept", "kept_ci_low", "kept_ci_high",
            "kl_others_ungated", "kl_others_gated", "open_topic", "open_others")
    rows = [{k: r[k] for k in keys} for r in result["rows"]]
    import pandas as pd  # the table only

    return head + "\n\n" + markdown_table(pd.DataFrame(rows))


__all__ = ["ConditionalRun", "conditional_run", "format_conditional"]
