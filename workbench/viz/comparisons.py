"""Figures comparing a steering effect across conditions: composition, layer and model transfer, LoRA.

Does a vector's effect survive being combined with another vector, moved to another layer, or
applied to another model? ``plot_composition`` draws each behavior's log-odds change under each
vector alone and together; ``plot_transfer`` the effect of a vector applied ``k`` layers away or on
another model (the transfer experiments of BiPO, Cao et al. 2024, arXiv 2406.00045);
``plot_lora_transfer`` the share of the effect retained on LoRA fine-tunes (Hu et al. 2021, arXiv
2106.09685) against their distance from the base; ``plot_entanglement`` each behavior vector's effect
on the other behaviors (SteeringControl / SteeringSafety 2025). Each takes a result (``workbench.core.results``)
and returns a ``Figure``; none recomputes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workbench.core import results
from workbench.core.results import ResultFormatError
from workbench.viz.style import MARKERS, new_axes, paper_style, place_legend, series_colors
from workbench.viz.tables import first, label_series, main_table, need, read_result


def draw_bars(df: pd.DataFrame, ax: Axes | None = None, x: str | None = None, y: str | None = None,
              hue: str | None = None, ylabel: str | None = None, title: str | None = None,
              sem: str | None = None) -> Figure:
    """Grouped bars of a table drawn by the ``plot_*`` functions: ``y`` per ``x``, one colour per ``hue``.

    Error bars: ``ci_low``/``ci_high`` (or ``<y>_ci_low``/``<y>_ci_high``) when present, else
    ``± sem`` (a standard-error column).

    Raises:
        ResultFormatError: ``x`` or ``y`` is not a column.
    """
    y = y or first(df, ("mean", "value", "effect", "delta_logodds", "score"))
    if y is None or x is None or x not in df.columns or y not in df.columns:
        raise ResultFormatError(f"plot_bars: need columns x={x!r} and y={y!r}; the result has {list(df.columns)}")
    lo, hi = next(((a, b) for a, b in (("ci_low", "ci_high"), (f"{y}_ci_low", f"{y}_ci_high"))
                   if {a, b} <= set(df.columns)), (None, None))
    xs = list(dict.fromkeys(df[x].astype(str)))
    hues = list(dict.fromkeys(df[hue].astype(str))) if hue and hue in df.columns else [None]
    width = 0.8 / len(hues)
    with paper_style():
        fig, ax = new_axes(ax, height=2.2)
        colors = series_colors(hues)
        for j, h in enumerate(hues):
            g = df if h is None else df[df[hue].astype(str) == h]
            g = g.set_index(g[x].astype(str))
            g = g[~g.index.duplicated()]
            vals = np.array([float(g[y].get(k, np.nan)) for k in xs])
            pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
            err = None
            if lo is not None:
                low = np.array([float(g[lo].get(k, np.nan)) for k in xs])
                high = np.array([float(g[hi].get(k, np.nan)) for k in xs])
                err = np.vstack([np.clip(vals - low, 0, None), np.clip(high - vals, 0, None)])
            elif sem and sem in g.columns:
                err = np.array([float(g[sem].get(k, np.nan)) for k in xs])
            ax.bar(pos, vals, width=width * 0.92, color=colors[h], label=None if h is None else h,
                   yerr=err, error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "0.2"})
        ax.set_xticks(np.arange(len(xs)), xs, rotation=30 if max(map(len, xs), default=0) > 6 else 0,
                      ha="right" if max(map(len, xs), default=0) > 6 else "center")
        ax.axhline(0, color="0.3", linewidth=0.6)
        ax.set_ylabel(ylabel or y.replace("_", " "))
        if hues != [None]:  # the legend sits above the axes; a title becomes the legend's title
            place_legend(ax, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(hues), 3), title=title)
        elif title:
            ax.set_title(title)
    return fig


# --------------------------------------------------------------------------- composition
def plot_composition(result: Any, ax: Axes | None = None) -> Figure:
    """Composition of vectors: each behavior's log-odds change under each steering condition.

    Args:
        result: a ``composition`` result (``composition.composition_table``). Its long ``conditions``
            table (``condition, behavior, effect`` and ``effect_sem`` or ``effect_ci_low``/
            ``effect_ci_high``) gives bars per condition (each vector alone, then together), one
            colour per measured behavior, with error bars; without it the per-behavior ``rows``
            (``own_effect, cross_effect, combined_effect, interaction``) give bars per behavior.
        ax: draw into this axes.
    """
    res = read_result(result, (results.COMPOSITION,), "plot_composition")
    df = main_table(res, "conditions" if "conditions" in res.tables else "rows")
    if {"condition", "effect"} <= set(df.columns):
        df = df[df["condition"] != "none"]
        title = None
        if isinstance(res.get("multipliers"), Mapping):
            title = "multipliers: " + ", ".join(f"{k} {v:g}" for k, v in res["multipliers"].items())
        return draw_bars(df, ax=ax, x="condition", y="effect", hue=first(df, ("behavior", "metric")),
                         ylabel="Δ held-out log-odds\nvs. unsteered", sem="effect_sem", title=title)
    parts = [c for c in ("own_effect", "cross_effect", "combined_effect", "interaction") if c in df.columns]
    if parts and "behavior" in df.columns:
        long = df.melt(id_vars=["behavior"], value_vars=parts, var_name="part", value_name="effect")
        long["part"] = long["part"].str.replace("_effect", "").str.replace("_", " ")
        return draw_bars(long, ax=ax, x="behavior", y="effect", hue="part", ylabel="Δ held-out log-odds")
    x = first(df, ("combination", "condition", "vectors", "label", "name", "vector"))
    if x is None:
        raise ResultFormatError(f"plot_composition: no condition/combination column in {list(df.columns)}")
    return draw_bars(df, ax=ax, x=x, hue=first(df, ("behavior", "metric", "target")),
                     ylabel="Δ log-odds vs. unsteered", sem="effect_sem")


# --------------------------------------------------------------------------- transfer
def _plot_layer_transfer(df: pd.DataFrame, ax: Axes | None) -> Figure:
    """Effect against the layer offset k, one line per multiplier (or source layer / vector)."""
    ycol = first(df, ("effect", "delta_logodds", "mean", "retained", "ratio"))
    if ycol is None:
        raise ResultFormatError(f"plot_transfer: no effect column in {list(df.columns)}")
    need(df, ["offset"], "plot_transfer")
    df = df.assign(_series=label_series(df, ("source_layer", "vector", "method", "behavior", "multiplier")))
    if "multiplier" in df.columns and df["multiplier"].nunique() > 1 and df["_series"].equals(
            df["multiplier"].astype(str)):
        df["_series"] = df["multiplier"].map(lambda m: f"m = {float(m):+g}")
    with paper_style():
        fig, ax = new_axes(ax)
        colors = series_colors(list(dict.fromkeys(df["_series"])))
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            g = g.sort_values("offset")
            ax.plot(g["offset"], g[ycol].astype(float), marker=MARKERS[i % len(MARKERS)], color=colors[label],
                    label=str(label))
        ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax.axvline(0, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        src = f" (made at L{int(df['layer'][df['offset'] == 0].iloc[0])})" if "layer" in df.columns and \
            (df["offset"] == 0).any() else ""
        ax.set_xlabel(f"layer offset k: applied at L + k{src}")
        ax.set_ylabel({"retained": "effect retained (vs. k = 0)", "ratio": "effect ratio"}.get(
            ycol, "Δ held-out log-odds"))
        if df["_series"].nunique() > 1:
            place_legend(ax)
    return fig


def plot_transfer(result: Any, ax: Axes | None = None, source: str | None = None,
                  target: str | None = None) -> Figure:
    """Transfer of a vector to other layers or to another model (``workbench.analysis.transfer``).

    * a ``transfer_layers`` result (``layer_transfer``: ``offset, layer, multiplier, effect``): effect
      against the layer offset k (vector made at L, applied at L + k), one line per multiplier (or
      source layer / vector when those vary);
    * a ``transfer_model`` result (``transfer_effect``: ``multiplier, source_effect,
      target_effect``): grouped bars per multiplier, source model vs. target model (named by
      ``source`` / ``target``, by default the result's ``source`` / ``target`` keys).

    Raises:
        ResultFormatError: another kind, or a missing column.
    """
    res = read_result(result, (results.TRANSFER_LAYERS, results.TRANSFER_MODEL), "plot_transfer")
    df = main_table(res)
    if res.kind == results.TRANSFER_LAYERS:
        return _plot_layer_transfer(df, ax)
    cols = next((p for p in (("source_effect", "target_effect"), ("effect_source", "effect_target"))
                 if set(p) <= set(df.columns)), None)
    if cols is None:
        raise ResultFormatError(f"plot_transfer: a transfer_model result needs source_effect/target_effect; "
                                f"it has {list(df.columns)}")
    src, tgt = source or res.get("source") or "source", target or res.get("target") or "target"
    key = first(df, ("multiplier", "label", "vector"))
    if key is None:
        raise ResultFormatError(f"plot_transfer: no multiplier/label column in {list(df.columns)}")
    long = df[[key, *cols]].melt(id_vars=[key], value_vars=list(cols), var_name="model", value_name="effect")
    long["model"] = long["model"].map({cols[0]: src, cols[1]: tgt})
    if key == "multiplier":
        long["multiplier"] = long["multiplier"].map(lambda m: f"m = {float(m):+g}")
    return draw_bars(long, ax=ax, x=key, y="effect", hue="model", ylabel="Δ held-out log-odds\nvs. m = 0")


# --------------------------------------------------------------------------- LoRA transfer
def plot_lora_transfer(result: Any, ax: Axes | None = None) -> Figure:
    """Retained steering effect against the fine-tune's distance from the base (``workbench.studies.lora``).

    x: the fine-tune's mean KL from the base per token on neutral text (the base itself at 0, where
    the retained share is 1 by definition); y: the log-odds shift at ``m`` on the target model over
    the same shift on the model the vector was made on, with its 95 % interval. One line per
    (vector, direction, sign of m): solid base -> fine-tune, dashed fine-tune -> base. A result
    with no rows (no fine-tune reached its KL target) says so in the figure.

    Args:
        result: a ``transfer_lora`` result (``workbench.studies.lora.lora_transfer``).
        ax: draw into this axes.
    """
    df = read_result(result, (results.TRANSFER_LORA,), "plot_lora_transfer").table()
    if df.empty:  # no fine-tune reached its target: say so rather than fail
        with paper_style():
            fig, ax = new_axes(ax)
            ax.text(0.5, 0.5, "no fine-tune reached its KL target", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        return fig
    need(df, ["kl", "vector", "direction", "multiplier", "retained"], "plot_lora_transfer")
    with paper_style():
        fig, ax = new_axes(ax)
        colors = series_colors(list(dict.fromkeys(df["vector"])))
        for (vec, direction, m), g in df.groupby(["vector", "direction", "multiplier"], sort=False):
            g = g.sort_values("kl")
            x = np.concatenate([[0.0], g["kl"].to_numpy(float)])
            y = np.concatenate([[1.0], g["retained"].to_numpy(float)])
            style = "-" if direction.startswith("base") else "--"
            marker = "o" if m > 0 else "v"
            ax.plot(x, y, linestyle=style, marker=marker, markersize=4, color=colors[vec],
                    label=f"{vec}, m = {m:+g}, {direction.replace('->', ' → ')}")
            if {"retained_ci_low", "retained_ci_high"} <= set(g.columns) and g["retained_ci_low"].notna().all():
                yv = g["retained"].to_numpy(float)
                err = np.vstack([yv - g["retained_ci_low"].to_numpy(float), g["retained_ci_high"].to_numpy(float) - yv])
                ax.errorbar(g["kl"].to_numpy(float), yv, yerr=np.clip(err, 0, None), fmt="none", color=colors[vec],
                            capsize=2, linewidth=0.8)
        ax.axhline(1, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
        ax.axhline(0, color="0.8", linewidth=0.5, zorder=0)
        ax.set_xlabel("fine-tune's KL from the base per token (neutral text)")
        ax.set_ylabel("effect retained (target / source)")
        place_legend(ax, fontsize="x-small")
    return fig


# --------------------------------------------------------------------------- entanglement
def plot_entanglement(result: Any, ax: Axes | None = None, value: str = "normalized") -> Figure:
    """The entanglement matrix (``workbench.analysis.entanglement``): each vector's effect on every target.

    Rows: the vectors (each at its own multiplier, in the row label); columns: the target sets (other
    behaviors' held-out pairs, the refusal pairs, TruthfulQA MC1). Cells: the effect divided by the
    vector's on-target effect (``value="normalized"``: 1 on the diagonal; a diverging map centred on
    0), or the raw effect (``value="effect"``); each cell carries its number. SteeringControl /
    SteeringSafety (2025) call the off-diagonal cells entanglement.

    Raises:
        ResultFormatError: not an entanglement result, or no such column.
    """
    res = read_result(result, (results.ENTANGLEMENT,), "plot_entanglement")
    df = main_table(res)
    need(df, ["vector", "target", value], "plot_entanglement")
    vectors = list(res.get("vectors") or dict.fromkeys(df["vector"]))
    targets = list(res.get("targets") or dict.fromkeys(df["target"]))
    wide = df.pivot(index="vector", columns="target", values=value).reindex(index=vectors, columns=targets)
    mat = wide.to_numpy(float)
    finite = np.abs(mat[np.isfinite(mat)])
    bound = max(1.0, float(finite.max())) if finite.size else 1.0
    mults = res.get("multipliers") or {}
    with paper_style():
        fig, ax = new_axes(ax, height=0.9 + 0.32 * len(vectors), width=max(3.3, 1.6 + 0.55 * len(targets)))
        im = ax.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto",
                       interpolation="nearest")
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                v = mat[i, j]
                ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if np.isfinite(v) and abs(v) > 0.6 * bound else "black")
        names = {"truthfulqa_mc1": "TruthfulQA\nMC1 (Δ acc.)"}
        ax.set_xticks(range(len(targets)), [names.get(t, t) for t in targets], rotation=30, ha="right")
        ax.set_yticks(range(len(vectors)), [f"{v} (m = {mults[v]:+.2g})" if v in mults else v for v in vectors])
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("vector")
        ax.spines[:].set_visible(False)
        label = "effect / on-target effect" if value == "normalized" else "Δ log-odds vs. m = 0"
        fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, label=label)
    return fig


__all__ = ["draw_bars", "plot_composition", "plot_entanglement", "plot_lora_transfer", "plot_transfer"]
