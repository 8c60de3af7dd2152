"""Figures of the mechanism analyses (workbench.viz.mechanism), from small hand-written results."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import AxesImage
from viz_results import no_pyplot_leaks

from workbench.core import results as R
from workbench.viz import mechanism as M
from workbench.viz import style as S
from workbench.viz.figures import figures_for
from workbench.viz.plots import plot

assert no_pyplot_leaks  # autouse: no figure may be left in pyplot's list

LAYERS, HEADS = (1, 2), (0, 1)


def share(direction, layer, head=-1, type_="head"):
    """A distinct share per component: negative for sufficiency, MLPs and blocks offset."""
    base = {"head": 0.1 * layer + 0.01 * head, "mlp": 0.05 * layer, "block": 0.3 * layer, "direct": 0.02}[type_]
    return base if direction == "necessity" else -base / 2


def patching_rows():
    rows = []
    for d in ("necessity", "sufficiency"):
        for L in LAYERS:
            comps = [("head", h, f"L{L}H{h}") for h in HEADS] + [("mlp", -1, f"L{L} mlp"), ("block", -1, f"L{L} block")]
            for t, h, name in comps:
                s = share(d, L, h, t)
                rows.append({"direction": d, "component": name, "type": t, "layer": L, "head": h, "effect": 2 * s,
                             "effect_ci_low": 2 * s - 0.1, "effect_ci_high": 2 * s + 0.1, "share": s,
                             "share_ci_low": s - 0.05, "share_ci_high": s + 0.05})
        s = share(d, 3, type_="direct")
        rows.append({"direction": d, "component": "direct", "type": "direct", "layer": 3, "head": -1, "effect": 2 * s,
                     "effect_ci_low": None, "effect_ci_high": None, "share": s, "share_ci_low": None,
                     "share_ci_high": None})
    return rows


def patching_result(kind=R.ACTIVATION_PATCHING, **extra):
    totals = [{"pair": i, "logodds_unsteered": 0.0, "logodds_steered": 2.0, "total_effect": 2.0} for i in range(3)]
    return R.result(kind, vector={"method": "bipo", "hook_name": "blocks.0.hook_resid_post", "layer": 0},
                    multiplier=1.0, n_pairs=3, total_effect=2.0, rows=patching_rows(), pairs=[], totals=totals, **extra)


def test_activation_patching_heatmaps_hold_the_shares():
    fig = plot(patching_result())
    nec, suf, bars, colorbar = fig.axes
    assert nec.get_title() == "(a) necessity: share per head"
    assert suf.get_title() == "(b) sufficiency: share per head"
    assert bars.get_title() == "(c) necessity per layer"
    assert colorbar.get_title() == "share"
    (im_n,), (im_s,) = nec.get_images(), suf.get_images()
    assert isinstance(im_n, AxesImage)
    grid_n, grid_s = im_n.get_array(), im_s.get_array()
    assert grid_n.shape == (2, 2)  # layers x heads
    assert grid_n[1, 1] == pytest.approx(share("necessity", 2, 1))  # layer 2, head 1
    assert grid_n[0, 1] == pytest.approx(share("necessity", 1, 1))
    assert grid_s[1, 0] == pytest.approx(share("sufficiency", 2, 0))
    vmin, vmax = im_n.get_clim()
    assert vmin == -vmax == pytest.approx(-share("necessity", 2, 1))  # one scale, centred on 0
    assert im_s.get_clim() == im_n.get_clim()
    assert nec.get_ylabel() == "layer" and nec.get_xlabel() == "head"
    assert "activation patching: bipo @ L0, m = +1, 3 pairs" in fig.get_suptitle()
    assert "direct path 0.02 (necessity)" in fig.get_suptitle()


def test_activation_patching_layer_bars_sum_the_heads():
    fig = plot(patching_result())
    bars = fig.axes[2]
    widths = [p.get_width() for p in bars.patches]
    attn = [share("necessity", L, 0) + share("necessity", L, 1) for L in LAYERS]
    mlp = [share("necessity", L, type_="mlp") for L in LAYERS]
    np.testing.assert_allclose(widths, attn + mlp)
    block = next(ln for ln in bars.get_lines() if ln.get_label() == "whole block")
    np.testing.assert_allclose(block.get_xdata(), [share("necessity", L, type_="block") for L in LAYERS])
    np.testing.assert_allclose(block.get_ydata(), LAYERS)
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["whole block", "attention", "MLP"]
    fig.draw_without_rendering()
    assert S.legend_box(bars).y1 < 0  # below the axes, off the bars
    assert bars.get_ylim() == fig.axes[0].get_ylim()  # the layers line up with the heatmaps'


def test_layer_shares_takes_an_attn_component_when_present():
    rows = [{"direction": "necessity", "type": "attn", "layer": 1, "head": -1, "share": 0.4},
            {"direction": "necessity", "type": "head", "layer": 1, "head": 0, "share": 0.1},
            {"direction": "necessity", "type": "mlp", "layer": 1, "head": -1, "share": 0.2}]
    import pandas as pd
    out = M.layer_shares(pd.DataFrame(rows), "necessity")
    assert out.loc[1, "attn"] == 0.4 and out.loc[1, "mlp"] == 0.2 and np.isnan(out.loc[1, "block"])


def test_attribution_patching_title_and_agreement():
    agreement = [{"direction": "necessity", "type": "all", "n_components": 9, "spearman": 0.934, "pearson": 0.9,
                  "top5_overlap": 4},
                 {"direction": "sufficiency", "type": "all", "n_components": 9, "spearman": 0.5, "pearson": 0.5,
                  "top5_overlap": 3}]
    fig = plot(patching_result(R.ATTRIBUTION_PATCHING, agreement=agreement))
    title = fig.get_suptitle()
    assert title.startswith("attribution (gradient approximation): bipo @ L0")
    assert "Spearman ρ vs. exact (necessity) = 0.93" in title
    assert "Spearman" not in plot(patching_result(R.ATTRIBUTION_PATCHING)).get_suptitle()  # no agreement table
    assert list(figures_for(patching_result(R.ATTRIBUTION_PATCHING))) == ["components"]


def test_activation_patching_into_an_axes_and_errors():
    fig, ax = S.new_axes(None)
    assert M.plot_activation_patching(patching_result(), ax=ax) is fig
    assert ax.get_images()[0].get_array()[1, 0] == pytest.approx(share("necessity", 2, 0))
    with pytest.raises(R.ResultFormatError, match="plot_activation_patching draws"):
        M.plot_activation_patching(dla_result())


def dla_result():
    rows = [{"component": "upstream", "type": "upstream", "layer": 1, "head": -1, "dla": 0.05},
            {"component": "vector", "type": "vector", "layer": 1, "head": -1, "dla": 0.1}]
    for L in LAYERS:
        rows += [{"component": f"L{L}H{h}", "type": "head", "layer": L, "head": h, "dla": 0.1 * L - 0.05 * h,
                  "dla_ci_low": 0.1 * L - 0.05 * h - 0.02, "dla_ci_high": 0.1 * L - 0.05 * h + 0.02} for h in HEADS]
        rows += [{"component": f"L{L} attn_bias", "type": "attn_bias", "layer": L, "head": -1, "dla": 0.0},
                 {"component": f"L{L} mlp", "type": "mlp", "layer": L, "head": -1, "dla": -0.3 * L,
                  "dla_ci_low": -0.3 * L - 0.1, "dla_ci_high": -0.3 * L + 0.1}]
    layers, running = [], 0.15
    for L in LAYERS:
        attn, mlp = 0.2 * L - 0.05, -0.3 * L
        running += attn + mlp
        layers.append({"layer": L, "attn": attn, "mlp": mlp, "total": attn + mlp, "cumulative": running})
    return R.result(R.DIRECT_LOGIT_ATTRIBUTION, rows=rows, layers=layers, multiplier=2.0, n_pairs=3,
                    vector={"method": "caa", "layer": 0}, total_logit_diff_change=running)


def test_direct_logit_attribution_bars_and_cumulative_line():
    fig = plot(dla_result())
    main, side = fig.axes
    heights = [p.get_height() for p in main.patches]
    np.testing.assert_allclose(heights, [0.15, 0.35, -0.3, -0.6])  # attention per layer, then MLP per layer
    (cum,) = [ln for ln in main.get_lines() if ln.get_label() == "cumulative"]
    np.testing.assert_allclose(cum.get_ydata(), [0.15 + 0.15 - 0.3, 0.15 + 0.15 - 0.3 + 0.35 - 0.6], atol=1e-12)
    assert "caa @ L0, m = +2, 3 pairs" in main.get_title()
    assert "start (upstream + vector) 0.15" in main.get_title()
    fig.draw_without_rendering()
    assert S._covered(S.legend_box(main), *S.data_footprint(main), pad=0.0) == 0
    labels = [t.get_text() for t in side.get_yticklabels()]
    assert labels[-1] == "L2 mlp" and "upstream" not in labels  # the largest |DLA| on top
    assert side.get_title() == "top 8 components by |DLA|"
    assert list(figures_for(dla_result())) == ["dla"]


def attention_result():
    rows, heads = [], []
    for rank, (L, h) in enumerate([(2, 1), (1, 0)], 1):
        for i, reg in enumerate(("first", "prompt", "answer")):
            d = 0.1 * (i - 1) * rank
            rows.append({"component": f"L{L}H{h}", "layer": L, "head": h, "region": reg, "attn_unsteered": 0.3,
                         "attn_steered": 0.3 + d, "delta": d, "delta_ci_low": d - 0.02, "delta_ci_high": d + 0.02})
        heads.append({"component": f"L{L}H{h}", "layer": L, "head": h, "rank": rank, "tv_distance": 0.1 * rank,
                      "tv_distance_ci_low": 0.1 * rank - 0.01, "tv_distance_ci_high": 0.1 * rank + 0.01})
    return R.result(R.ATTENTION_SHIFT, rows=rows, heads=heads[::-1], multiplier=1.0, n_pairs=3,
                    vector={"method": "bipo", "layer": 0})


def test_attention_shift_bars_per_head_in_rank_order():
    fig = plot(attention_result())
    main, lower = fig.axes
    assert [t.get_text() for t in lower.get_xticklabels()] == ["L2H1", "L1H0"]  # by rank, not table order
    assert [t.get_text() for t in main.get_legend().get_texts()] == ["first", "prompt", "answer"]
    answer = [p.get_height() for p in main.patches][4:6]  # third region's bars: answer of rank 1, 2
    np.testing.assert_allclose(answer, [0.1, 0.2])
    np.testing.assert_allclose([p.get_height() for p in lower.patches], [0.1, 0.2])
    assert lower.get_ylabel() == "total variation"
    fig.draw_without_rendering()
    assert S.legend_box(main).y0 >= 1.0  # above the axes
    assert list(figures_for(attention_result())) == ["attention"]


def routes_result():
    rows = []
    for lab, scale in (("bipo", 1.0), ("caa", 0.5)):
        rows += [{"label": lab, **r, "share": r["share"] * scale, "multiplier": 1.0, "total_effect": 2.0}
                 for r in patching_rows()]
    cosines = [{"direction": d, "components": c, "label_a": "bipo", "label_b": "caa", "n_components": 5,
                "cosine": 0.9 if d == "necessity" else 0.4}
               for d in ("necessity", "sufficiency") for c in ("all", "head", "mlp")]
    return R.result(R.MECHANISM_ROUTES, rows=rows, cosines=cosines, labels=["bipo", "caa"],
                    multipliers={"bipo": 1.0, "caa": 2.0})


def test_mechanism_routes_profiles_and_cosine_table():
    fig = plot(routes_result())
    left, right = fig.axes
    lines = {ln.get_label(): ln for ln in left.get_lines() if not ln.get_label().startswith("_")}
    assert list(lines) == ["bipo (m = +1) attention", "bipo (m = +1) MLP", "caa (m = +2) attention", "caa (m = +2) MLP"]
    np.testing.assert_allclose(lines["caa (m = +2) attention"].get_ydata(),
                               [0.5 * (share("necessity", L, 0) + share("necessity", L, 1)) for L in LAYERS])
    assert lines["bipo (m = +1) MLP"].get_linestyle() == "--"
    assert lines["bipo (m = +1) attention"].get_color() == S.METHOD_COLORS["bipo"]
    (im,) = right.get_images()
    assert im.get_array().shape == (6, 1)
    assert [t.get_text() for t in right.get_yticklabels()][0] == "necessity, all"
    assert [t.get_text() for t in right.get_xticklabels()] == ["bipo vs. caa"]
    assert sorted({t.get_text() for t in right.texts}) == ["0.40", "0.90"]
    fig.draw_without_rendering()
    assert S._covered(S.legend_box(left), *S.data_footprint(left), pad=0.0) == 0
    assert list(figures_for(routes_result())) == ["routes"]


def test_mechanism_routes_name_the_profiles_from_attribution_patching():
    res = routes_result()
    rows = [{**r, "estimate": "attribution" if r["label"] == "caa" else "exact"} for r in res["rows"]]
    fig = plot(R.result(R.MECHANISM_ROUTES, rows=rows, cosines=res["cosines"], labels=["bipo", "caa"],
                        multipliers={"bipo": 1.0, "caa": 2.0}))
    labels = [ln.get_label() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["bipo (m = +1) attention", "bipo (m = +1) MLP", "caa (m = +2, attribution) attention",
                      "caa (m = +2, attribution) MLP"]
