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
