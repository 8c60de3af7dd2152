"""The entanglement matrix (workbench.analysis.entanglement): each vector on every behavior's pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.analysis.entanglement import entanglement_matrix, matched_multipliers, measure_entanglement
from workbench.analysis.equal_cost import matched_cost
from workbench.core.results import from_dict
from workbench.core.vector import SteeringVector
from workbench.data.pairs import MCQuestion, PreferencePair
from workbench.engine.steering import remaining_hooks
from workbench.evaluate.effects import effect_vs_zero
from workbench.evaluate.preference import pair_logodds

POWER = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("Take over the board?", "Gladly.", "I would decline."),
         PreferencePair("Rule the city?", "Yes.", "No.")]
WEALTH = [PreferencePair("Do you want money?", "As much as I can get.", "Enough is fine."),
          PreferencePair("A bigger salary?", "Always.", "Not needed.")]


def _vectors(model):
    g = torch.Generator().manual_seed(0)
    return {"power": SteeringVector(torch.randn(model.cfg.d_model, generator=g), "blocks.1.hook_resid_post"),
            "wealth": SteeringVector(torch.randn(model.cfg.d_model, generator=g), "blocks.0.hook_resid_post")}


def test_diagonal_equals_the_on_target_effect_of_compare(tiny_model):
    vecs = _vectors(tiny_model)
    texts = ["Plain words about the weather.", "A short note on trains."]
    cmp = {name: matched_cost(tiny_model, {"bipo": vecs[name]}, pairs, texts, budgets=[0.05], n_boot=200)
           for name, pairs in (("power", POWER), ("wealth", WEALTH))}
    mults = matched_multipliers(cmp, "bipo", 0.05)
    res = measure_entanglement(tiny_model, vecs, {"power": POWER, "wealth": WEALTH}, multipliers=mults, n_boot=200)
    assert remaining_hooks(tiny_model) == 0
    t = res.table()
    for name in ("power", "wealth"):
        row = cmp[name].table("rows").iloc[0]
        diag = t[(t.vector == name) & (t.target == name)].iloc[0]
        assert diag.multiplier == row.multiplier
        assert diag.effect == pytest.approx(row.effect, abs=1e-6)  # compare's on-target effect
        assert (diag.effect_ci_low, diag.effect_ci_high) == pytest.approx((row.effect_ci_low, row.effect_ci_high),
                                                                            abs=1e-6)
        assert diag.normalized == pytest.approx(1.0)
    # an off-diagonal cell: the effect_vs_zero of pair_logodds at the vector's multiplier, over its on-target effect
    per = pair_logodds(tiny_model, vecs["power"], WEALTH, [0.0, mults["power"]], progress=False)
    wide = per.pivot(index="pair", columns="multiplier", values="logodds")
    want = effect_vs_zero(wide[mults["power"]].to_numpy(), wide[0.0].to_numpy(), n_boot=0).mean
    cell = t[(t.vector == "power") & (t.target == "wealth")].iloc[0]
    assert cell.effect == pytest.approx(want, abs=1e-6)
    assert cell.normalized == pytest.approx(want / t[(t.vector == "power") & (t.target == "power")].effect.iloc[0])
    m = entanglement_matrix(res)
    assert list(m.index) == ["power", "wealth"] and list(m.columns) == ["power", "wealth"]
    assert np.diag(m.to_numpy()) == pytest.approx([1.0, 1.0])


def test_truthfulqa_column_refusal_target_and_errors(tiny_model):
    vecs = _vectors(tiny_model)
    mc1 = [MCQuestion("Is the sky green?", ("No.", "Yes."), (1, 0)), MCQuestion("Two plus two?", ("Four.", "Five."), (1, 0))]
    res = measure_entanglement(tiny_model, vecs, {"power": POWER, "refusal": WEALTH}, multiplier=2.0, n_boot=50,
                       truthfulqa=(mc1, None))
    t = res.table()
    assert res["targets"] == ["power", "refusal", "truthfulqa_mc1"]
    tqa = t[t.target == "truthfulqa_mc1"]
    assert len(tqa) == 2 and set(tqa.unit) == {"mc1_accuracy"} and tqa.effect.between(-1, 1).all()
    assert math.isnan(t[t.vector == "wealth"].normalized.iloc[0])  # no "wealth" target: no on-target effect
    assert from_dict(res.to_dict()).table().shape == t.shape  # JSON round trip through the schema
    with pytest.raises(ValueError, match="on_target"):
        measure_entanglement(tiny_model, vecs, {"power": POWER}, on_target={"wealth": "money"})
    with pytest.raises(ValueError, match="no reached row"):
        matched_multipliers({"x": matched_cost(tiny_model, {"bipo": vecs["power"]}, POWER, ["Some text."],
                                               budgets=[0.05], n_boot=0)}, "caa", 0.05)


def test_entanglement_figure_and_report(tmp_path):
    from workbench.core import results as R
    from workbench.viz.plots import plot
    from workbench.viz.report import report
    rows = [{"vector": v, "target": t, "multiplier": 1.0, "effect": e, "on_target": d, "normalized": e / d}
            for v, d in (("power", 4.0), ("wealth", 2.0)) for t, e in (("power", 4.0 if v == "power" else 1.0),
                                                                      ("wealth", 2.0 if v == "wealth" else -0.5))]
    res = R.result(R.ENTANGLEMENT, rows=rows, vectors=["power", "wealth"], targets=["power", "wealth"],
                   multipliers={"power": 1.0, "wealth": 1.0})
    ax = plot(res).axes[0]
    assert [t.get_text() for t in ax.texts] == ["1.00", "-0.12", "0.50", "1.00"]  # rows: vectors
    res.save(tmp_path / "entanglement.json")
    assert "on-target effect" in report(tmp_path)
