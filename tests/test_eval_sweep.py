"""Prefix-shared multiplier sweeps equal full forward passes under ``steer``."""

from __future__ import annotations

import pytest
import torch

from workbench.eval_sweep import (ResidualCache, label_vectors, plan_sweep, suffix_model, sweep_final_resid)
from workbench.scoring import tokenize_completions
from workbench.steering import remaining_hooks, steer
from workbench.vector import SteeringVector

MULTS = [-2.0, -0.5, 0.0, 1.0, 3.0]


def _batch(model):
    prompts = ["<|im_start|>user\nHello there?<|im_end|>\n<|im_start|>assistant\n", "Hi", "A longer prompt, yes."]
    return tokenize_completions(model, prompts, ["Sure thing.", "No", "Maybe later, friend."])


def _vec(hook, seed=1, d=32):
    return SteeringVector(torch.randn(d, generator=torch.Generator().manual_seed(seed)), hook)


CASES = {
    "resid_post": [_vec("blocks.1.hook_resid_post")],
    "resid_pre": [_vec("blocks.2.hook_resid_pre")],
    "resid_mid": [_vec("blocks.1.hook_resid_mid")],
    "attn_out": [_vec("blocks.0.hook_attn_out")],
    "mlp_out": [_vec("blocks.2.hook_mlp_out")],
    "last_layer_post": [_vec("blocks.2.hook_resid_post")],
    "first_pre": [_vec("blocks.0.hook_resid_pre")],
    "composition": [_vec("blocks.0.hook_resid_post", 2), _vec("blocks.1.hook_mlp_out", 3),
                    _vec("blocks.1.hook_resid_pre", 4)],
}


def test_plan_sweep_start_layers(tiny_model):
    assert plan_sweep(tiny_model, CASES["resid_post"]).start_layer == 2
    assert plan_sweep(tiny_model, CASES["resid_post"]).hooked == ()
    assert plan_sweep(tiny_model, CASES["resid_pre"]).start_layer == 2
    p = plan_sweep(tiny_model, CASES["attn_out"])
    assert p.start_layer == 0 and p.direct is None and len(p.hooked) == 1
    p = plan_sweep(tiny_model, CASES["last_layer_post"])
    assert p.start_layer == tiny_model.cfg.n_layers
    p = plan_sweep(tiny_model, CASES["composition"])  # resid_post 0 and resid_pre 1 both enter block 1
    assert p.start_layer == 1 and len(p.hooked) == 1
    torch.testing.assert_close(p.direct, CASES["composition"][0].vector + CASES["composition"][2].vector)


@pytest.mark.parametrize("case", list(CASES))
def test_shared_prefix_equals_full_forward_under_steer(tiny_model, case):
    vecs = CASES[case]
    batch = _batch(tiny_model)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    fast = list(sweep_final_resid(tiny_model, vecs, batch.tokens, batch.attention_mask, MULTS))
    for m, _, resid in fast:
        with steer(tiny_model, vecs, [m] * len(vecs)):
            ref = tiny_model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=tiny_model.cfg.n_layers)
        real = batch.attention_mask.bool()
        torch.testing.assert_close(resid[real], ref[real], atol=1e-5, rtol=1e-5)
    assert remaining_hooks(tiny_model) == 0
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    # the steering has an effect: different multipliers give different residuals
    assert not torch.allclose(fast[0][2], fast[-1][2])


def test_residual_cache_reuses_lower_layers(tiny_model):
    batch = _batch(tiny_model)
    cache = ResidualCache(tiny_model, batch.tokens, batch.attention_mask)
    r1, r3 = cache.at(1), cache.at(3)
    direct = tiny_model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=3)
    torch.testing.assert_close(r3, direct, atol=1e-5, rtol=1e-5)
    assert cache.at(1) is r1


def test_bf16_suffix_is_a_copy_and_close(tiny_model):
    low = suffix_model(tiny_model, "bf16")
    assert low is not tiny_model and low.cfg.dtype == torch.bfloat16
    assert tiny_model.cfg.dtype == torch.float32 and tiny_model.W_U.dtype == torch.float32
    assert suffix_model(tiny_model, "fp32") is tiny_model
    batch = _batch(tiny_model)
    vecs = CASES["resid_post"]
    fp = list(sweep_final_resid(tiny_model, vecs, batch.tokens, batch.attention_mask, [1.0]))[0][2]
    bf = list(sweep_final_resid(tiny_model, vecs, batch.tokens, batch.attention_mask, [1.0], suffix=low))[0][2]
    assert bf.dtype == torch.bfloat16
    rel = (bf.float() - fp).norm() / fp.norm()
    assert rel < 0.05
    with pytest.raises(ValueError, match="precision"):
        suffix_model(tiny_model, "fp16")


def test_label_vectors():
    a, b = _vec("blocks.0.hook_resid_post"), _vec("blocks.1.hook_resid_post")
    assert list(label_vectors(a)) == ["unknown"]
    assert list(label_vectors({"x": a, "y": [a, b]})) == ["x", "y"]
    with pytest.raises(TypeError, match="SteeringVector"):
        label_vectors({"x": [a, "nope"]})
    with pytest.raises(ValueError, match="no vectors"):
        label_vectors({})
