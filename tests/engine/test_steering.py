import pytest
import torch

from workbench.core.prompts import format_chat
from workbench.engine.steering import GenerationConfig, generate, remaining_hooks, steer
from workbench.core.vector import SteeringVector, full_hook_name

HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def tokens(model, *texts):
    return model.to_tokens(list(texts), prepend_bos=False, padding_side="right")


@pytest.mark.parametrize("hook", HOOKS)
def test_exact_effect_at_hook_and_earlier_layers_untouched(tiny_model, hook):
    toks = tokens(tiny_model, "hello world", "abcdefghijk")
    v = SteeringVector(torch.randn(32), full_hook_name(1, hook))
    _, base = tiny_model.run_with_cache(toks)
    with steer(tiny_model, v, 2.5):
        _, cache = tiny_model.run_with_cache(toks)
    name = f"blocks.1.hook_{hook}"
    assert torch.equal(cache[name], base[name] + v.vector * 2.5)
    for earlier in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre") if hook != "resid_pre" else (
            "blocks.0.hook_resid_post",):
        assert torch.equal(cache[earlier], base[earlier])
    assert not torch.equal(cache["blocks.2.hook_resid_post"], base["blocks.2.hook_resid_post"])
    assert remaining_hooks(tiny_model) == 0


def test_several_vectors_with_own_multipliers(tiny_model):
    toks = tokens(tiny_model, "some text")
    a = SteeringVector(torch.randn(32), full_hook_name(1))
    b = SteeringVector(torch.randn(32), full_hook_name(1))
    c = SteeringVector(torch.randn(32), full_hook_name(0, "resid_pre"))
    _, base = tiny_model.run_with_cache(toks)
    with steer(tiny_model, [a, b], [1.0, -0.5]):
        _, cache = tiny_model.run_with_cache(toks)
    want = base["blocks.1.hook_resid_post"] + a.vector + b.vector * -0.5
    assert torch.allclose(cache["blocks.1.hook_resid_post"], want, atol=1e-6)
    with steer(tiny_model, [c, a], [2.0, 1.0]):
        _, cache = tiny_model.run_with_cache(toks)
    assert torch.equal(cache["blocks.0.hook_resid_pre"], base["blocks.0.hook_resid_pre"] + 2.0 * c.vector)
    with pytest.raises(ValueError, match="2 vectors but 3 multipliers"):
        with steer(tiny_model, [a, b], [1, 2, 3]):
            pass


def test_positions(tiny_model):
    toks = tokens(tiny_model, "abcdefgh")
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    _, base = tiny_model.run_with_cache(toks)
    name = "blocks.1.hook_resid_post"
    with steer(tiny_model, v, 1.0, positions=5):
        _, cache = tiny_model.run_with_cache(toks)
    diff = (cache[name] - base[name]).norm(dim=-1)[0]
    assert torch.all(diff[:5] == 0) and torch.all(diff[5:] > 0)
    with steer(tiny_model, v, 1.0, positions=("prompt", 3)):
        _, cache = tiny_model.run_with_cache(toks)
    diff = (cache[name] - base[name]).norm(dim=-1)[0]
    assert torch.all(diff[:3] > 0) and torch.all(diff[3:] == 0)
    mask = torch.zeros(1, toks.shape[1], dtype=torch.bool)
    mask[0, 2] = True
    with steer(tiny_model, v, 1.0, positions=mask):
        _, cache = tiny_model.run_with_cache(toks)
    diff = (cache[name] - base[name]).norm(dim=-1)[0]
    assert diff[2] > 0 and diff.count_nonzero() == 1
    with pytest.raises(ValueError, match="position mask has shape"):
        with steer(tiny_model, v, 1.0, positions=torch.ones(1, 3, dtype=torch.bool)):
            tiny_model(toks)


def test_no_hooks_left_after_exception(tiny_model):
    v = SteeringVector(torch.randn(32), full_hook_name(2))
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny_model, v, 1.0):
            assert remaining_hooks(tiny_model) > 0
            raise RuntimeError("boom")
    assert remaining_hooks(tiny_model) == 0


