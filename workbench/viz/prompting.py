"""The prompting baseline's figure: effect against cost per method, beside the vectors.

Draws a ``prompting`` result (``workbench.evaluate.prompting.prompting_baseline``; the question of
AxBench, Wu et al. 2025, arXiv 2501.17148: does steering beat simply asking?): each method's points
at (KL cost on neutral text, held-out log-odds shift) with their bootstrap intervals, elicit as filled
markers and suppress as open ones; the k-shot points joined in order of k (each labelled with its k),
a vector's points joined over its budgets. The legend sits outside the axes, so it never covers data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.core import results
from workbench.viz.style import MARKERS, new_axes, series_colors
from workbench.viz.tables import need, read_result


def _group(method: str) -> str:
    return "k-shot" if method == "kshot" else method


def plot_prompting(result: Any, ax: Axes | None = None) -> Figure:
    """Effect (log-odds shift from the unprompted model) against cost (KL per token), one series per method.

    Args:
        result: a ``prompting`` result, drawn from its ``rows`` alone.
        ax: draw into this axes.

    Raises:
        ResultFormatError: not a prompting result, or a missing column.
    """
    res = read_result(result, (results.PROMPTING,), "plot_prompting")
    df = res.table("rows")
    need(df, ("method", "direction", "k", "cost", "effect"), "plot_prompting")
    df = df[df["cost"].notna() & df["effect"].notna()].copy()
    fig, ax = new_axes(ax, width=4.6)
    methods = list(dict.fromkeys(_group(m) for m in df["method"]))
    colors = series_colors(methods)
    for i, name in enumerate(methods):
        sub = df[[_group(m) == name for m in df["method"]]]
        for d in (1, -1):
            part = sub[sub["direction"] == d]
            if part.empty:
                continue
            order = "k" if name == "k-shot" else ("budget" if "budget" in part and part["budget"].notna().any() else "k")
            part = part.sort_values(order)
            color, marker = colors[name], MARKERS[i % len(MARKERS)]
            has_ci = "ci_low" in part and part["ci_low"].notna().all() and part["ci_high"].notna().all()
            yerr = (np.vstack([part["effect"] - part["ci_low"], part["ci_high"] - part["effect"]]).clip(0)
                    if has_ci else None)
            ax.errorbar(part["cost"], part["effect"], yerr=yerr, fmt="-" if len(part) > 1 else "none",
                        marker=marker, color=color, ms=4, lw=0.8, capsize=1.5, elinewidth=0.6,
                        mfc=color if d == 1 else "white",
                        label=f"{name} ({'elicit' if d == 1 else 'suppress'})")
            if name == "k-shot":
                for _, r in part.iterrows():
                    ax.annotate(f"{int(r['k'])}", (r["cost"], r["effect"]), textcoords="offset points",
                                xytext=(3, 2), fontsize=5, color=color)
    ax.axhline(0, color="0.8", lw=0.5)
    ax.set_xlabel("KL(unprompted ‖ prompted) per token")
    ax.set_ylabel("log-odds shift from unprompted")
    if res.get("behavior"):
        ax.set_title(str(res["behavior"]), fontsize="small")
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # outside the axes, right of them: never over the data
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize="x-small", handlelength=1.6)
    return fig


__all__ = ["plot_prompting"]
