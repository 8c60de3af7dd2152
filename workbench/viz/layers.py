"""Figures across layers: the layer sweep, cosine similarity of vectors, and the logit lens.

Where in the network does steering work, and what does a vector say? ``plot_layer_sweep`` draws the
steering effect of vectors made at each layer (BiPO, Cao et al. 2024, arXiv 2406.00045, beside CAA,
Rimsky et al. 2023, arXiv 2312.06681), and ``plot_coherence_reliability`` its predicted against measured
reliability (Braun et al. 2025, arXiv 2505.22637); ``plot_cosine_heatmap`` and ``plot_method_cosine`` compare
vectors by cosine; ``plot_logit_lens_tokens`` shows the tokens a vector promotes and suppresses
through the unembedding, and ``plot_logit_lens_layers`` the steered run read at each layer through
the logit lens (nostalgebraist 2020). Each takes a result (``workbench.core.results``) and returns a
``Figure``; none recomputes anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colors as matplotlib_colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workbench.core import results
from workbench.core.results import ResultFormatError
from workbench.viz.style import (COLUMN_WIDTH, MARKERS, OKABE_ITO, main_and_lower, new_axes, paper_style, place_legend,
                                 pretty_token, series_colors, subplots)
from workbench.viz.tables import first, label_series, main_table, need, read_result

#: the column of the logit lens's KL(steered ‖ unsteered), newest name first
LENS_KL_COLUMNS = ("kl_steered_unsteered", "kl")


# --------------------------------------------------------------------------- layer sweep
def _sweep_table(result: Any) -> pd.DataFrame:
    """Rows of one sweep, or of several (``{label: sweep}``) stacked with their label as ``method``."""
    if isinstance(result, Mapping) and not results.is_result(result):  # {label: sweep}
        parts = [_sweep_table(v).assign(method=str(k)) for k, v in result.items()]
        return pd.concat(parts, ignore_index=True)
    res = read_result(result, (results.SWEEP,), "plot_layer_sweep")
    df = main_table(res)
    if "method" not in df.columns and "method" in res:
        df = df.assign(method=res["method"])
    return df


def _multiplier_of(column: str) -> float | None:
    """The ``m`` of an effect column ``effect@<m>`` (None for any other column, e.g. ``effect@+1_ci_low``)."""
    if not column.startswith("effect@"):
        return None
    try:
        return float(column.split("@", 1)[1])
    except ValueError:
        return None


def _effect_columns(df: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """``(column, legend suffix, line style)`` of each effect column: ``effect@+1`` or ``effect_plus``."""
    cols = []
    tagged = sorted((c for c in df.columns if _multiplier_of(c) is not None), key=lambda c: -float(c.split("@")[1]))
    styles = iter(["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))])
    for c in tagged:
        m = float(c.split("@")[1])
        cols.append((c, f" (m = {m:+g})", "-" if len(tagged) <= 2 and m > 0 else ("--" if len(tagged) <= 2 else next(styles))))
    named = {"effect_plus": (" (+m)", "-"), "effect_minus": (" (−m)", "--"), "effect": ("", "-")}
    cols += [(c, *named[c]) for c in named if c in df.columns]
    return cols


def plot_layer_sweep(result: Any, ax: Axes | None = None, show_cosine: bool = True) -> Figure:
    """Steering effect against layer, one colour per method, one line style per multiplier.

    Args:
        result: a ``sweep`` result (``workbench.analysis.sweep.layer_sweep``), or ``{label: sweep}``
            to overlay methods (BiPO vs CAA). Rows need ``layer`` and effect columns: ``effect@<m>``
            (change of the mean held-out log-odds against ``m = 0``) or ``effect_plus``/
            ``effect_minus``; ``method`` separates series; ``cos_ref``/``cosine_to_ref`` adds a
            lower panel.
        ax: draw only the effect panel into this axes.
        show_cosine: draw the lower cosine panel when the rows have one.

    Raises:
        ResultFormatError: not a sweep result, or no layer/effect column.
    """
    df = _sweep_table(result)
    effects = _effect_columns(df)
    if not effects:
        raise ResultFormatError(f"plot_layer_sweep: no effect@<m>/effect_plus/effect_minus column in {list(df.columns)}")
    need(df, ["layer"], "plot_layer_sweep")
    df = df.assign(_series=label_series(df, ("method", "vector", "label", "behavior")))
    cos_col = first(df, ("cos_ref", "cosine_to_ref"))
    cosine = show_cosine and ax is None and cos_col is not None and df[cos_col].notna().any()
    with paper_style():
        fig, ax_eff, ax_cos = main_and_lower(ax, cosine, height=3.0, ratios=(2, 1))
        colors = series_colors(list(dict.fromkeys(df["_series"])))
        n_series = df["_series"].nunique()
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            g = g.sort_values("layer")
            for col, suffix, style in effects:
                ok = g[col].notna()
                ax_eff.plot(g["layer"][ok], g[col][ok].astype(float), linestyle=style, color=colors[label],
                            marker=MARKERS[i % len(MARKERS)], markersize=2.2,
                            label=f"{label}{suffix}" if n_series > 1 or len(effects) > 1 else str(label))
            if ax_cos is not None and g[cos_col].notna().any():
                ok = g[cos_col].notna()
                ax_cos.plot(g["layer"][ok], g[cos_col][ok].astype(float), color=colors[label],
                            marker=MARKERS[i % len(MARKERS)], markersize=2.2, label=str(label))
        ax_eff.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax_eff.set_ylabel("Δ held-out log-odds\nvs. m = 0")
        place_legend(ax_eff, ncols=2 if len(effects) * n_series > 3 else 1)
        if ax_cos is not None:
            ax_cos.set_ylabel("cosine to ref.")
            ax_cos.axhline(0, color="0.6", linewidth=0.6, zorder=0)
            ax_cos.set_xlabel("layer")
        else:
            ax_eff.set_xlabel("layer")
        ax_eff.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# --------------------------------------------------------------------------- predicted vs measured reliability
def plot_coherence_reliability(result: Any, ax: Axes | None = None) -> Figure:
    """Predicted against measured reliability of the vectors of layer sweeps, across behaviors and layers.

    x: the coherence of the training pairs' activation differences at the layer (their mean cosine
    to the mean difference; Braun et al. 2025, arXiv 2505.22637); y: the share of held-out pairs the
    layer's vector steers the right way (one minus the anti-steerable share: pairs whose log-odds
    slope in ``m`` is negative; Tan et al. 2024, arXiv 2407.12404). One colour per behavior (or
    method), one point per layer, the deepest layers darkest; the title gives the Pearson and
    Spearman correlations over all points.

    Args:
        result: a ``sweep`` result with ``coherence`` and ``anti_steerable`` columns
            (``workbench.analysis.sweep.layer_sweep``), or ``{label: sweep}`` (e.g. one per behavior).
        ax: draw into this axes.

    Raises:
        ResultFormatError: not a sweep result, or no coherence / anti_steerable column.
    """
    df = _sweep_table(result)
    need(df, ["layer", "coherence", "anti_steerable"], "plot_coherence_reliability")
    df = df[df["coherence"].notna() & df["anti_steerable"].notna()]
    if df.empty:
        raise ResultFormatError("plot_coherence_reliability: no layer has both coherence and anti_steerable")
    keys = ("behavior",) if "behavior" in df.columns and df["behavior"].nunique() > 1 else ("method", "vector", "label")
    df = df.assign(_series=label_series(df, keys),
                   _reliability=1.0 - df["anti_steerable"].astype(float))
    x, y = df["coherence"].to_numpy(float), df["_reliability"].to_numpy(float)
    with paper_style():
        fig, ax = new_axes(ax)
        colors = series_colors(list(dict.fromkeys(df["_series"])))
        n_series = df["_series"].nunique()
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            depth = g["layer"].to_numpy(float)
            alpha = 0.35 + 0.65 * (depth - depth.min()) / max(1.0, float(np.ptp(depth)))
            rgba = np.tile(np.array(matplotlib_colors.to_rgba(colors[label])), (len(g), 1))
            rgba[:, 3] = alpha
            ax.scatter(g["coherence"].astype(float), g["_reliability"], s=12, c=rgba, marker=MARKERS[i % len(MARKERS)],
                       linewidths=0, label=str(label) if n_series > 1 else None)
        title = f"{len(df)} layer vectors"
        if len(df) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
            pearson = float(np.corrcoef(x, y)[0, 1])
            spearman = float(np.corrcoef(pd.Series(x).rank(), pd.Series(y).rank())[0, 1])
            title += f"\nPearson r = {pearson:.2f}, Spearman ρ = {spearman:.2f}"
        ax.set_title(title)
        ax.set_xlabel("coherence of training differences\n(mean cosine to their mean)")
        ax.set_ylabel("share of held-out pairs\nsteered the right way")
        ax.set_ylim(min(-0.03, float(y.min()) - 0.03), 1.03)
        if n_series > 1:
            place_legend(ax)
    return fig


# --------------------------------------------------------------------------- cosine
def plot_cosine_heatmap(result: Any, ax: Axes | None = None, annotate: bool | None = None,
                        title: str | None = None) -> Figure:
    """Heatmap of a ``cosine`` result (``similarity.cosine_table``, ``similarity.layer_cosine_table``).

    A diverging map centred on 0 (blue negative, red positive) over ``[-1, 1]``; cells carry their
    value when there are at most 10 labels (``annotate`` overrides). Integer labels are layers (the
    axes say so).

    Raises:
        ResultFormatError: not a cosine result, or a matrix that does not match its labels.
    """
    res = read_result(result, (results.COSINE,), "plot_cosine_heatmap")
    labels = list(res["labels"])
    mat = np.asarray(res["matrix"], dtype=float)
    n = len(labels)
    if mat.ndim != 2 or mat.shape != (n, n):
        raise ResultFormatError(f"plot_cosine_heatmap: matrix of shape {mat.shape} does not match {n} labels")
    annotate = n <= 10 if annotate is None else annotate
    names = [str(x) for x in labels]
    side = min(COLUMN_WIDTH, 1.0 + 0.32 * n)
    with paper_style():
        fig, ax = new_axes(ax, height=side * 0.86, width=side + 0.5)
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        step = max(1, math.ceil(n / 16))
        ticks = list(range(0, n, step))
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
        ax.set_yticks(ticks, [names[i] for i in ticks])
        ax.spines[:].set_visible(False)
        if annotate:
            for i in range(n):
                for j in range(n):
                    v = float(mat[i, j])
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                            color="white" if abs(v) > 0.6 else "black")
        if labels and all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
            ax.set_xlabel("layer")
            ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8, label="cosine", pad=0.02)
        if title:
            ax.set_title(title)
    return fig


def plot_method_cosine(result: Any, ax: Axes | None = None) -> Figure:
    """Per-layer cosine between two methods' vectors (a ``cosine_methods`` result: ``layer, cosine``)."""
    df = main_table(read_result(result, (results.COSINE_METHODS,), "plot_method_cosine"))
    need(df, ["layer", "cosine"], "plot_method_cosine")
    with paper_style():
        fig, ax = new_axes(ax, height=1.8)
        series = label_series(df, ("pair", "behavior", "label")) if any(
            c in df.columns for c in ("pair", "behavior", "label")) else pd.Series(["cosine"] * len(df))
        df = df.assign(_series=series.to_numpy())
        colors = series_colors(list(dict.fromkeys(df["_series"])))
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            g = g.sort_values("layer")
            ax.plot(g["layer"], g["cosine"].astype(float), marker=MARKERS[i % len(MARKERS)], color=colors[label],
                    label=str(label))
        ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax.set_ylim(min(-0.05, float(df["cosine"].min()) - 0.05), 1.02)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cosine (BiPO vs. CAA)" if df["_series"].nunique() == 1 else "cosine")
        if df["_series"].nunique() > 1:
            place_legend(ax)
    return fig


