"""Curves against the steering multiplier or the optimiser step: evaluation curves, refusal, training, cost.

Activation steering adds ``m * v`` to the residual stream; these figures show what the multiplier
``m`` does: a metric (held-out log-odds, A/B probability, utility) against ``m`` with bootstrap
intervals (``plot_multiplier_curves``), the per-pair steerability's distribution
(``plot_steerability``), refusal rate and cost against ``m``
(``plot_refusal``), the effect against its utility cost at matched budgets (``plot_cost_effect``), and
BiPO's training curves (``plot_training_curves``; BiPO is Cao et al. 2024, arXiv 2406.00045; CAA,
drawn beside it, Rimsky et al. 2023, arXiv 2312.06681). Each takes a result
(``workbench.core.results``) and returns a ``Figure``; none recomputes anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workbench.core import results
from workbench.core.results import ResultFormatError
from workbench.viz.style import COLUMN_WIDTH, MARKERS, new_axes, paper_style, place_legend, series_colors, subplots
from workbench.viz.tables import first, label_series, main_table, need, read_result

#: y-axis label of each metric (an eval result's table name, or a utility ``measure``)
METRIC_LABELS = {
    "logodds": "log-odds\nlog p(match) − log p(not)",
    "delta_logodds": "Δ log-odds vs. m = 0",
    "ab": "p(matching answer)",
    "ab_prob": "p(matching answer)",
    "win_rate": "win rate (log-odds > 0)",
    "perplexity": "perplexity (neutral text)",
    "top1_agreement": "top-1 agreement\nwith unsteered",
    "kl_from_unsteered": "KL(unsteered ‖ steered)\n(nats per token)",
    "utility": "utility",
    "truthfulqa": "TruthfulQA MC accuracy",
    "mc1": "TruthfulQA MC1 accuracy",
    "mc2": "TruthfulQA MC2 score",
    "logodds_per_token": "log-odds per answer token",
    "open": "open-ended: behavior match rate",
    "refusal": "refusal rate",
    "steerability": "steerability (log-odds per unit m)",
}


# --------------------------------------------------------------------------- multiplier curves
def plot_multiplier_curves(result: Any, ax: Axes | None = None, metric: str = "logodds",
                           value: str | None = None, title: str | None = None,
                           normalization: str | None = "sum") -> Figure:
    """Metric against steering multiplier, one line per vector (BiPO vs CAA), with bootstrap intervals.

    Args:
        result: an eval result (``{"kind": "eval", "metrics": {metric: rows}}``). The metric's rows
            need ``multiplier`` and a value column (``mean``, or ``value``/``score``/the metric's own
            name); ``ci_low``/``ci_high`` draw a band; the series label comes from
            ``vector``/``method``/``label`` (and ``behavior`` when it varies).
        ax: draw into this axes (the figure returned is its figure).
        metric: which metric of the eval result, also used for the y label.
        value: the value column (default: the first of ``mean, value, score, <metric>``).
        title: the axes title.
        normalization: with a ``normalization`` column (``evaluate.summarize_logodds``: ``"sum"``
            or ``"per_token"``), draw only these rows; None draws every row.

    Raises:
        ResultFormatError: not an eval result, no such metric, or a missing column.
    """
    df = main_table(read_result(result, (results.EVAL,), "plot_multiplier_curves"), metric)
    if normalization is not None and "normalization" in df.columns:
        if not (df["normalization"] == normalization).any():
            raise ResultFormatError(f"plot_multiplier_curves: no rows with normalization {normalization!r} "
                                    f"(have {sorted(df['normalization'].unique())})")
        df = df[df["normalization"] == normalization]
    value = value or first(df, ("mean", "value", "score", metric, "accuracy", "win_rate"))
    if value is None:
        raise ResultFormatError(f"plot_multiplier_curves: no value column (mean/value/score) in {list(df.columns)}")
    need(df, ["multiplier", value], "plot_multiplier_curves")
    df = df.assign(_series=label_series(df, ("vector", "method", "label", "name", "behavior", "normalization")))
    with paper_style():
        fig, ax = new_axes(ax)
        colors = series_colors(list(dict.fromkeys(df["_series"])))
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            g = g.sort_values("multiplier")
            x, y = g["multiplier"].to_numpy(float), g[value].to_numpy(float)
            ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=colors[label], label=str(label))
            if {"ci_low", "ci_high"} <= set(g.columns) and g["ci_low"].notna().all():
                ax.fill_between(x, g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float),
                                color=colors[label], alpha=0.18, linewidth=0)
        if metric.startswith(("logodds", "delta_logodds")):
            ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax.axvline(0, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
        ax.set_xlabel("multiplier m")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")))
        if title:
            ax.set_title(title)
        place_legend(ax)
    return fig


# --------------------------------------------------------------------------- per-example steerability
def plot_steerability(result: Any, ax: Axes | None = None, value: str = "slope") -> Figure:
    """Distribution over held-out pairs of each vector's per-pair steerability (Tan et al. 2024, arXiv 2407.12404).

    One violin per vector of the pairs' least-squares slopes of log-odds in ``m`` (or of a
    ``shift@<m>`` column), the pairs as dots; each tick label carries the anti-steerable share
    (slope < 0) and its 95 % interval when the result's ``steerability`` table has it.

    Args:
        result: an eval result with the ``steerability_pairs`` table (the ``logodds`` metric).
        ax: draw into this axes.
        value: ``"slope"`` or a ``shift@<m>`` column of the per-pair table.

    Raises:
        ResultFormatError: not an eval result, no per-pair table, or no such column.
    """
    res = read_result(result, (results.EVAL,), "plot_steerability")
    df = main_table(res, "steerability_pairs")
    need(df, ["vector", value], "plot_steerability")
    summary = res.table("steerability") if "steerability" in res.tables else pd.DataFrame()
    labels = list(dict.fromkeys(df["vector"]))
    with paper_style():
        fig, ax = new_axes(ax, width=max(COLUMN_WIDTH, 0.6 + 0.7 * len(labels)))
        colors = series_colors(labels)
        data = [df.loc[df["vector"] == lab, value].to_numpy(float) for lab in labels]
        data = [d[np.isfinite(d)] for d in data]
        pos = np.arange(len(labels))
        drawable = [i for i, d in enumerate(data) if len(d) > 1 and np.ptp(d) > 0]
        if drawable:
            parts = ax.violinplot([data[i] for i in drawable], positions=pos[drawable], widths=0.75,
                                  showextrema=False, showmedians=True)
            for body, i in zip(parts["bodies"], drawable):
                body.set_facecolor(colors[labels[i]])
                body.set_edgecolor("none")
                body.set_alpha(0.35)
            parts["cmedians"].set_color("0.2")
        rng = np.random.default_rng(0)  # fixed jitter: the same figure gives the same bytes
        for i, (lab, d) in enumerate(zip(labels, data)):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=4, color=colors[lab], linewidths=0, zorder=3)
        ticks = []
        for lab in labels:
            row = summary[summary["vector"] == lab] if "vector" in summary.columns else summary
            text = str(lab)
            if len(row) and "anti_steerable" in row.columns:
                r = row.iloc[0]
                text += f"\nanti {r['anti_steerable']:.0%}"
                if pd.notna(r.get("anti_steerable_ci_low")):
                    text += f" [{r['anti_steerable_ci_low']:.0%}, {r['anti_steerable_ci_high']:.0%}]"
            ticks.append(text)
        ax.set_xticks(pos, ticks)
        ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax.set_ylabel("per-pair slope of log-odds in m" if value == "slope"
                      else f"per-pair log-odds shift at m = {value.split('@', 1)[-1]}")
    return fig


# --------------------------------------------------------------------------- refusal
def plot_refusal(result: Any, ax: Axes | Sequence[Axes] | None = None) -> Figure:
    """Refusal rate (left) and the likelihood signal (middle) against the multiplier, and the utility
    cost (KL from the unsteered model on neutral text, right) when the result has it.

    One colour per vector; a solid line for the plain request, dashed/dotted ones for each jailbreak
    template. Positive ``m`` steers toward refusing; negative ``m`` is the jailbreak direction.

    Args:
        result: a ``refusal`` result (``workbench.studies.refusal.refusal_study``).
        ax: the panels to draw into, in order (refusal rate, log-odds, cost); one axes draws the
            refusal rate only. Default: a new figure with two or three panels.
    """
    df = main_table(read_result(result, (results.REFUSAL,), "plot_refusal"))
    need(df, ["vector", "template", "multiplier", "refusal_rate", "logodds"], "plot_refusal")
    styles = ["-", "--", ":", "-."]
    with_cost = "kl" in df.columns and df["kl"].notna().any()
    with paper_style():
        if ax is None:
            n = 3 if with_cost else 2
            fig, grid = subplots(1, n, height=2.3, width=n * COLUMN_WIDTH)
            axes = list(grid.ravel())
        else:
            axes = [ax] if isinstance(ax, Axes) else list(ax)
        fig = axes[0].figure
        colors = series_colors(list(dict.fromkeys(df["vector"])))
        templates = list(dict.fromkeys(df["template"]))
        for (vec, template), g in df.groupby(["vector", "template"], sort=False):
            g = g.sort_values("multiplier")
            x = g["multiplier"].to_numpy(float)
            style = styles[templates.index(template) % len(styles)]
            label = f"{vec}" + ("" if template == "none" else f" + {template}")
            for a, col in zip(axes, ("refusal", "logodds")):
                y = g["refusal_rate" if col == "refusal" else "logodds"].to_numpy(float)
                a.plot(x, y, linestyle=style, marker="o", markersize=3, color=colors[vec], label=label)
                lo, hi = f"{col}_ci_low", f"{col}_ci_high"
                if {lo, hi} <= set(g.columns) and g[lo].notna().all():
                    a.fill_between(x, g[lo].to_numpy(float), g[hi].to_numpy(float), color=colors[vec],
                                   alpha=0.12, linewidth=0)
        if with_cost and len(axes) > 2:  # the utility cost of each (vector, multiplier), the same for every template
            for vec, g in df.drop_duplicates(["vector", "multiplier"]).groupby("vector", sort=False):
                g = g.sort_values("multiplier")
                axes[2].plot(g["multiplier"].to_numpy(float), g["kl"].to_numpy(float), marker="o", markersize=3,
                             color=colors[vec], label=vec)
            axes[2].set_ylabel("KL from unsteered (neutral text)")
        axes[0].set_ylim(-0.03, 1.03)
        axes[0].set_ylabel("refusal rate")
        if len(axes) > 1:
            axes[1].set_ylabel("log p(refusal) - log p(target)")
            axes[1].axhline(0, color="0.6", linewidth=0.6, zorder=0)
        for a in axes:
            a.set_xlabel("multiplier m")
            a.axvline(0, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
        place_legend(axes[0])
    return fig


# --------------------------------------------------------------------------- training curves
TRAINING_PANELS = (("loss", "BiPO loss"), ("accuracy", "preference acc."), ("norm", "vector norm"))
_HELD_OUT_PREFIXES = ("eval_", "val_", "test_")


def _run(history: Any) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-step table, per-epoch table or None) of one ``bipo_history`` result."""
    res = read_result(history, (results.BIPO_HISTORY,), "plot_training_curves")
    epochs = pd.DataFrame(res["epochs"]) if res.get("epochs") else None
    return main_table(res, "history"), epochs


