"""Figures of the mechanism analyses: which components carry a steering vector's effect, and how.

``plot_activation_patching`` draws exact activation patching (Vig et al. 2020, arXiv 2004.12265; Heimersheim
and Nanda 2024, arXiv 2404.15255) and its gradient approximation, attribution patching (Nanda 2023; Syed
et al. 2023, arXiv 2310.10348): the share of the steering effect each head carries, per layer and head,
for necessity and sufficiency, and per layer the attention against the MLP. ``plot_direct_logit_attribution``
draws the direct logit attribution of the steered change per layer (Elhage et al. 2021);
``plot_attention_shift`` how the top heads' attention moves between the prompt and the answer;
``plot_mechanism_routes`` whether two vectors (BiPO, Cao et al. 2024, arXiv 2406.00045; CAA, Rimsky et
al. 2023, arXiv 2312.06681) work through the same components. Each takes a result
(``workbench.core.results``) and returns a ``Figure``; none recomputes anything.
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
from workbench.core.results import Result, ResultFormatError
from workbench.viz.style import COLUMN_WIDTH, OKABE_ITO, PALETTE, new_axes, paper_style, place_legend, series_colors
from workbench.viz.tables import main_table, need, read_result

DIRECTIONS = ("necessity", "sufficiency")
#: the colours of a block's two writes, in every figure of this module
ATTN_COLOR, MLP_COLOR = OKABE_ITO["blue"], OKABE_ITO["orange"]
#: the colours of the key regions of ``attention_shift`` (the attention sink grey)
REGION_COLORS = {"first": "#999999", "prompt": OKABE_ITO["bluish_green"], "answer": OKABE_ITO["reddish_purple"]}
_HEATMAP = "RdBu_r"  # diverging, centred on 0 (blue negative, red positive), as the cosine heatmaps


def _describe(res: Mapping[str, Any]) -> str:
    """``"bipo @ L14, m = +1, 20 pairs"`` from a result's ``vector``, ``multiplier`` and ``n_pairs``."""
    vec = res.get("vector") or {}
    parts = []
    if vec.get("method") or vec.get("layer") is not None:
        parts.append(" @ ".join(str(p) for p in (vec.get("method"), vec.get("layer") is not None and f"L{vec['layer']}")
                                if p))
    if res.get("multiplier") is not None:
        parts.append(f"m = {float(res['multiplier']):+.3g}")
    if res.get("n_pairs"):
        parts.append(f"{res['n_pairs']} pairs")
    return ", ".join(parts)


def _layer_ticks(ax: Axes, layers: np.ndarray) -> None:
    """Every layer ticked on the y axis up to 20 layers, else integer ticks chosen by matplotlib."""
    if len(layers) <= 20:
        ax.set_yticks(layers)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


