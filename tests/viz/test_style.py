"""The house figure style (workbench.viz.style): colours, visible tokens, atomic saving."""

from __future__ import annotations

import matplotlib
import pytest
from viz_results import eval_result, no_pyplot_leaks

from workbench.viz import style as S
from workbench.viz.curves import plot_multiplier_curves

assert no_pyplot_leaks  # autouse: no figure may be left in pyplot's list


@pytest.mark.parametrize("token, shown", [(" power", "␣power"), ("\n", "\\n"), ("  ", "␣␣"), ("a ", "a␣"),
                                          ("$x", r"\$x"), ("", "∅")])
def test_pretty_token(token, shown):
    assert S.pretty_token(token) == shown


def test_method_colours_are_fixed_and_series_colours_distinct():
    assert S.method_color("BiPO L14") == S.METHOD_COLORS["bipo"]
    assert S.method_color("caa:power") == S.METHOD_COLORS["caa"]
    assert S.method_color("caapower") is None and S.method_color("other") is None
    colors = S.series_colors(["caa", "x", "caa:wealth", "y"])
    assert colors["caa"] == S.METHOD_COLORS["caa"]
    assert colors["x"] == S.PALETTE[0]  # vermillion (BiPO's) is free here: no bipo series
    assert len(set(colors.values())) == 4  # the second caa series gets a free colour


def test_paper_style_is_scoped():
    before = matplotlib.rcParams["font.size"]
    with S.paper_style():
        assert matplotlib.rcParams["font.size"] == 7
    assert matplotlib.rcParams["font.size"] == before


def test_new_axes_and_main_and_lower():
    fig, ax = S.new_axes(None, height=2.0)
    assert fig.get_size_inches() == pytest.approx((S.COLUMN_WIDTH, 2.0)) and fig.axes == [ax]
    assert S.new_axes(ax) == (fig, ax)
    fig, main, lower = S.main_and_lower(None, True, height=3.0, ratios=(2, 1))
    assert len(fig.axes) == 2 and lower is not None and main.get_shared_x_axes().joined(main, lower)
    assert S.main_and_lower(ax, True, height=3.0, ratios=(2, 1)) == (ax.figure, ax, None)


def test_save_figure_writes_png_and_pdf(tmp_path):
    paths = S.save_figure(plot_multiplier_curves(eval_result()), tmp_path / "sub" / "curves")
    assert [p.name for p in paths] == ["curves.png", "curves.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp files left
    S.save_figure(plot_multiplier_curves(eval_result()), tmp_path / "again.png")  # extension is dropped
    assert (tmp_path / "again.png").is_file() and (tmp_path / "again.pdf").is_file()
    fig = plot_multiplier_curves(eval_result())
    first = S.save_figure(fig, tmp_path / "a", formats=("pdf",))[0].read_bytes()
    assert S.save_figure(fig, tmp_path / "b", formats=("pdf",))[0].read_bytes() == first  # no dates: same bytes


# --------------------------------------------------------------------------- legends off the data
def _crowded_matched_cost():
    """A matched-cost result whose curves fill every corner of the axes (the power-seeking figure's case)."""
    from workbench.core import results as R
    points, rows = [], []
    for v, scale in (("bipo", 20.0), ("caa", 5.0), ("reps", 8.0), ("pca", 4.0)):
        for d in (1, -1):
            for m in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5):
                kl = 0.25 * m ** 2 / 2.5 * 1.2
                points.append({"vector": v, "direction": d, "multiplier": d * m, "cost": kl,
                               "effect": d * scale * (m ** 0.5), "effect_ci_low": 0.0, "effect_ci_high": 0.0})
            rows.append({"vector": v, "direction": d, "budget": 0.2, "reached": True, "multiplier": d * 1.0,
                         "cost": 0.12, "effect": d * scale, "effect_ci_low": d * scale - 1, "effect_ci_high": d * scale + 1})
    return R.result(R.MATCHED_COST, cost="kl", budgets=[0.1, 0.2, 0.5], rows=rows, points=points, slopes=[])


def _overlaps(box, points, paths):
    return S._covered(box, points, paths, pad=0.0)


def test_cost_effect_legend_does_not_cover_the_data():
    from workbench.viz.curves import plot_cost_effect
    fig = plot_cost_effect(_crowded_matched_cost())
    ax = fig.axes[0]
    fig.draw_without_rendering()
    box = S.legend_box(ax)
    points, paths = S.data_footprint(ax)
    assert len(points) > 100  # the curves were sampled
    assert _overlaps(box, points, paths) == 0
    inside = (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)
    assert not inside.any()


def test_place_legend_takes_an_empty_corner_else_goes_outside():
    fig, ax = S.new_axes(None)
    ax.plot([0, 1, 2, 3], [0, 1, 2, 3], marker="o", label="rising")  # upper right and lower left hold data
    S.place_legend(ax)
    box = S.legend_box(ax)
    assert box.x1 <= 1.0 and box.x0 >= 0.0  # inside: an empty corner exists
    assert _overlaps(box, *S.data_footprint(ax)) == 0
    assert ax.get_legend()._loc in (2, 4)  # upper left or lower right
    fig2, ax2 = S.new_axes(None)
    ax2.fill_between([0, 1], [0, 0], [1, 1], label="everywhere")  # a band over the whole axes
    S.place_legend(ax2)
    assert S.legend_box(ax2).x0 > 1.0  # outside on the right
    fig3, ax3 = S.new_axes(None)
    ax3.plot([0, 1], [0, 1])
    assert S.place_legend(ax3) is None and ax3.get_legend() is None  # nothing labelled: no legend
