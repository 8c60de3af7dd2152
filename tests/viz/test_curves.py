"""Curves against the multiplier or step (workbench.viz.curves), drawn from hand-written results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from viz_results import (
    MULTS,
    eval_of,
    eval_result,
    history,
    history_result,
    labelled,
    line_colors,
    matched_cost_result,
    no_pyplot_leaks,
    refusal_result,
)

from workbench.core import results as R
from workbench.viz import curves as C
from workbench.viz.style import COLUMN_WIDTH, METHOD_COLORS

assert no_pyplot_leaks  # autouse: no figure may be left in pyplot's list


def test_multiplier_curves_lines_bands_and_method_colours():
    fig = C.plot_multiplier_curves(eval_result())
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = labelled(ax)
    assert [ln.get_label() for ln in lines] == ["bipo", "caa"]
    np.testing.assert_allclose(lines[0].get_xdata(), MULTS)
    np.testing.assert_allclose(lines[0].get_ydata(), MULTS)
    np.testing.assert_allclose(lines[1].get_ydata(), [0.5 * m for m in MULTS])
    assert line_colors(ax) == [METHOD_COLORS["bipo"].lower(), METHOD_COLORS["caa"].lower()]
    assert len(ax.collections) == 2  # one bootstrap band per vector
    np.testing.assert_allclose(ax.collections[0].get_paths()[0].vertices[:, 1].min(), -2.2)
    assert ax.get_xlabel() == "multiplier m" and ax.get_ylabel() == C.METRIC_LABELS["logodds"]
    assert fig.get_figwidth() == pytest.approx(COLUMN_WIDTH)


def test_multiplier_curves_metric_into_given_axes_and_loaded_json():
    fig0 = Figure()
    ax = fig0.add_subplot()
    fig = C.plot_multiplier_curves(dict(eval_result()), ax=ax, metric="ab")  # the mapping as loaded from JSON
    assert fig is fig0 and ax.get_ylabel() == "p(matching answer)"
    assert len(ax.collections) == 0  # no interval columns: no band
    np.testing.assert_allclose(labelled(ax)[1].get_ydata(), [0.5 + 0.05 * m for m in MULTS])


def test_multiplier_curves_read_only_results():
    df = pd.DataFrame(eval_result()["metrics"]["ab"])
    with pytest.raises(R.ResultFormatError, match="plot_multiplier_curves draws a eval result, not a DataFrame"):
        C.plot_multiplier_curves(df, metric="ab")
    fig = C.plot_multiplier_curves(R.result(R.EVAL, metrics={"ab": df}), metric="ab")  # the table made a result
    np.testing.assert_allclose(labelled(fig.axes[0])[0].get_ydata(), [0.5 + 0.1 * m for m in MULTS])


def test_multiplier_curves_normalizations_and_errors():
    rows = eval_result()["metrics"]["logodds"]
    both = [dict(r, normalization="sum") for r in rows] + [dict(r, normalization="per_token", mean=r["mean"] / 4)
                                                          for r in rows]
    lines = labelled(C.plot_multiplier_curves(eval_of({"logodds": both})).axes[0])
    assert len(lines) == 2 and list(lines[0].get_ydata()) == list(MULTS)  # only the summed log-odds
    per_token = labelled(C.plot_multiplier_curves(eval_of({"logodds": both}), normalization="per_token").axes[0])
    np.testing.assert_allclose(per_token[0].get_ydata(), [m / 4 for m in MULTS])
    with pytest.raises(R.ResultFormatError, match="normalization 'mean'"):
        C.plot_multiplier_curves(eval_of({"logodds": both}), normalization="mean")
    with pytest.raises(R.ResultFormatError, match="metric 'ab'"):
        C.plot_multiplier_curves(eval_of({"logodds": []}), metric="ab")
    with pytest.raises(R.ResultFormatError, match="no rows"):
        C.plot_multiplier_curves(eval_of({"logodds": []}))
    with pytest.raises(R.ResultFormatError, match="plot_multiplier_curves draws a eval result, not a refusal result"):
        C.plot_multiplier_curves(refusal_result())


def test_training_curves_three_panels_and_held_out():
    fig = C.plot_training_curves(history_result())
    assert [a.get_ylabel() for a in fig.axes] == ["BiPO loss", "preference acc.", "vector norm"]
    loss_line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(loss_line.get_xdata(), np.arange(1, 13))
    np.testing.assert_allclose(loss_line.get_ydata(), [0.69 * 0.9 ** i for i in range(12)])
    epochs = [{"epoch": 1, "step": 6, "loss": 0.5, "eval_loss": 0.6, "eval_accuracy": 0.7},
              {"epoch": 2, "step": 12, "loss": 0.3, "eval_loss": 0.5, "eval_accuracy": 0.8}]
    fig = C.plot_training_curves(history_result(epochs=epochs))
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [6, 12] and list(dashed[0].get_ydata()) == [0.6, 0.5]
    assert fig.axes[0].get_legend() is not None


def test_training_curves_overlay_runs_and_one_panel():
    import torch

    from workbench.core.vector import SteeringVector
    from workbench.train import bipo

    trained = bipo.TrainResult(SteeringVector(torch.ones(4), "blocks.0.hook_resid_post"), history(), [])
    fig = C.plot_training_curves({"power": history_result(5), "wealth": trained.to_dict()})
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["power train", "wealth train"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), [r["loss"] for r in history()])
    fig = C.plot_training_curves(history_result(), ax=Figure().add_subplot(), metric="norm")
    assert fig.axes[0].get_ylabel() == "vector norm"
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.3 * i for i in range(12)])
    # a version-1 history file (a bare list of step records) is a result; a TrainResult is drawn by its result
    np.testing.assert_allclose(C.plot_training_curves(history()).axes[0].get_lines()[0].get_ydata(),
                               [r["loss"] for r in history()])
    with pytest.raises(R.ResultFormatError, match="draws a bipo_history result, not a TrainResult"):
        C.plot_training_curves(trained)
    with pytest.raises(R.ResultFormatError, match="not a list"):
        C.plot_training_curves([])


def test_refusal_panels_cost_and_templates():
    fig = C.plot_refusal(refusal_result())
    rate, logodds, cost = fig.axes
    assert [ln.get_label() for ln in labelled(rate)] == ["bipo", "bipo + persona", "caa", "caa + persona"]
    assert [ln.get_linestyle() for ln in labelled(rate)] == ["-", "--", "-", "--"]
    np.testing.assert_allclose(labelled(rate)[2].get_ydata(), [0.4, 0.5, 0.6])
    np.testing.assert_allclose(labelled(logodds)[0].get_ydata(), [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(labelled(cost)[0].get_ydata(), [0.01, 0.0, 0.01])
    assert len(rate.collections) == 4 and len(logodds.collections) == 0  # bands where the rows have intervals
    assert rate.get_ylim() == pytest.approx((-0.03, 1.03))
    assert fig.get_figwidth() == pytest.approx(3 * COLUMN_WIDTH)
    assert len(C.plot_refusal(refusal_result(with_cost=False)).axes) == 2
    one = Figure().add_subplot()
    assert C.plot_refusal(refusal_result(), ax=one).axes == [one] and one.get_ylabel() == "refusal rate"


def test_cost_effect_lines_found_points_and_budgets():
    fig = C.plot_cost_effect(matched_cost_result())
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("v (m > 0)", "v (m < 0)")]
    np.testing.assert_allclose(lines[0].get_xdata(), [0.0, 0.1, 0.2])
    np.testing.assert_allclose(lines[1].get_ydata(), [0.0, -1.0, -2.0])
    budgets = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert [ln.get_xdata()[0] for ln in budgets] == [0.1, 0.2]
    assert ax.get_xlabel() == "KL(unsteered ‖ steered) per token"
    assert to_hex(lines[0].get_color()) == to_hex(lines[1].get_color())
    with pytest.raises(R.ResultFormatError, match="plot_cost_effect draws a matched_cost result, not a DataFrame"):
        C.plot_cost_effect(pd.DataFrame({"a": [1]}))


def test_cost_effect_series_sharing_a_colour_differ_by_marker():
    """Vectors beside prompting points outnumber the palette: no two series look the same."""
    labels = ["bipo", "reps", "caa", "pca"] + [f"prompt: instruction+{m}" for m in ("bipo", "reps", "caa", "pca")] + [
        "prompt: instruction", "prompt: k-shot", "extra 1", "extra 2"]
    points = [{"vector": lab, "direction": d, "multiplier": d * m, "cost": 0.1 * m * (i + 1), "effect": d * m * (i + 1)}
              for i, lab in enumerate(labels) for d in (1, -1) for m in (1.0, 2.0)]
    rows = [{"vector": lab, "direction": 1, "budget": 0.1, "reached": False, "multiplier": None, "cost": None,
             "effect": None, "effect_ci_low": None, "effect_ci_high": None} for lab in labels]
    fig = C.plot_cost_effect(R.result(R.MATCHED_COST, cost="kl", budgets=[0.1], rows=rows, points=points, slopes=[]))
    looks = {(to_hex(ln.get_color()), ln.get_marker()) for ln in fig.axes[0].get_lines()
             if ln.get_label().endswith("(m > 0)")}
    assert len(looks) == len(labels)


def _eval_with_steerability():
    from workbench.evaluate.preference import logodds_tables
    rng = np.random.default_rng(0)
    rows = [{"vector": v, "multiplier": m, "pair": i, "logodds": s * m + rng.normal(0, 0.3) + i * 0.1 * m,
             "logodds_per_token": 0.0} for v, s in (("bipo", 1.0), ("caa", 0.2)) for i in range(12) for m in MULTS]
    return eval_of(logodds_tables(pd.DataFrame(rows), n_boot=200))


def test_steerability_violins_per_vector_and_figures():
    from workbench.viz.figures import figures_for
    res = _eval_with_steerability()
    fig = C.plot_steerability(res)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].startswith("bipo\nanti ") and "[" in ticks[0] and ticks[1].startswith("caa")
    assert len(ax.collections) >= 4  # two violins and two sets of dots
    dots = [c for c in ax.collections if len(c.get_offsets()) == 12]
    assert len(dots) == 2
    assert "steerability" in figures_for(res)  # `workbench figures` draws it for an eval result
    with pytest.raises(R.ResultFormatError, match="steerability_pairs"):
        C.plot_steerability(eval_result())  # an older eval result without per-pair rows


def test_report_has_steerability_rows(tmp_path):
    from workbench.viz.report import report
    _eval_with_steerability().save(tmp_path / "eval.json")
    text = report(tmp_path)
    assert "Per-example steerability" in text and "anti-steerable [95 % CI]" in text
    assert "moved > 1 nat (m > 0)" in text and "at m = +2" in text