# --------------------------------------------------------------------------- activation / attribution patching
def head_grid(df: pd.DataFrame, direction: str, value: str = "share") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(layers, heads, grid)`` of the head rows of one direction: ``grid[i, j]`` is ``value`` of head
    ``heads[j]`` in layer ``layers[i]`` (NaN where the table has no such head)."""
    g = df[(df["type"] == "head") & (df["direction"] == direction)]
    wide = g.pivot_table(index="layer", columns="head", values=value, aggfunc="first")
    return wide.index.to_numpy(int), wide.columns.to_numpy(int), wide.to_numpy(float)


def layer_shares(df: pd.DataFrame, direction: str, value: str = "share") -> pd.DataFrame:
    """Per layer of one direction: ``attn`` (the ``attn`` component, or the sum of the layer's heads),
    ``mlp`` and ``block`` (NaN where the table has none), indexed by layer."""
    g = df[df["direction"] == direction]
    layers = sorted(int(x) for x in g.loc[g["type"].isin(["head", "attn", "mlp", "block"]), "layer"].unique())
    out = pd.DataFrame(index=pd.Index(layers, name="layer"), columns=["attn", "mlp", "block"], dtype=float)
    attn = "attn" if (g["type"] == "attn").any() else "head"
    for col, kind in (("attn", attn), ("mlp", "mlp"), ("block", "block")):
        sub = g[g["type"] == kind]
        if len(sub):
            out[col] = sub.groupby("layer")[value].sum(min_count=1).reindex(layers).astype(float)
    return out


def _heatmap(ax: Axes, layers: np.ndarray, heads: np.ndarray, grid: np.ndarray, bound: float) -> Any:
    """One layer x head heatmap in data coordinates (rows at their layer, columns at their head)."""
    extent = (heads.min() - 0.5, heads.max() + 0.5, layers.max() + 0.5, layers.min() - 0.5)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=_HEATMAP, vmin=-bound, vmax=bound, aspect="auto",
                   interpolation="nearest", extent=extent)
    ax.set_xlabel("head")
    ax.set_xticks(heads if len(heads) <= 16 else heads[:: int(np.ceil(len(heads) / 16))])
    _layer_ticks(ax, layers)
    ax.spines[:].set_visible(False)
    return im


def _layer_bars(ax: Axes, per_layer: pd.DataFrame, ylim: tuple[float, float] | None) -> None:
    """Horizontal bars per layer: attention and MLP side by side, the whole block as a dot."""
    y = per_layer.index.to_numpy(float)
    h = 0.38
    ax.barh(y - h / 2, per_layer["attn"].fillna(0).to_numpy(float), height=h, color=ATTN_COLOR, label="attention")
    ax.barh(y + h / 2, per_layer["mlp"].fillna(0).to_numpy(float), height=h, color=MLP_COLOR, label="MLP")
    if per_layer["block"].notna().any():
        ok = per_layer["block"].notna().to_numpy()
        ax.plot(per_layer["block"].to_numpy(float)[ok], y[ok], linestyle="none", marker="o", markersize=2.6,
                color=OKABE_ITO["black"], label="whole block")
    ax.axvline(0, color="0.6", linewidth=0.6, zorder=0)
    ax.set_ylim(*(ylim or (y.max() + 0.5, y.min() - 0.5)))
    _layer_ticks(ax, per_layer.index.to_numpy(int))
    ax.set_ylabel("layer")
    ax.set_xlabel("share of the steering effect")


def _agreement_note(res: Mapping[str, Any]) -> str | None:
    """``"Spearman ρ vs. exact (necessity) = 0.98"`` from an attribution result's ``agreement`` table."""
    rows = res.get("agreement") or []
    nec = [r for r in rows if r.get("direction") == "necessity" and r.get("spearman") is not None]
    best = next((r for t in ("all", "head") for r in nec if r.get("type") == t), None)
    if best is None or not np.isfinite(float(best["spearman"])):
        return None
    what = "" if best["type"] == "all" else ", heads"
    return f"Spearman ρ vs. exact (necessity{what}) = {float(best['spearman']):.2f}"


def plot_activation_patching(result: Any, ax: Axes | None = None, value: str = "share") -> Figure:
    """Which heads and layers carry a steering effect: an ``activation_patching`` (or ``attribution_patching``) result.

    Panels: (a) the necessity and (b) the sufficiency ``share`` of each head as a layer x head heatmap
    (one diverging scale centred on 0 for both, one colour bar); (c) per layer, the necessity share of
    the attention (the ``attn`` component, or the sum of the layer's heads) beside the MLP's, and the
    whole block's as a dot. The title names the vector, the multiplier, the total effect and the
    direct path's share; an attribution result says it is the gradient approximation and gives its
    Spearman rank agreement with exact patching when the result has an ``agreement`` table.

    Args:
        result: an ``activation_patching`` or ``attribution_patching`` result
            (``workbench.analysis.patching``, ``workbench.analysis.attribution``).
        ax: draw only the necessity heatmap into this axes.
        value: ``"share"`` (of the total effect) or ``"effect"`` (Δ log-odds carried).

    Raises:
        ResultFormatError: another kind, or rows without ``direction, type, layer, head`` and ``value``.
    """
    res = read_result(result, (results.ACTIVATION_PATCHING, results.ATTRIBUTION_PATCHING), "plot_activation_patching")
    df = main_table(res)
    need(df, ["direction", "type", "layer", "head", value], "plot_activation_patching")
    directions = [d for d in DIRECTIONS if (df["direction"] == d).any()]
    with_heads = [d for d in directions if ((df["direction"] == d) & (df["type"] == "head")).any()]
    bar_dir = "necessity" if "necessity" in directions else directions[0]
    grids = {d: head_grid(df, d, value) for d in with_heads}
    finite = np.concatenate([np.abs(g[np.isfinite(g)]) for _, _, g in grids.values()] or [np.zeros(0)])
    bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    label = "share of the steering effect" if value == "share" else "Δ log-odds carried"
    with paper_style():
        if ax is not None:
            if "necessity" not in grids:
                raise ResultFormatError("plot_activation_patching: no necessity head rows to draw into ax")
            im = _heatmap(ax, *grids["necessity"], bound)
            ax.set_ylabel("layer")
            ax.figure.colorbar(im, ax=ax, shrink=0.85, pad=0.02, label=label)
            return ax.figure
        n_layers = int(df.loc[df["type"] != "direct", "layer"].nunique())
        ratios = [1.0] * len(grids) + [1.15]
        fig = Figure(figsize=(2 * COLUMN_WIDTH if grids else COLUMN_WIDTH, 1.3 + 0.13 * max(n_layers, 6)),
                     layout="constrained")
        axes = list(fig.subplots(1, len(ratios), squeeze=False, gridspec_kw={"width_ratios": ratios})[0])
        letters = iter("abcd")
        im = None
        for a, (d, (layers, heads, grid)) in zip(axes, grids.items()):
            im = _heatmap(a, layers, heads, grid, bound)
            a.set_title(f"({next(letters)}) {d}: {'share' if value == 'share' else 'effect'} per head")
        if im is not None:
            axes[0].set_ylabel("layer")
            cbar = fig.colorbar(im, ax=axes[: len(grids)], shrink=0.85, pad=0.02)
            cbar.ax.set_title("share" if value == "share" else "Δ log-odds", fontsize=6)
        ylim = axes[0].get_ylim() if grids else None
        bars = axes[-1]
        _layer_bars(bars, layer_shares(df, bar_dir, value), ylim)
        if value != "share":
            bars.set_xlabel("Δ log-odds carried")
        if grids:
            bars.set_ylabel("")
        bars.set_title(f"({next(letters)}) {bar_dir} per layer")
        place_legend(bars, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3)
        attribution = res.kind == results.ATTRIBUTION_PATCHING
        head = "attribution (gradient approximation)" if attribution else "activation patching"
        lines = [f"{head}: {_describe(res)}"]
        extra = []
        if res.get("total_effect") is not None:
            extra.append(f"total effect {float(res['total_effect']):.2f} log-odds")
        direct = df[(df["type"] == "direct") & (df["direction"] == bar_dir)]
        if len(direct) and pd.notna(direct[value].iloc[0]):
            extra.append(f"direct path {float(direct[value].iloc[0]):.2f} ({bar_dir})")
        note = _agreement_note(res) if attribution else None
        if note:
            extra.append(note)
        if extra:
            lines.append("; ".join(extra))
        fig.suptitle("\n".join(lines), fontsize=7.5)
    return fig


# --------------------------------------------------------------------------- direct logit attribution
def plot_direct_logit_attribution(result: Any, ax: Axes | None = None, top: int = 8) -> Figure:
    """Direct logit attribution of the steered change (a ``direct_logit_attribution`` result, ``attribution.steered_dla``).

    Left: per layer after the hook, the attention's (heads and bias) and the MLP's DLA as grouped bars,
    and the cumulative sum (starting from the upstream residual and the vector's own direct path) as a
    line, which ends at the change of the logit difference at the read token. Right: the ``top``
    components by ``|DLA|`` with their intervals. With ``ax``, only the left panel.

    Raises:
        ResultFormatError: another kind, or no ``layers`` table with ``layer, attn, mlp``.
    """
    res = read_result(result, (results.DIRECT_LOGIT_ATTRIBUTION,), "plot_direct_logit_attribution")
    layers = main_table(res, "layers").sort_values("layer")
    need(layers, ["layer", "attn", "mlp"], "plot_direct_logit_attribution")
    rows = res.table()
    with paper_style():
        if ax is None:
            fig = Figure(figsize=(2 * COLUMN_WIDTH, 2.4), layout="constrained")
            main, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.0, 1.0]})
        else:
            fig, main = new_axes(ax)
            side = None
        x = layers["layer"].to_numpy(float)
        w = 0.4
        main.bar(x - w / 2, layers["attn"].astype(float), width=w, color=ATTN_COLOR, label="attention")
        main.bar(x + w / 2, layers["mlp"].astype(float), width=w, color=MLP_COLOR, label="MLP")
        if "cumulative" in layers.columns:
            main.plot(x, layers["cumulative"].astype(float), color=OKABE_ITO["black"], marker="o", markersize=2.2,
                      label="cumulative")
        main.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        main.set_xlabel("layer")
        main.set_ylabel("Δ logit difference\n(matching − not matching)")
        main.xaxis.set_major_locator(MaxNLocator(integer=True))
        title = f"direct logit attribution: {_describe(res)}"
        start = rows[rows["type"].isin(["upstream", "vector"])] if "type" in rows.columns else rows.iloc[:0]
        if len(start) and "dla" in start.columns:
            title += f"\nstart (upstream + vector) {float(start['dla'].sum()):.2f}"
            if res.get("total_logit_diff_change") is not None:
                title += f", total {float(res['total_logit_diff_change']):.2f}"
        main.set_title(title)
        if side is not None and {"component", "dla"} <= set(rows.columns):
            comps = rows[~rows["type"].isin(["upstream", "vector"])] if "type" in rows.columns else rows
            comps = comps.assign(_abs=comps["dla"].abs()).nlargest(top, "_abs").iloc[::-1]
            y = np.arange(len(comps))
            vals = comps["dla"].to_numpy(float)
            err = None
            if {"dla_ci_low", "dla_ci_high"} <= set(comps.columns):
                err = np.vstack([np.nan_to_num(vals - comps["dla_ci_low"].to_numpy(float)),
                                 np.nan_to_num(comps["dla_ci_high"].to_numpy(float) - vals)])
            colours = [MLP_COLOR if t == "mlp" else ATTN_COLOR for t in comps.get("type", ["head"] * len(comps))]
            side.barh(y, vals, color=colours, height=0.7, xerr=err, error_kw={"linewidth": 0.6, "capsize": 1.5})
            side.set_yticks(y, comps["component"].astype(str))
            side.axvline(0, color="0.3", linewidth=0.6)
            side.set_xlabel("DLA (mean, 95% CI)")
            side.set_title(f"top {len(comps)} components by |DLA|")
            side.tick_params(axis="y", length=0)
        place_legend(main, ncols=3)  # last: the layout with every panel drawn
    return fig


