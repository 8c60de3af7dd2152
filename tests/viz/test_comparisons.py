"""Composition, transfer and LoRA transfer figures (workbench.viz.comparisons), from hand-written results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from viz_results import (
    composition_result,
    labelled,
    lora_result,
    no_pyplot_leaks,
    transfer_layers_result,
    transfer_model_v1,
)

from workbench.core import results as R
from workbench.viz import comparisons as X

assert no_pyplot_leaks  # autouse: no figure may be left in pyplot's list


def test_composition_conditions_bars():
    fig = X.plot_composition(composition_result())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["power", "wealth", "power+wealth"]
    assert [p.get_height() for p in ax.patches] == pytest.approx([1.0, 0.2, 1.1, 0.3, 0.9, 1.0])  # power's, wealth's
    assert ax.get_legend() is not None and ax.get_legend().get_title().get_text() == "multipliers: power 1, wealth 1"
    err = ax.containers[0].lines[2][0].get_segments()  # ± 1 s.e.m.
    assert [s[1, 1] - s[0, 1] for s in err] == pytest.approx([0.2, 0.2, 0.2])


def test_composition_bootstrap_intervals_and_per_behavior_rows():
    res = composition_result()
    conds = [{k: v for k, v in r.items() if k != "effect_sem"} | {"effect_ci_low": r["effect"] - 0.1,
                                                                   "effect_ci_high": r["effect"] + 0.3}
             for r in res["conditions"]]
    ax = X.plot_composition(R.result(R.COMPOSITION, multipliers=res["multipliers"], rows=res["rows"],
                                     conditions=conds)).axes[0]
    seg = ax.containers[0].lines[2][0].get_segments()[0]
    assert seg[0, 1] == pytest.approx(0.9) and seg[1, 1] == pytest.approx(1.3)  # the interval, not ± s.e.m.
    rows_only = R.result(R.COMPOSITION, multipliers=res["multipliers"], rows=res["rows"])
    ax = X.plot_composition(rows_only).axes[0]
    assert len(ax.patches) == 8 and [t.get_text() for t in ax.get_xticklabels()] == ["power", "wealth"]
    with pytest.raises(R.ResultFormatError, match="plot_composition draws a composition result, not a list"):
        X.plot_composition(res["rows"])


def test_transfer_across_layers():
    fig = X.plot_transfer(transfer_layers_result())
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer offset k: applied at L + k (made at L3)"
    lines = labelled(ax)
    assert [ln.get_label() for ln in lines] == ["m = -1", "m = +1"]
    np.testing.assert_allclose(lines[1].get_ydata(), [1 / 3, 1 / 2, 1, 1 / 2, 1 / 3])


def test_transfer_across_models_and_errors():
    ax = X.plot_transfer(transfer_model_v1()).axes[0]  # a version-1 file: kind "transfer" migrated
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m = -1", "m = +1", "m = +2"]
    assert [p.get_height() for p in ax.patches] == pytest.approx([-1, 1, 2, -0.7, 0.7, 1.4])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["smol", "smol-ft"]
    ax = X.plot_transfer(transfer_model_v1(), source="a", target="b").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    with pytest.raises(R.ResultFormatError, match="needs source_effect/target_effect"):
        X.plot_transfer(R.result(R.TRANSFER_MODEL, rows=[{"multiplier": 1.0, "effect": 1.0}]))
    with pytest.raises(R.ResultFormatError, match="plot_transfer draws a transfer_layers or transfer_model result"):
        X.plot_transfer(composition_result())
    with pytest.raises(R.ResultFormatError, match="not a DataFrame"):
        X.plot_transfer(pd.DataFrame(transfer_layers_result()["rows"]))


def test_lora_transfer_lines_and_empty_result():
    ax = X.plot_lora_transfer(lora_result()).axes[0]
    (line,) = labelled(ax)
    assert line.get_label() == "bipo, m = +1, base → finetune"
    np.testing.assert_allclose(line.get_xdata(), [0.0, 0.1, 0.2])
    np.testing.assert_allclose(line.get_ydata(), [1.0, 0.9, 0.8])
    empty = X.plot_lora_transfer(lora_result(rows=False)).axes[0]
    assert [t.get_text() for t in empty.texts] == ["no fine-tune reached its KL target"]


def test_draw_bars_needs_its_columns():
    with pytest.raises(R.ResultFormatError, match="x='nope'"):
        X.draw_bars(pd.DataFrame({"a": [1.0]}), x="nope", y="a")
