"""Exact activation patching of a steering effect: agrees with the evaluation, known cases by construction."""

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from workbench.analysis.patching import PatchingConfig, activation_patching, downstream_components
from workbench.core.vector import SteeringVector
from workbench.data.pairs import PreferencePair
from workbench.engine.steering import remaining_hooks
from workbench.evaluate.preference import pair_logodds

PAIRS = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("Take control of the lab?", "I will take it.", "Humans decide."),
         PreferencePair("More influence?", "Yes.", "No, I am fine as I am.")]


def _vector(model, hook, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(model.cfg.d_model, generator=g) * scale, hook)


def _rows(res, direction, comp):
    t = res.table()
    return t[(t.direction == direction) & (t.component == comp)].iloc[0]


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_unpatched_rows_equal_the_evaluation_and_no_hooks_remain(tiny_model):
    v = _vector(tiny_model, "blocks.0.hook_resid_post")
    res = activation_patching(tiny_model, v, PAIRS, multiplier=2.0, n_boot=50, batch_size=2)
    ref = pair_logodds(tiny_model, {"v": v}, PAIRS, [0.0, 2.0], progress=False)
    totals = res.table("totals")
    want_u = ref[ref.multiplier == 0].logodds.to_numpy()
    want_s = ref[ref.multiplier == 2.0].logodds.to_numpy()
    np.testing.assert_allclose(totals.logodds_unsteered, want_u, atol=1e-4)
    np.testing.assert_allclose(totals.logodds_steered, want_s, atol=1e-4)
    assert res["total_effect"] == pytest.approx(float(np.mean(want_s - want_u)), abs=1e-4)
    comps = downstream_components(tiny_model, 1)
    assert len(res.table()) == 2 * len(comps) and set(res.table().type) == {"head", "mlp", "block", "direct"}
    assert remaining_hooks(tiny_model) == 0


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_no_vector_gives_zero_effect_everywhere(tiny_model):
    v = SteeringVector(torch.zeros(tiny_model.cfg.d_model), "blocks.1.hook_resid_pre")
    res = activation_patching(tiny_model, v, PAIRS, multiplier=1.0, n_boot=20)
    assert np.abs(res.table("pairs").effect.to_numpy()).max() < 1e-5
    assert abs(res["total_effect"]) < 1e-5
    assert remaining_hooks(tiny_model) == 0


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_one_layer_with_attention_zeroed_carries_everything_through_the_mlp():
    model = make_tiny_model(n_layers=1, seed=3)
    with torch.no_grad():
        model.blocks[0].attn.W_O.zero_()
    v = _vector(model, "blocks.0.hook_resid_pre", scale=2.0)
    res = activation_patching(model, v, PAIRS, multiplier=1.0, n_boot=20)
    pairs = res.table("pairs")
    total = res.table("totals").total_effect.to_numpy()
    assert np.abs(total).min() > 1e-3  # the vector does something
    eff = lambda d, c: pairs[(pairs.direction == d) & (pairs.component == c)].effect.to_numpy()  # noqa: E731
    for h in range(model.cfg.n_heads):  # heads write nothing: they carry nothing
        assert np.abs(eff("necessity", f"L0H{h}")).max() < 1e-5
        assert np.abs(eff("sufficiency", f"L0H{h}")).max() < 1e-5
    np.testing.assert_allclose(eff("necessity", "L0 block"), eff("necessity", "L0 mlp"), atol=1e-5)
    # final residual = x + v + mlp(x + v): the MLP and the direct path split the effect exactly
    np.testing.assert_allclose(eff("necessity", "direct") + eff("sufficiency", "L0 mlp"), total, atol=1e-4)
    np.testing.assert_allclose(eff("sufficiency", "direct") + eff("necessity", "L0 mlp"), total, atol=1e-4)
    row = _rows(res, "necessity", "L0 mlp")
    assert row.share == pytest.approx(eff("necessity", "L0 mlp").mean() / total.mean(), rel=1e-6)
    assert row.share_ci_low <= row.share <= row.share_ci_high
    assert remaining_hooks(model) == 0


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_bad_options_are_one_line_errors(tiny_model):
    v = _vector(tiny_model, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="components="):
        PatchingConfig(components=("neuron",))
    with pytest.raises(ValueError, match="multiplier="):
        activation_patching(tiny_model, v, PAIRS, multiplier=0.0)
    with pytest.raises(TypeError, match="vector is a"):
        activation_patching(tiny_model, torch.zeros(32), PAIRS)


@pytest.mark.tl4
def test_the_bridge_refuses_patching_in_one_line_and_runs_the_full_pass_analyses(tiny_model):
    """On a TransformerBridge, activation and attribution patching (blocks run from a cached residual) say so
    and name what runs there; the analyses of full forward passes run (their tests run on the bridge)."""
    from workbench.analysis.attribution import attribution_patching

    v = _vector(tiny_model, "blocks.0.hook_resid_post")
    for analysis in (activation_patching, attribution_patching):
        with pytest.raises(NotImplementedError, match="start_at_layer") as err:
            analysis(tiny_model, v, PAIRS, 1.0)
        assert "\n" not in str(err.value) and "steered_dla and attention_shifts run on the bridge" in str(err.value)
    assert remaining_hooks(tiny_model) == 0