# --------------------------------------------------------------------------- attention shift
def plot_attention_shift(result: Any, ax: Axes | None = None) -> Figure:
    """How steering moves the top heads' attention (an ``attention_shift`` result, ``attention_shift.attention_shifts``).

    Upper panel: per head (in the order of the ``heads`` table's ``rank``), the change of the attention
    mass on each key region (``first`` position, the ``prompt``, the ``answer`` so far), steered minus
    unsteered, with intervals; lower panel: the total variation distance between the two patterns.
    With ``ax``, only the upper panel.

    Raises:
        ResultFormatError: another kind, or rows without ``component, region, delta``.
    """
    res = read_result(result, (results.ATTENTION_SHIFT,), "plot_attention_shift")
    df = main_table(res)
    need(df, ["component", "region", "delta"], "plot_attention_shift")
    heads_t = res.table("heads") if "heads" in res.tables else pd.DataFrame()
    order = list(heads_t.sort_values("rank")["component"]) if {"component", "rank"} <= set(heads_t.columns) else []
    order += [c for c in dict.fromkeys(df["component"]) if c not in order]
    regions = list(dict.fromkeys(df["region"]))
    spare = iter(c for c in PALETTE if c not in REGION_COLORS.values())
    colours = {r: REGION_COLORS.get(r) or next(spare) for r in regions}
    has_tv = ax is None and "tv_distance" in heads_t.columns
    with paper_style():
        if ax is not None:
            fig, main = ax.figure, ax
            lower = None
        elif has_tv:
            fig = Figure(figsize=(COLUMN_WIDTH, 2.9), layout="constrained")
            main, lower = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
        else:
            fig, main = new_axes(None)
            lower = None
        x = np.arange(len(order))
        w = 0.8 / len(regions)
        for j, reg in enumerate(regions):
            g = df[df["region"] == reg].set_index("component").reindex(order)
            vals = g["delta"].to_numpy(float)
            err = None
            if {"delta_ci_low", "delta_ci_high"} <= set(g.columns):
                err = np.vstack([np.nan_to_num(vals - g["delta_ci_low"].to_numpy(float)),
                                 np.nan_to_num(g["delta_ci_high"].to_numpy(float) - vals)])
            main.bar(x + (j - (len(regions) - 1) / 2) * w, vals, width=w * 0.95, color=colours[reg], yerr=err,
                     error_kw={"linewidth": 0.6, "capsize": 1.5}, label=str(reg))
        main.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        main.set_ylabel("Δ attention mass\n(steered − unsteered)")
        title = f"attention shift at the read position\n{_describe(res)}"
        if ax is None:
            fig.suptitle(title, fontsize=7.5)
        else:
            main.set_title(title)
        place_legend(main, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(regions), title="key positions")
        target = lower if lower is not None else main
        target.set_xticks(x, order, rotation=30 if len(order) > 3 else 0, ha="right" if len(order) > 3 else "center")
        if lower is not None:
            tv = heads_t.set_index("component").reindex(order)
            vals = tv["tv_distance"].to_numpy(float)
            err = None
            if {"tv_distance_ci_low", "tv_distance_ci_high"} <= set(tv.columns):
                err = np.vstack([np.nan_to_num(vals - tv["tv_distance_ci_low"].to_numpy(float)),
                                 np.nan_to_num(tv["tv_distance_ci_high"].to_numpy(float) - vals)])
            lower.bar(x, vals, width=0.5, color="0.45", yerr=err, error_kw={"linewidth": 0.6, "capsize": 1.5})
            lower.set_ylabel("total variation")
            lower.set_xlabel("head")
        else:
            main.set_xlabel("head")
    return fig


