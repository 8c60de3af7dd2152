"""The prompting figure: drawn from a saved result alone, one series per method and direction, legend off the axes."""

from __future__ import annotations

import pytest

from workbench.core.results import ResultFormatError, result
from workbench.viz.plots import plot
from workbench.viz.prompting import plot_prompting

ROWS = [{"method": "instruction", "direction": d, "k": 0, "cost": 0.1, "effect": 2.0 * d, "ci_low": 1.5 * d - 0.5,
         "ci_high": 2.5 * d + 0.5, "n": 10} for d in (1, -1)]
ROWS += [{"method": "kshot", "direction": d, "k": k, "cost": 0.05 * k, "effect": d * k, "ci_low": d * k - 1,
          "ci_high": d * k + 1, "n": 10} for d in (1, -1) for k in (1, 2, 4)]
ROWS += [{"method": "bipo", "direction": 1, "k": 0, "budget": b, "multiplier": b * 10, "cost": b, "effect": 30 * b,
          "ci_low": 25 * b, "ci_high": 35 * b, "n": 10} for b in (0.1, 0.5)]


def test_plot_prompting_draws_every_method_with_the_legend_outside():
    res = result("prompting", rows=ROWS, instructions={"elicit": "a", "suppress": "b"}, behavior="power-seeking")
    fig = plot(res)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["instruction (elicit)", "instruction (suppress)", "k-shot (elicit)", "k-shot (suppress)",
                      "bipo (elicit)"]
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent()
    assert box.x0 >= ax.get_window_extent().x1  # right of the axes: it covers no data
    assert len([t for t in ax.texts if t.get_text() in ("1", "2", "4")]) == 6  # each k-shot point says its k


def test_plot_prompting_refuses_another_kind():
    with pytest.raises(ResultFormatError, match="plot_prompting"):
        plot_prompting(result("matched_cost", rows=[], points=[], slopes=[], cost="kl", budgets=[0.1]))
