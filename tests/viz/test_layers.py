"""Figures across layers (workbench.viz.layers): sweep, cosine, logit lens, from hand-written results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from viz_results import (
    cosine_result,
    labelled,
    layers_result,
    no_pyplot_leaks,
    sweep_result,
    tokens_result,
)

from workbench.core import results as R
from workbench.viz import layers as L
from workbench.viz.style import OKABE_ITO

assert no_pyplot_leaks  # autouse: no figure may be left in pyplot's list


def test_layer_sweep_effect_at_columns_and_cosine_panel():
    fig = L.plot_layer_sweep({"bipo": sweep_result("bipo", 2.0), "caa": sweep_result("caa")})
    ax_eff, ax_cos = fig.axes
    assert [ln.get_label() for ln in labelled(ax_eff)] == ["bipo (m = +1)", "bipo (m = -1)", "caa (m = +1)", "caa (m = -1)"]
    np.testing.assert_allclose(ax_eff.get_lines()[0].get_ydata(), [2.0 * x / 10 for x in range(6)])
    assert ax_eff.get_lines()[1].get_linestyle() == "--"
    assert len(ax_cos.get_lines()) == 2  # bipo's cosines (+ the zero line); caa has none
    np.testing.assert_allclose(ax_cos.get_lines()[0].get_ydata(), [0.5] * 6)
    assert ax_cos.get_xlabel() == "layer"


def test_layer_sweep_method_from_the_result_and_interval_columns_ignored():
    res = sweep_result("bipo")
    rows = [{k: v for k, v in r.items() if k != "method"} | {"effect@+1_ci_low": 0.0} for r in res["rows"]]
    fig = L.plot_layer_sweep(R.result(R.SWEEP, method="bipo", rows=rows))
    assert [ln.get_label() for ln in labelled(fig.axes[0])] == ["bipo (m = +1)", "bipo (m = -1)"]


def test_layer_sweep_plus_minus_layout_single_axes():
    rows = [{"layer": i, "method": "caa", "effect_plus": i, "effect_minus": -i} for i in range(4)]
    fig = L.plot_layer_sweep(R.result(R.SWEEP, rows=rows))
    assert len(fig.axes) == 1
    assert [ln.get_label() for ln in fig.axes[0].get_lines()][:2] == ["caa (+m)", "caa (−m)"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), [0, -1, -2, -3])
    with pytest.raises(R.ResultFormatError, match="plot_layer_sweep.*effect"):
        L.plot_layer_sweep(R.result(R.SWEEP, rows=[{"layer": 1, "norm": 2}]))
    with pytest.raises(R.ResultFormatError, match="plot_layer_sweep draws a sweep result, not a cosine result"):
        L.plot_layer_sweep(cosine_result())


def test_layer_sweep_overlays_results_and_rejects_tables():
    fig = L.plot_layer_sweep({"caa": sweep_result("caa"), "bipo": sweep_result("bipo")})
    assert [ln.get_label() for ln in labelled(fig.axes[0])][:3] == ["caa (m = +1)", "caa (m = -1)", "bipo (m = +1)"]
    with pytest.raises(R.ResultFormatError, match="plot_layer_sweep draws a sweep result, not a DataFrame"):
        L.plot_layer_sweep({"bipo": pd.DataFrame(sweep_result("bipo")["rows"])})


def test_cosine_heatmap_values_and_annotations():
    fig = L.plot_cosine_heatmap(cosine_result())
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), cosine_result()["matrix"])
    assert ax.images[0].get_clim() == (-1, 1)
    assert len(ax.texts) == 9 and ax.texts[1].get_text() == "0.40"
    assert [t.get_text() for t in ax.get_yticklabels()] == cosine_result()["labels"]
    assert ax.get_xlabel() == ""
    layers = R.result(R.COSINE, labels=list(range(30)), matrix=np.eye(30).tolist())
    big = L.plot_cosine_heatmap(layers).axes[0]
    assert len(big.texts) == 0 and big.get_xlabel() == "layer"  # too many cells to annotate; int labels are layers
    assert [t.get_text() for t in big.get_yticklabels()][:3] == ["0", "2", "4"]  # every second of 30 labels


def test_cosine_heatmap_rejects_mismatched_labels_and_a_bare_square():
    with pytest.raises(R.ResultFormatError, match="2 labels"):
        L.plot_cosine_heatmap({"kind": "cosine", "labels": ["a", "b"], "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    square = pd.DataFrame([[1.0, 0.25], [0.25, 1.0]], index=["a", "b"], columns=["a", "b"])
    with pytest.raises(R.ResultFormatError, match="plot_cosine_heatmap draws a cosine result, not a DataFrame"):
        L.plot_cosine_heatmap(square)


def test_method_cosine_line():
    rows = [{"layer": i, "cosine": 0.1 * i, "norm_bipo": 1, "norm_caa": 2} for i in range(5)]
    fig = L.plot_method_cosine(R.result(R.COSINE_METHODS, rows=rows))
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.1 * i for i in range(5)])
    assert fig.axes[0].get_ylabel() == "cosine (BiPO vs. CAA)"


def test_logit_lens_tokens_bars_ordered_and_visible_tokens():
    fig = L.plot_logit_lens_tokens(tokens_result())
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert widths == [-4, -3, -2, -1, 1, 2, 3, 4]  # strongest promoted at the top
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "␣tokp1" and labels[0] == "␣toks1"
    colours = {to_hex(p.get_facecolor()) for p in ax.patches}
    assert colours == {OKABE_ITO["blue"].lower(), OKABE_ITO["vermillion"].lower()}
    assert len(L.plot_logit_lens_tokens(tokens_result(), k=2).axes[0].patches) == 4


def test_logit_lens_tokens_one_panel_per_vector():
    rows = tokens_result()["rows"]
    both = [dict(r, vector="bipo") for r in rows] + [dict(r, vector="caa") for r in rows]
    fig = L.plot_logit_lens_tokens(R.result(R.LOGIT_LENS_TOKENS, rows=both))
    assert [a.get_title() for a in fig.axes] == ["bipo", "caa"]
    one = Figure().add_subplot()
    L.plot_logit_lens_tokens(R.result(R.LOGIT_LENS_TOKENS, rows=both), ax=one, title="t")
    assert len(one.patches) == 16 and one.get_title() == "t"


def test_logit_lens_layers_panels_and_shading():
    fig = L.plot_logit_lens_layers(layers_result())
    a1, a2 = fig.axes
    np.testing.assert_allclose(a1.get_lines()[0].get_ydata(), [0, 0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(a2.get_lines()[0].get_ydata(), [0.01 * i for i in range(6)])
    assert a2.get_ylabel() == "KL(steered ‖ unsteered)\n(nats)"
    spans = list(a1.patches)
    assert len(spans) == 1 and spans[0].get_x() == pytest.approx(-0.5)  # layers 0-1 are before the hook


def test_logit_lens_layers_reads_a_version_2_file():
    old = {"kind": "logit_lens_layers", "schema_version": 2,
           "rows": [{("kl" if k == "kl_steered_unsteered" else k): v for k, v in r.items()}
                    for r in layers_result()["rows"]]}
    np.testing.assert_allclose(L.plot_logit_lens_layers(old).axes[1].get_lines()[0].get_ydata(),
                               [0.01 * i for i in range(6)])


def test_coherence_reliability_points_per_layer_and_behavior():
    from workbench.core import results as R
    from workbench.viz.figures import figures_for
    from workbench.viz.layers import plot_coherence_reliability

    def sweep(behavior, shift):
        rows = [{"layer": x, "method": "caa", "behavior": behavior, "effect@+1": 0.1 * x, "coherence": 0.1 + 0.1 * x + shift,
                 "anti_steerable": max(0.0, 0.5 - 0.1 * x - shift)} for x in range(5)]
        return R.result(R.SWEEP, method="caa", multipliers=[1.0], rows=rows)

    fig = plot_coherence_reliability({"power": sweep("power", 0.0), "wealth": sweep("wealth", 0.05)})
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [5, 5]
    assert ax.collections[0].get_offsets()[2].tolist() == pytest.approx([0.3, 0.7])  # (coherence, 1 - anti)
    assert "Pearson r = 1.00" in ax.get_title()  # constructed to rise together
    assert ax.get_legend() is not None
    assert "coherence" in figures_for(sweep("power", 0.0))
    with pytest.raises(R.ResultFormatError, match="coherence"):
        plot_coherence_reliability(R.result(R.SWEEP, rows=[{"layer": 0, "effect@+1": 0.1}]))