# --------------------------------------------------------------------------- logit lens
def plot_logit_lens_tokens(result: Any, ax: Axes | None = None, k: int | None = None,
                           title: str | None = None) -> Figure:
    """Top promoted (right, blue) and suppressed (left, vermillion) tokens of a vector.

    Args:
        result: a ``logit_lens_tokens`` result (``logit_lens.vector_logit_lens``: rows ``direction``,
            ``rank``, ``token``, ``logit_change``). With a ``vector`` or ``label`` column holding
            several vectors (and no ``ax``), one panel per vector.
        ax: draw into this axes (one panel).
        k: at most this many tokens per direction.
        title: the panel title (with one panel).
    """
    df = main_table(read_result(result, (results.LOGIT_LENS_TOKENS,), "plot_logit_lens_tokens"))
    need(df, ["token", "logit_change"], "plot_logit_lens_tokens")
    if "direction" not in df.columns:
        df = df.assign(direction=np.where(df["logit_change"] >= 0, "promoted", "suppressed"))
    if "rank" not in df.columns:
        df = df.assign(rank=df.groupby("direction")["logit_change"].rank(ascending=False, method="first"))
    group_col = first(df, ("vector", "label", "name"))
    groups = list(dict.fromkeys(df[group_col])) if group_col and ax is None else [None]
    with paper_style():
        if ax is not None:
            fig, axes = ax.figure, [ax]
        else:
            n_tok = int(df.groupby([group_col] if group_col else ["direction"]).size().max()) if len(df) else 1
            fig, grid = subplots(1, len(groups), height=0.9 + 0.11 * min(n_tok, 40),
                                 width=COLUMN_WIDTH if len(groups) == 1 else min(7.0, 2.3 * len(groups)))
            axes = list(grid[0])
        for a, grp in zip(axes, groups):
            g = df if grp is None else df[df[group_col] == grp]
            parts = []
            for direction in ("promoted", "suppressed"):
                d = g[g["direction"] == direction].sort_values("rank")
                parts.append(d.head(k) if k is not None else d)
            # strongest promoted at the top, strongest suppressed at the bottom
            order = pd.concat(parts).sort_values("logit_change")
            y = np.arange(len(order))
            vals = order["logit_change"].to_numpy(float)
            a.barh(y, vals, color=[OKABE_ITO["blue"] if v >= 0 else OKABE_ITO["vermillion"] for v in vals],
                   height=0.75)
            a.set_yticks(y, [pretty_token(t) for t in order["token"]], fontsize=6)
            a.axvline(0, color="0.3", linewidth=0.6)
            a.set_xlabel("logit change (vs. vocab. mean)")
            a.spines["left"].set_visible(False)
            a.tick_params(axis="y", length=0)
            heading = title if title and grp is None else (str(grp) if grp is not None else None)
            if heading:
                a.set_title(heading)
    return fig