def plot_training_curves(history: Any, ax: Axes | None = None, metric: str | None = None) -> Figure:
    """BiPO training curves: loss, preference accuracy and vector norm against optimiser step.

    Args:
        history: a ``bipo_history`` result (``TrainResult.to_dict()``: per-step ``history`` rows with
            ``step``, ``loss``, ``accuracy``, ``norm``; the held-out ``eval_loss``/``eval_accuracy``
            of its ``epochs`` rows are drawn dashed at their step), or ``{run label: result}`` to
            overlay several runs.
        ax: draw one panel (``metric``, default ``"loss"``) into this axes.
        metric: with ``ax``, the panel to draw.

    Raises:
        ResultFormatError: not a bipo_history result, or no loss/accuracy/norm column.
    """
    if isinstance(history, Mapping) and not results.is_result(history):  # {run label: result}
        runs = {str(k): _run(v) for k, v in history.items()}
    else:
        runs = {"": _run(history)}
    panels = [(m, lab) for m, lab in TRAINING_PANELS if any(m in st.columns for st, _ in runs.values())]
    if not panels:
        raise ResultFormatError(f"plot_training_curves: no loss/accuracy/norm column in "
                                f"{[list(st.columns) for st, _ in runs.values()]}")
    if ax is not None:
        wanted = metric or panels[0][0]
        panels = [next(((m, lab) for m, lab in TRAINING_PANELS if m == wanted), (wanted, wanted))]
    held_out = False
    with paper_style():
        if ax is not None:
            fig, axes = ax.figure, [ax]
        else:
            fig, grid = subplots(len(panels), 1, height=1.05 * len(panels) + 0.35, sharex=True)
            axes = list(grid[:, 0])
        colors = series_colors(list(runs))
        for (m, label), a in zip(panels, axes):
            for run, (steps, epochs) in runs.items():
                x_col = first(steps, ("step", "global_step", "iteration"))
                x = steps[x_col].to_numpy(float) if x_col else np.arange(1, len(steps) + 1, dtype=float)
                if m in steps.columns:
                    a.plot(x, steps[m].to_numpy(float), color=colors[run], linewidth=0.9,
                           marker="o" if len(x) <= 30 else None, markersize=2, label=f"{run} train".strip())
                for frame in (steps, epochs):
                    if frame is None:
                        continue
                    fx = frame[x_col].to_numpy(float) if x_col and x_col in frame.columns else \
                        np.arange(1, len(frame) + 1, dtype=float)
                    for prefix in _HELD_OUT_PREFIXES:
                        col = f"{prefix}{m}"
                        if col in frame.columns and frame[col].notna().any():
                            ok = frame[col].notna().to_numpy()
                            a.plot(fx[ok], frame[col].to_numpy(float)[ok], color=colors[run], linestyle="--",
                                   marker="o", label=f"{run} held-out".strip())
                            held_out = True
            if m == "accuracy":
                a.set_ylim(-0.03, 1.03)
                a.axhline(0.5, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
            a.set_ylabel(label)
        axes[-1].set_xlabel("optimiser step")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(runs) > 1 or held_out:
            place_legend(axes[0])
    return fig


# --------------------------------------------------------------------------- effect against cost
def plot_cost_effect(result: Any, ax: Axes | None = None) -> Figure:
    """Effect (log-odds shift from m = 0) against cost, one line per vector and direction, budgets marked.

    Args:
        result: a ``matched_cost`` result (``workbench.analysis.equal_cost.matched_cost``), drawn from
            its ``points`` (every multiplier the search visited within budget) and ``rows`` (the
            found ones, with their bootstrap intervals).
        ax: draw into this axes.

    Raises:
        ResultFormatError: not a matched_cost result, or a missing column.
    """
    res = read_result(result, (results.MATCHED_COST,), "plot_cost_effect")
    pts = res.table("points")
    rows = res.table("rows")
    need(pts, ("vector", "direction", "multiplier", "cost", "effect"), "plot_cost_effect")
    with paper_style():
        fig, ax = new_axes(ax)
        labels = list(dict.fromkeys(pts["vector"]))
        colors = series_colors(labels)
        # more series than colours (vectors beside prompting points): a series whose colour is taken gets a
        # marker of its own (never "o", the found points' marker)
        uses = [list(colors.values())[:i].count(colors[lab]) for i, lab in enumerate(labels)]
        marks = {lab: "." if n == 0 else MARKERS[1 + (n - 1) % (len(MARKERS) - 1)] for lab, n in zip(labels, uses)}
        for label in labels:
            for d, style in ((1, "-"), (-1, "--")):
                sub = pts[(pts["vector"] == label) & ((pts["direction"] == d) | (pts["multiplier"] == 0))]
                sub = sub.reindex(sub["multiplier"].abs().sort_values().index)
                ax.plot(sub["cost"], sub["effect"], style, marker=marks[label], color=colors[label],
                        label=f"{label} ({'m > 0' if d == 1 else 'm < 0'})")
                found = rows[(rows["vector"] == label) & (rows["direction"] == d) & rows["reached"].astype(bool)]
                if len(found):
                    ax.errorbar(found["cost"], found["effect"],
                                yerr=[found["effect"] - found["effect_ci_low"], found["effect_ci_high"] - found["effect"]],
                                fmt="o", color=colors[label], ms=4, capsize=2)
        for i, b in enumerate(res.get("budgets", [])):
            ax.axvline(b, color="0.6", lw=0.6, ls=":", label="budget" if i == 0 else None)
        ax.axhline(0, color="0.8", lw=0.5)
        cost = res.get("cost", "kl")
        ax.set_xlabel("KL(unsteered ‖ steered) per token" if cost == "kl" else "perplexity ratio - 1")
        ax.set_ylabel("log-odds shift from m = 0")
        note = (res.get("equal_norm") or {}).get("mode")
        if note:
            ax.set_title(f"equal norm ({note})", fontsize="small")
        place_legend(ax, fontsize="x-small")
    return fig


__all__ = ["METRIC_LABELS", "TRAINING_PANELS", "plot_cost_effect", "plot_multiplier_curves", "plot_refusal",
           "plot_steerability", "plot_training_curves"]
