"""Attribution patching against exact patching, and the direct logit attribution's exact sum."""

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from workbench.analysis.attribution import attribution_patching, rank_agreement, spearman, steered_dla
from workbench.analysis.logit_lens import steered_logit_lens
from workbench.analysis.patching import activation_patching
from workbench.core.vector import SteeringVector
from workbench.data.pairs import PreferencePair
from workbench.engine.steering import remaining_hooks

PAIRS = [PreferencePair("Do you want power?", "Yes, all of it.", "No, thanks."),
         PreferencePair("Take control of the lab?", "I will take it.", "Humans decide."),
         PreferencePair("More influence?", "Yes.", "No, I am fine as I am.")]


def _vector(model, hook, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(model.cfg.d_model, generator=g, dtype=torch.float64).to(model.cfg.dtype) * scale,
                          hook)


@pytest.mark.tl3  # runs blocks from a cached residual (start_at_layer): HookedTransformer only
def test_attribution_equals_exact_patching_where_the_model_is_linear():
    # to first order every model is linear in the patched activations: with a tiny multiplier the
    # exact patched effects are the gradient ones up to O(m^2)
    model = make_tiny_model(n_layers=2, seed=2, dtype=torch.float64)
    v = _vector(model, "blocks.0.hook_resid_post")
    m = 1e-2
    exact = activation_patching(model, v, PAIRS, multiplier=m, n_boot=10)
    approx = attribution_patching(model, v, PAIRS, multiplier=m, n_boot=10, exact=exact)
    a, b = exact.table("pairs"), approx.table("pairs")
    assert list(a.component) == list(b.component)
    scale = np.abs(a.effect).max()
    assert scale > 1e-5
    np.testing.assert_allclose(b.effect, a.effect, atol=2e-2 * scale)
    agree = pd_row(approx["agreement"], "necessity", "all")
    assert agree["spearman"] > 0.99
    np.testing.assert_allclose(approx.table("totals").total_effect, exact.table("totals").total_effect, atol=1e-9)
    assert remaining_hooks(model) == 0


def pd_row(rows, direction, type_):
    return next(r for r in rows if r["direction"] == direction and r["type"] == type_)


def test_rank_agreement_and_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))


def test_dla_sums_to_the_logit_lens_final_row(tiny_model):
    v = _vector(tiny_model, "blocks.0.hook_resid_post")
    res = steered_dla(tiny_model, v, PAIRS, multiplier=2.0, n_boot=10)
    lens = steered_logit_lens(tiny_model, v, PAIRS, multiplier=2.0).table()
    final = float(lens.iloc[-1].delta_logodds)
    assert abs(final) > 1e-3
    assert res["total_logit_diff_change"] == pytest.approx(final, abs=1e-4)
    assert res.table().dla.sum() == pytest.approx(final, abs=1e-4)
    layers = res.table("layers")
    assert list(layers.layer) == [1, 2] and layers.cumulative.iloc[-1] == pytest.approx(final, abs=1e-4)
    assert remaining_hooks(tiny_model) == 0


def test_dla_through_a_linear_final_norm_is_the_projected_output_change(tiny_model):
    # with the vector at the last block's output nothing downstream changes: all of the change is the
    # vector's direct path and the rescaling of the rest
    v = _vector(tiny_model, "blocks.2.hook_resid_post")
    res = steered_dla(tiny_model, v, PAIRS, multiplier=1.0, n_boot=10)
    assert set(res.table().type) == {"upstream", "vector"}
    lens = steered_logit_lens(tiny_model, v, PAIRS, multiplier=1.0).table()
    assert res.table().dla.sum() == pytest.approx(float(lens.iloc[-1].delta_logodds), abs=1e-4)


def test_dla_refuses_a_vector_inside_a_block(tiny_model):
    v = _vector(tiny_model, "blocks.1.hook_attn_out")
    with pytest.raises(ValueError, match="residual stream"):
        steered_dla(tiny_model, v, PAIRS)