def plot_logit_lens_layers(result: Any, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Per-layer propagation of a steered run (a ``logit_lens_layers`` result, ``logit_lens.steered_logit_lens``).

    Upper panel: Δ log-odds of the matching vs. not-matching token read through the logit lens at
    each layer (steered minus unsteered, solid) and the direct-path estimate (vector added to the
    unsteered residual, dashed); lower panel: KL(steered ‖ unsteered). Layers before the vector's hook
    are shaded. With ``ax``, only the upper panel.
    """
    df = main_table(read_result(result, (results.LOGIT_LENS_LAYERS,), "plot_logit_lens_layers")).sort_values("layer")
    need(df, ["layer", "delta_logodds"], "plot_logit_lens_layers")
    kl = first(df, LENS_KL_COLUMNS)
    has_kl = kl is not None and ax is None
    with paper_style():
        fig, a1, a2 = main_and_lower(ax, has_kl, height=2.8, ratios=(3, 2))
        layer = df["layer"].to_numpy(float)
        a1.plot(layer, df["delta_logodds"].astype(float), color=OKABE_ITO["vermillion"], marker="o",
                markersize=2.2, label="steered run")
        if "delta_logodds_direct" in df.columns:
            a1.plot(layer, df["delta_logodds_direct"].astype(float), color=OKABE_ITO["blue"], linestyle="--",
                    label="vector alone (direct)")
        if {"delta_logprob_matching", "delta_logprob_not_matching"} <= set(df.columns):
            a1.plot(layer, df["delta_logprob_matching"].astype(float), color=OKABE_ITO["bluish_green"],
                    linewidth=0.8, label="Δ log p(match)")
            a1.plot(layer, df["delta_logprob_not_matching"].astype(float), color=OKABE_ITO["reddish_purple"],
                    linewidth=0.8, label="Δ log p(not)")
        a1.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        a1.set_ylabel("Δ logit-lens log-odds")
        if a2 is not None:
            a2.plot(layer, df[kl].astype(float), color=OKABE_ITO["black"], marker="o", markersize=2.2)
            a2.set_ylabel("KL(steered ‖ unsteered)\n(nats)")
            a2.set_xlabel("layer (resid_post)")
        else:
            a1.set_xlabel("layer (resid_post)")
        if "steered" in df.columns and (~df["steered"].astype(bool)).any():
            last_unsteered = float(df.loc[~df["steered"].astype(bool), "layer"].max())
            for a in (a1, a2) if a2 is not None else (a1,):
                a.axvspan(layer.min() - 0.5, last_unsteered + 0.5, color="0.92", zorder=-1, linewidth=0)
        if title:
            a1.set_title(title)
        place_legend(a1, ncols=2)
    return fig


__all__ = ["LENS_KL_COLUMNS", "plot_coherence_reliability", "plot_cosine_heatmap", "plot_layer_sweep", "plot_logit_lens_layers",
           "plot_logit_lens_tokens", "plot_method_cosine"]
