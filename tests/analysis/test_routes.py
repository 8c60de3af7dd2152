"""Route comparison of patching results, matched multipliers, and attention shifts of the top heads."""

import numpy as np
import pytest
import torch

from workbench.analysis.attention_shift import attention_shifts, top_heads
from workbench.analysis.attribution import attribution_patching
from workbench.analysis.patching import activation_patching
from workbench.analysis.routes import compare_routes, route_multipliers, route_patching
from workbench.core.results import MATCHED_COST, result
from workbench.core.vector import SteeringVector
from workbench.data.pairs import PreferencePair
from workbench.engine.steering import remaining_hooks

PAIRS = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("Take control of the lab?", "I will take it.", "Humans decide.")]


def _vector(model, seed, hook="blocks.0.hook_resid_post"):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(model.cfg.d_model, generator=g) * 3.0, hook)


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_a_route_equals_itself_and_a_scaled_copy(tiny_model):
    v = _vector(tiny_model, 1)
    res = route_patching(tiny_model, {"a": (v, 1.0), "b": (v, 1.0), "c": (_vector(tiny_model, 7), 1.0)}, PAIRS,
                         n_boot=10, components=("head", "mlp", "direct"))
    cos = res.table("cosines")
    ab = cos[(cos.label_a == "a") & (cos.label_b == "b")]
    assert np.allclose(ab.cosine, 1.0)
    ac = cos[(cos.label_a == "a") & (cos.label_b == "c") & (cos.components == "all")]
    assert (ac.cosine < 0.999).all()
    assert set(res.table().label) == {"a", "b", "c"} and res["multipliers"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert remaining_hooks(tiny_model) == 0


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_a_route_from_attribution_patching_sits_beside_an_exact_one(tiny_model):
    v = _vector(tiny_model, 1)
    approx = route_patching(tiny_model, {"a": (v, 1.0), "b": (v, 2.0)}, PAIRS, estimate="attribution", n_boot=10,
                            components=("head", "mlp", "direct"))
    assert set(approx.table().estimate) == {"attribution"}
    one = approx["results"]["a"]
    assert one["kind"] == "attribution_patching"
    # the same rows as attribution_patching itself gives
    direct = attribution_patching(tiny_model, v, PAIRS, 1.0, n_boot=10, components=("head", "mlp", "direct"))
    assert np.allclose(approx.table().query("label == 'a'").effect.to_numpy(), direct.table().effect.to_numpy())
    exact = activation_patching(tiny_model, v, PAIRS, 1.0, n_boot=10, components=("head", "mlp", "direct"))
    mixed = compare_routes({"exact": exact, "attribution": direct})
    assert dict(mixed.table().groupby("label").estimate.first()) == {"attribution": "attribution", "exact": "exact"}
    assert np.isfinite(mixed.table("cosines").cosine).all()
    with pytest.raises(ValueError, match="estimate='gradient'"):
        route_patching(tiny_model, {"a": (v, 1.0)}, PAIRS, estimate="gradient")
    assert remaining_hooks(tiny_model) == 0


def test_compare_routes_and_matched_multipliers_refuse_the_wrong_kind(tiny_model):
    with pytest.raises(ValueError, match="not 'activation_patching' or 'attribution_patching'"):
        compare_routes({"x": result(MATCHED_COST, rows=[], points=[], slopes=[], cost="kl", budgets=[])})
    mc = result(MATCHED_COST, rows=[{"vector": "bipo", "direction": 1, "budget": 0.1, "multiplier": 0.9},
                                    {"vector": "caa", "direction": 1, "budget": 0.1, "multiplier": 1.4},
                                    {"vector": "caa", "direction": -1, "budget": 0.1, "multiplier": -1.3}],
                points=[], slopes=[], cost="kl", budgets=[0.1])
    assert route_multipliers(mc, 0.1) == {"bipo": 0.9, "caa": 1.4}
    with pytest.raises(ValueError, match="budget=0.5"):
        route_multipliers(mc, 0.5)


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_attention_shift_of_the_top_heads(tiny_model):
    v = _vector(tiny_model, 1)
    patching = activation_patching(tiny_model, v, PAIRS, 2.0, n_boot=10, components=("head",))
    heads = top_heads(patching, 3)
    assert len(heads) == 3 and all(1 <= L < 3 for L, _ in heads)
    approx = attribution_patching(tiny_model, v, PAIRS, 2.0, n_boot=10, components=("head",))
    t = approx.table().query("type == 'head' and direction == 'necessity'").nlargest(2, "share")
    assert top_heads(approx, 2) == [(int(r.layer), int(r.head)) for r in t.itertuples()]  # the gradient ranking
    with pytest.raises(ValueError, match="not 'activation_patching' or 'attribution_patching'"):
        top_heads(result(MATCHED_COST, rows=[], points=[], slopes=[], cost="kl", budgets=[]))
    res = attention_shifts(tiny_model, v, PAIRS, 2.0, heads=patching, top_k=3, n_boot=10)
    rows = res.table()
    assert len(rows) == 3 * 3 and set(rows.region) == {"first", "prompt", "answer"}
    # attention sums to one over the three regions, in each run
    for run in ("attn_unsteered", "attn_steered"):
        assert np.allclose(rows.groupby("component")[run].sum(), 1.0, atol=1e-5)
    assert np.allclose(rows.groupby("component").delta.sum(), 0.0, atol=1e-5)
    assert (res.table("heads").tv_distance > 0).all()


def test_attention_shifts_of_given_heads(tiny_model):
    """Full forward passes with hooks: on either TransformerLens line (the TL4 job runs it on the bridge)."""
    v = _vector(tiny_model, 1)
    res = attention_shifts(tiny_model, v, PAIRS, 2.0, heads=[(1, 0), (2, 3), (2, 1)], n_boot=10)
    rows = res.table()
    assert len(rows) == 3 * 3 and set(rows.region) == {"first", "prompt", "answer"}
    for run in ("attn_unsteered", "attn_steered"):  # attention sums to one over the three regions
        assert np.allclose(rows.groupby("component")[run].sum(), 1.0, atol=1e-5)
    assert np.allclose(rows.groupby("component").delta.sum(), 0.0, atol=1e-5)
    assert (res.table("heads").tv_distance > 0).all() and list(res.table("heads")["rank"]) == [1, 2, 3]
    zero = attention_shifts(tiny_model, SteeringVector(torch.zeros(32), "blocks.0.hook_resid_post"), PAIRS, 1.0,
                           heads=[(1, 0)], n_boot=10)
    assert np.allclose(zero.table().delta, 0.0) and np.allclose(zero.table("heads").tv_distance, 0.0)
    with pytest.raises(ValueError, match="heads="):
        attention_shifts(tiny_model, v, PAIRS, heads=[(9, 0)])
    assert remaining_hooks(tiny_model) == 0
