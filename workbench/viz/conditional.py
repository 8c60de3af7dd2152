"""The figure of a ``conditional`` result (CAST, Lee et al. 2024, arXiv 2409.05907): the condition's grid
search, the held-out prompts' scores against the threshold, and what the gate keeps and spares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.core.results import CONDITIONAL, from_dict
from workbench.viz.style import COLUMN_WIDTH, OKABE_ITO, legend, method_color, subplots


def _grid_panel(ax: Axes, res: Mapping[str, Any]) -> None:
    cond = res["condition"]
    rows = res["grid"]
    for comp, colour in (("above", OKABE_ITO["blue"]), ("below", OKABE_ITO["orange"])):
        pts = sorted((r["layer"], r["f1"]) for r in rows if r["comparator"] == comp)
        if pts:
            ax.plot(*zip(*pts), marker="o", color=colour, label=f"score {'>' if comp == 'above' else '<'} t")
    best = [r["f1"] for r in rows if r["layer"] == cond["layer"] and r["comparator"] == cond["comparator"]]
    if best:
        ax.plot([cond["layer"]], [max(best)], marker="*", markersize=9, color=OKABE_ITO["vermillion"],
                linestyle="none", label="chosen")
    ax.set_xlabel("condition layer")
    ax.set_ylabel("F1 (training prompts)")
    ax.set_title("(a) grid search")
    legend(ax)


def _score_panel(ax: Axes, res: Mapping[str, Any]) -> None:
    cond = res["condition"]
    rows = res["scores"]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    rng = np.random.default_rng(0)
    for i, g in enumerate(groups):
        s = np.array([r["score"] for r in rows if r["group"] == g], dtype=float)
        topic = g == cond.get("topic")
        ax.scatter(i + rng.uniform(-0.2, 0.2, s.size), s, s=6,
                   color=OKABE_ITO["vermillion"] if topic else OKABE_ITO["blue"])
    ax.axhline(cond["threshold"], color="0.3", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [g.replace("-", "-\n") for g in groups])
    ax.set_ylabel("cos(h, tanh(P h))")
    ax.set_title(f"(b) held-out prompts, layer {cond['layer']} (F1 {cond['f1_test']:.2f})")


def _bars(ax: Axes, res: Mapping[str, Any], key: str, ylabel: str, title: str) -> None:
    rows = res["rows"]
    x = np.arange(len(rows))
    for j, (suffix, hatch) in enumerate((("ungated", ""), ("gated", "///"))):
        mean = np.array([r[f"{key}_{suffix}"] for r in rows], dtype=float)
        lo = np.array([r.get(f"{key}_{suffix}_ci_low", np.nan) for r in rows], dtype=float)
        hi = np.array([r.get(f"{key}_{suffix}_ci_high", np.nan) for r in rows], dtype=float)
        err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
        colours = [method_color(r["method"]) or OKABE_ITO["black"] for r in rows]
        ax.bar(x + (j - 0.5) * 0.38, mean, width=0.36, color=colours, hatch=hatch, alpha=1.0 if j == 0 else 0.55,
               yerr=err, capsize=2, error_kw={"linewidth": 0.6}, label=suffix)
    ax.set_xticks(x, [r["vector"] for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    legend(ax)


def plot_conditional(result: Mapping[str, Any], ax: Axes | None = None) -> Figure:
    """Four panels of a ``conditional`` result: F1 per condition layer, the held-out scores by group with the
    threshold, the topic's log-odds effect with and without the gate, the KL on other prompts with and
    without it (``ax`` given: only the effect panel)."""
    res = from_dict(dict(result))
    if res["kind"] != CONDITIONAL:
        raise ValueError(f"expected a {CONDITIONAL} result, got {res['kind']!r}")
    if ax is not None:
        _bars(ax, res, "effect", "log-odds shift (topic)", "effect kept")
        return ax.figure
    fig, axes = subplots(2, 2, height=4.4, width=2 * COLUMN_WIDTH)
    _grid_panel(axes[0, 0], res)
    _score_panel(axes[0, 1], res)
    _bars(axes[1, 0], res, "effect", "log-odds shift, topic held-out", "(c) effect on the topic")
    _bars(axes[1, 1], res, "kl_others", "KL(unsteered || steered), others", "(d) side effect on other prompts")
    return fig


__all__ = ["plot_conditional"]