def test_incompatible_vector_rejected_before_hooks(tiny_model):
    with pytest.raises(ValueError, match="d_model 8"):
        with steer(tiny_model, SteeringVector(torch.randn(8), full_hook_name(0)), 1.0):
            pass
    assert remaining_hooks(tiny_model) == 0


@pytest.mark.parametrize("positions", ["all", "response", "prompt"])
def test_kv_cache_generation_matches_uncached(tiny_model, positions):
    prompts = [format_chat(tiny_model, "a"), format_chat(tiny_model, "a longer question here")]
    v = SteeringVector(torch.randn(32) * 3, full_hook_name(1))
    cached = generate(tiny_model, prompts, v, 1.5, positions=positions, max_new_tokens=8)
    uncached = generate(tiny_model, prompts, v, 1.5, positions=positions, max_new_tokens=8, use_kv_cache=False)
    assert cached == uncached
    plain = generate(tiny_model, prompts, max_new_tokens=8)
    assert plain != cached  # the vector does change the output
    assert remaining_hooks(tiny_model) == 0


def test_batched_generation_matches_single(tiny_model):
    prompts = [format_chat(tiny_model, "a"), format_chat(tiny_model, "a longer question here")]
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    batched = generate(tiny_model, prompts, v, 1.0, max_new_tokens=6)
    single = [generate(tiny_model, p, v, 1.0, max_new_tokens=6) for p in prompts]
    assert batched == single


def test_sampled_generation_repeatable_with_seed(tiny_model):
    p = format_chat(tiny_model, "q")
    a = generate(tiny_model, p, do_sample=True, seed=3, max_new_tokens=8)
    b = generate(tiny_model, p, do_sample=True, seed=3, max_new_tokens=8)
    assert a == b


@pytest.mark.tl3
def test_generation_decodes_with_laid_out_weights_and_same_tokens(tiny_model):
    from workbench.engine.steering import _generation_model

    v = SteeringVector(torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(0)),
                       "blocks.1.hook_resid_post")
    decoder = _generation_model(tiny_model)
    assert decoder is not tiny_model and decoder.blocks[0].mlp.W_in.T.is_contiguous()
    assert decoder.unembed.W_U.T.is_contiguous() and torch.equal(decoder.unembed.W_U, tiny_model.unembed.W_U)
    prompts = ["Hello there", "A longer prompt with more words in it"]
    fast = generate(tiny_model, prompts, v, 2.0, max_new_tokens=8)
    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act)]):
        assert _generation_model(tiny_model) is tiny_model  # the caller's hooks must fire: no copy
        plain = generate(tiny_model, prompts, v, 2.0, max_new_tokens=8)
    assert fast == plain and remaining_hooks(tiny_model) == 0


def test_generation_config_and_keyword_options_are_one_thing(tiny_model):
    prompts = [format_chat(tiny_model, "Hi"), format_chat(tiny_model, "Tell me more")]
    v = SteeringVector(torch.randn(tiny_model.cfg.d_model), full_hook_name(1), method="x")
    config = GenerationConfig(max_new_tokens=6, do_sample=True, seed=4)
    by_config = generate(tiny_model, prompts, v, 1.0, config=config)
    assert by_config == generate(tiny_model, prompts, v, 1.0, max_new_tokens=6, do_sample=True, seed=4)
    assert generate(tiny_model, prompts, v, 1.0, config=config, do_sample=False) == \
        generate(tiny_model, prompts, v, 1.0, max_new_tokens=6)  # options override the config's fields
    with pytest.raises(TypeError, match="max_tokens"):
        generate(tiny_model, prompts, max_tokens=3)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=1.5)


def test_generate_names_an_unknown_option(tiny_model):
    with pytest.raises(TypeError, match=r"^generate\(\) got unknown option\(s\) \['max_tokens'\]; .*GenerationConfig"):
        generate(tiny_model, "Hello", max_tokens=3)