# --------------------------------------------------------------------------- route comparison
def _cosine_table(res: Result) -> pd.DataFrame:
    """Cosines as a wide table: one row per ``direction, components``, one column per pair of labels."""
    cos = res.table("cosines") if "cosines" in res.tables else pd.DataFrame()
    if cos.empty:
        return pd.DataFrame()
    cos = cos.assign(pair=cos["label_a"].astype(str) + " vs. " + cos["label_b"].astype(str),
                     what=cos["direction"].astype(str) + ", " + cos["components"].astype(str))
    return cos.pivot_table(index="what", columns="pair", values="cosine", aggfunc="first", sort=False).reindex(
        index=list(dict.fromkeys(cos["what"])), columns=list(dict.fromkeys(cos["pair"])))


def plot_mechanism_routes(result: Any, ax: Axes | None = None, direction: str = "necessity",
                          value: str = "share") -> Figure:
    """Do several vectors work through the same components? (a ``mechanism_routes`` result, ``routes.compare_routes``)

    Left: each label's per-layer profile of ``direction``: the attention's ``value`` (sum of the
    layer's heads; solid) and the MLP's (dashed), one colour per label; the share is comparable across
    vectors of different strength. Right: the cosine of the labels' component profiles, per direction
    and component set (rows) and pair of labels (columns), as an annotated heatmap. With ``ax``, only the
    left panel.

    Raises:
        ResultFormatError: another kind, or rows without ``label, direction, type, layer`` and ``value``.
    """
    res = read_result(result, (results.MECHANISM_ROUTES,), "plot_mechanism_routes")
    df = main_table(res)
    need(df, ["label", "direction", "type", "layer", value], "plot_mechanism_routes")
    labels = list(res.get("labels") or dict.fromkeys(df["label"]))
    wide = _cosine_table(res)
    mults = res.get("multipliers") or {}
    estimates = (dict(zip(df["label"].astype(str), df["estimate"])) if "estimate" in df else {})
    with paper_style():
        if ax is not None:
            fig, left, right = ax.figure, ax, None
        elif wide.empty:
            fig, left = new_axes(None)
            right = None
        else:
            fig = Figure(figsize=(2 * COLUMN_WIDTH, 2.5), layout="constrained")
            left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.4, 0.5 + 0.45 * wide.shape[1]]})
        colours = series_colors(labels)
        for lab in labels:
            per = layer_shares(df[df["label"].astype(str) == str(lab)], direction, value)
            notes = ([f"m = {float(mults[lab]):+.3g}"] if lab in mults else []) + \
                (["attribution"] if estimates.get(str(lab)) == "attribution" else [])  # a gradient estimate
            name = f"{lab} ({', '.join(notes)})" if notes else str(lab)
            x = per.index.to_numpy(float)
            left.plot(x, per["attn"].to_numpy(float), color=colours[lab], marker="o", markersize=2.2,
                      label=f"{name} attention")
            left.plot(x, per["mlp"].to_numpy(float), color=colours[lab], linestyle="--", marker="s", markersize=2.2,
                      label=f"{name} MLP")
        left.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        left.set_xlabel("layer")
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.set_ylabel(("share of the steering effect" if value == "share" else "Δ log-odds carried") + f"\n({direction})")
        left.set_title(f"(a) route per layer ({direction})")
        if right is not None:
            mat = wide.to_numpy(float)
            right.imshow(np.ma.masked_invalid(mat), cmap=_HEATMAP, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    v = mat[i, j]
                    right.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=6,
                               color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
            right.set_xticks(range(mat.shape[1]), list(wide.columns), rotation=30 if mat.shape[1] > 1 else 0,
                             ha="right" if mat.shape[1] > 1 else "center")
            right.set_yticks(range(mat.shape[0]), list(wide.index))
            right.set_ylabel("direction, components")
            right.spines[:].set_visible(False)
            right.tick_params(length=0)
            right.set_title("(b) cosine of\ncomponent profiles")
        place_legend(left)  # last: the layout with every panel drawn
    return fig


__all__ = ["head_grid", "layer_shares", "plot_activation_patching", "plot_attention_shift",
           "plot_direct_logit_attribution", "plot_mechanism_routes"]
