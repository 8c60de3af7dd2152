"""Matched-cost search and its outputs on the tiny random model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from workbench.data.pairs import PreferencePair
from workbench.analysis.equal_cost import check_budgets, cost_effect_table, matched_cost
from workbench.engine.steering import steer
from workbench.core.vector import SteeringVector

TEXTS = ["The river ran past the old mill.", "A quiet morning in the town square, with bread."]
PAIRS = [PreferencePair(f"Question {i}?", f"Yes {i}", f"No {i}") for i in range(6)]


def _vec(scale: float = 1.0) -> SteeringVector:
    return SteeringVector(scale * torch.randn(32, generator=torch.Generator().manual_seed(5)),
                          "blocks.1.hook_resid_post", layer=1, method="test")


def _plain_kl(model, vec, m: float) -> float:
    """Mean KL(unsteered || steered) per predicted token, by full forwards under ``steer``."""
    num = den = 0.0
    for t in TEXTS:
        tokens = torch.tensor([model.tokenizer(t, add_special_tokens=False)["input_ids"]])
        ref = model(tokens)[0, :-1].log_softmax(-1)
        with steer(model, vec, m):
            lp = model(tokens)[0, :-1].log_softmax(-1)
        num += float((ref.exp() * (ref - lp)).sum(-1).clamp_min(0).sum())
        den += tokens.shape[1] - 1
    return num / den


def test_search_matches_budget_in_both_directions(tiny_model):
    vec = _vec()
    res = matched_cost(tiny_model, {"v": vec}, PAIRS, TEXTS, budgets=[0.05, 0.2], rel_tol=0.02, n_boot=50,
                       start=0.1, max_multiplier=50)
    rows = res["rows"]
    assert {(r["direction"], r["budget"]) for r in rows} == {(1, 0.05), (1, 0.2), (-1, 0.05), (-1, 0.2)}
    grid = np.linspace(-30, 30, 241)
    dense = np.array([_plain_kl(tiny_model, vec, m) for m in grid])
    for r in rows:
        assert r["reached"] and np.sign(r["multiplier"]) == r["direction"]
        kl = _plain_kl(tiny_model, vec, r["multiplier"])
        assert abs(kl - r["budget"]) <= 0.02 * r["budget"] + 1e-4
        assert abs(r["cost"] - kl) < 1e-4
        # the dense grid (plain path) crosses the budget between its two points around the found multiplier
        i = np.searchsorted(grid, r["multiplier"])
        lo, hi = sorted((dense[i - 1], dense[i]))
        assert lo <= r["budget"] * 1.02 + 1e-4 and hi >= r["budget"] * 0.98 - 1e-4
        assert r["effect"] is not None and r["effect_ci_low"] <= r["effect"] <= r["effect_ci_high"]
        assert r["best_effect"] * r["direction"] >= r["effect"] * r["direction"] - 1e-9
    assert len(tiny_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks) == 0


def test_zero_vector_zero_effect_and_unreached(tiny_model):
    res = matched_cost(tiny_model, {"zero": _vec(0.0)}, PAIRS, TEXTS, budgets=[0.05, 0.1], n_boot=20,
                       max_multiplier=4)
    for r in res["rows"]:
        assert not r["reached"] and r["multiplier"] is None
        assert r["max_cost_seen"] == 0.0
        assert r["best_effect"] == 0.0
    assert all(p["effect"] == 0.0 for p in res["points"])


@pytest.mark.parametrize("all_points", [True, False])
def test_unreachable_budget_reports_largest_cost(tiny_model, all_points):
    res = matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, budgets=[1e6], n_boot=20, max_multiplier=2,
                       all_points=all_points)
    seen = [p["cost"] for p in res["points"] if p["multiplier"] != 0]
    for r in res["rows"]:
        assert r["reached"] is False and r["effect"] is None
        assert r["max_cost_seen"] > 0
        side = [p["cost"] for p in res["points"] if p["direction"] == r["direction"]]
        if all_points:  # every visited multiplier is a point: the largest cost is one of them
            assert math.isclose(r["max_cost_seen"], max(side))
        else:  # only the fixed grid's points: the search went further than the grid
            assert r["max_cost_seen"] >= max(side)
    assert max(seen) > 0


def test_equal_norm_recorded(tiny_model):
    res = matched_cost(tiny_model, {"a": _vec(1.0), "b": _vec(3.0)}, PAIRS, TEXTS, budgets=[0.1], n_boot=10,
                       equal_norm="a")
    assert res.kind == "matched_cost" and res.table().shape[0] == 4 and res.tables == ["rows", "points", "slopes"]
    assert res["equal_norm"]["mode"] == "vector:a"
    assert math.isclose(res["norms"]["a"], res["norms"]["b"], rel_tol=1e-5)
    # same direction, same norm: the same found multipliers
    ra = {r["direction"]: r["multiplier"] for r in res["rows"] if r["vector"] == "a"}
    rb = {r["direction"]: r["multiplier"] for r in res["rows"] if r["vector"] == "b"}
    assert ra == pytest.approx(rb, rel=1e-4)


@pytest.mark.parametrize("kw, msg", [({"budgets": [-0.1]}, "positive"), ({"cost": "entropy"}, "cost="),
                                     ({"equal_norm": "nope"}, "equal_norm"), ({"growth": 1.0}, "growth")])
def test_bad_arguments(tiny_model, kw, msg):
    with pytest.raises(ValueError, match=msg):
        matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, **kw)


def test_config_and_keyword_options_agree(tiny_model):
    from workbench.analysis.equal_cost import MatchedCostConfig

    kw = dict(budgets=[0.1], n_boot=10, max_multiplier=4)
    by_keywords = matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, **kw)
    by_config = matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, MatchedCostConfig(**kw))
    assert by_config == by_keywords
    assert MatchedCostConfig(cost="perplexity").budgets is None  # the cost's defaults, resolved at the call
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['budget'\]; "):
        matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, budget=[0.1])


def test_check_budgets_defaults():
    assert check_budgets(None, "kl") == [0.05, 0.1, 0.2, 0.5]
    assert check_budgets(None, "perplexity") == [0.05, 0.1, 0.25]


def test_figure_and_table_from_saved_result(tiny_model, tmp_path):
    from workbench.core.io import atomic_write_json
    from workbench.viz.figures import figures_for
    from workbench.viz.plots import plot_cost_effect
    from workbench.viz.report import report

    res = matched_cost(tiny_model, {"v": _vec(), "zero": _vec(0.0)}, PAIRS, TEXTS, budgets=[0.05], n_boot=10,
                       max_multiplier=8)
    atomic_write_json(res, tmp_path / "cmp.json")
    saved = json.loads((tmp_path / "cmp.json").read_text())
    fig = plot_cost_effect(saved)
    ax = fig.axes[0]
    labels = [l.get_label() for l in ax.get_lines()]
    assert any(lab.startswith("v") for lab in labels) and any("budget" in lab for lab in labels)
    assert set(figures_for(saved)) == {"cost_effect"}
    md = report(tmp_path)
    assert "cmp.json" in md and "unreached" in md and "m > 0" in md
    assert len(cost_effect_table(saved)) == 4


@pytest.mark.parametrize("extra, msg", [(["--budgets", "-1"], "--budgets"), (["--cost", "entropy"], "--cost"),
                                        (["--budgets", "abc"], "not a number")])
def test_cli_bad_arguments(extra, msg, capsys):
    from workbench.cli.main import main

    rc = main(["compare", "--vector", "nowhere", "--behavior", "power-seeking", "--out", "x.json", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def _mc_rows(effects):
    """Hand-written matched-cost rows: effects[(vector, direction)] = effect or None (unreached)."""
    rows = []
    for (vec, d), eff in effects.items():
        rows.append(dict(vector=vec, budget=0.1, direction=d, effect=eff,
                         effect_ci_low=None if eff is None else eff - 1, effect_ci_high=None if eff is None else eff + 1,
                         max_cost_seen=0.04, monotone=vec != "caa", multiplier=None if eff is None else 2.0 * d,
                         cost=None if eff is None else 0.1, best_effect=eff, best_multiplier=None if eff is None else 2.0 * d,
                         best_ci_low=None if eff is None else eff - 1, best_ci_high=None if eff is None else eff + 1))
    return {"kind": "matched_cost", "rows": rows, "points": [], "slopes": [], "cost": "kl", "budgets": [0.1]}


def test_headline_table_side_by_side():
    from workbench.analysis.equal_cost import headline_table

    a = _mc_rows({("bipo", 1): 3.0, ("bipo", -1): -2.5, ("caa", 1): 1.0, ("caa", -1): None})
    b = _mc_rows({("bipo", 1): 0.5, ("bipo", -1): -0.25, ("caa", 1): 0.0, ("caa", -1): -0.125})
    df = headline_table({"power": a, "wealth": b})
    assert list(df["result"]) == ["power", "power", "wealth", "wealth"]
    assert list(df["direction"]) == ["m > 0", "m < 0"] * 2
    assert df.loc[0, "bipo"] == "+3.00 [+2.00, +4.00]"
    assert df.loc[0, "caa"] == "+1.00 [+0.00, +2.00] *"  # caa's rows are marked not monotone
    assert df.loc[1, "caa"] == "unreached (max 0.04) *"
    assert headline_table({"power": a}, budgets=[0.5]).empty  # a budget no result has


def test_report_kinds_and_headline(tmp_path, capsys):
    from workbench.cli.main import main
    from workbench.viz.report import report

    for name, eff in (("power", 3.0), ("wealth", 1.5)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_mc_rows({("bipo", 1): eff, ("caa", 1): 1.0})))
    (tmp_path / "cosine.json").write_text(json.dumps({"kind": "cosine", "labels": ["a"], "matrix": [[1.0]]}))
    md = report(tmp_path, kinds=["matched_cost"])
    assert md.startswith("### matched cost, every result") and "cosine.json" not in md
    assert "| power | 0.100 | m > 0 | +3.00 [+2.00, +4.00] |" in md and "### wealth.json" in md
    assert "### cosine.json" in report(tmp_path)
    assert main(["report", "--results", str(tmp_path), "--kind", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "--kind: unknown ['nonsense']" in err and len(err.strip().splitlines()) == 1


def test_search_interpolates_and_reuses_known_costs():
    from workbench.analysis.equal_cost import search_budget

    calls = []

    def probe(m):  # a cost that grows like |m|**2.5, as KL does past the quadratic regime
        calls.append(m)
        return 0.01 * abs(m) ** 2.5

    first = search_budget(probe, 0.1, -1, rel_tol=0.01)
    assert first["reached"] and first["multiplier"] < 0
    assert abs(probe(first["multiplier"]) - 0.1) <= 0.001 and first["steps"] <= 9
    known = {abs(m): 0.01 * abs(m) ** 2.5 for m in calls}
    calls.clear()
    second = search_budget(probe, 0.5, -1, rel_tol=0.01, known=known)
    assert abs(probe(second["multiplier"]) - 0.5) <= 0.005
    assert second["steps"] < first["steps"] and all(abs(m) > 2.5 for m in calls[:-1])  # no re-bracketing from 0.25
    again = search_budget(probe, 0.1, -1, rel_tol=0.01, known=known)
    assert again["steps"] == 0 and again["multiplier"] == first["multiplier"]
    capped = search_budget(probe, 1e6, 1, max_multiplier=8.0, known={4.0: 0.32})
    assert not capped["reached"] and capped["max_cost_seen"] == pytest.approx(0.01 * 8 ** 2.5)


def test_bad_pairs_are_one_clear_error(tiny_model):
    with pytest.raises(TypeError, match=r"^pairs\[0\] has no string field 'question'"):
        matched_cost(tiny_model, {"v": _vec()}, [("q", "a", "b")], TEXTS)
    with pytest.raises(ValueError, match=r"^ab_pairs is empty"):
        matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, ab_pairs=[])


def test_search_steps_from_the_slope_point_by_the_power_law():
    """From one known small point the first probe is where cost ~ m**2 reaches the budget, then the power law
    through the last two points: a few probes for costs quadratic near 0 and steeper or flatter further out."""
    from workbench.analysis.equal_cost import search_budget

    laws = (lambda m: 0.02 * m ** 2 + 0.003 * m ** 4, lambda m: 0.004 * m ** 2.4, lambda m: 0.05 * m ** 2 / (1 + 0.1 * m))
    for law in laws:
        cost = lambda m: law(abs(m))  # noqa: E731
        for budget in (0.05, 0.1, 0.2, 0.5):
            cold = search_budget(cost, budget, 1)
            warm = search_budget(cost, budget, -1, known={0.05: cost(0.05)})
            for res in (cold, warm):
                assert res["reached"] and res["converged"] and abs(cost(res["multiplier"]) - budget) <= 0.05 * budget
            assert warm["multiplier"] < 0 and warm["steps"] <= 3 and cold["steps"] <= 4, (budget, cold, warm)


def test_no_effect_grid_measures_only_the_found_and_slope_points(tiny_model):
    """``effect_grid=()``: the same searches and found effects as the default, the points only m = 0, the slope
    points and the found multipliers, and fewer cost probes and effect conditions (the grid's)."""
    kw = dict(budgets=[0.05, 0.1], n_boot=20, max_multiplier=8)
    full = matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, **kw)
    bare = matched_cost(tiny_model, {"v": _vec()}, PAIRS, TEXTS, effect_grid=(), **kw)
    cols = ["direction", "budget", "multiplier", "cost", "effect", "effect_ci_low", "effect_ci_high"]
    rows = [{k: r[k] for k in cols} for r in bare["rows"]]
    assert rows == [{k: r[k] for k in cols} for r in full["rows"]]
    found = {r["multiplier"] for r in rows if r["multiplier"] is not None}
    assert found, "the budgets are reached on the tiny model"
    want = {0.0, 0.05, -0.05} | found
    assert {p["multiplier"] for p in bare["points"]} == want
    assert {p["multiplier"] for p in full["points"]} > want  # the default grid adds its points
    assert bare["search"]["effect_grid"] == []
    assert bare["work"]["cost_probes"] < full["work"]["cost_probes"]
    assert bare["work"]["effect_conditions"] < full["work"]["effect_conditions"]
