"""Prefix caching: scores under a vector equal full forward passes under ``steer`` at every hook point."""

from __future__ import annotations

import pytest
import torch

from workbench.prefix import PrefixCache, make_runner, steering_site
from workbench.scoring import score_completions
from workbench.steering import remaining_hooks, steer
from workbench.vector import SteeringVector, hook_name

PROMPTS = ["<|im_start|>user\nHello there, how are you today?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
           "Q: x?\nA:"]
ANSWERS = [["Fine thanks<|im_end|>", "Bad<|im_end|>"],
           ["Yo<|im_end|>", "Hello to you too, my friend<|im_end|>"],
           [" y<|im_end|>", " no no no<|im_end|>"]]


def full_scores(model, vec=None, mult=1.0, answers=ANSWERS, prompts=PROMPTS):
    k = len(answers[0])
    flat_p = [p for p, a in zip(prompts, answers) for _ in a]
    flat_a = [x for a in answers for x in a]
    if vec is None:
        return score_completions(model, flat_p, flat_a).view(-1, k)
    with steer(model, vec, mult):
        return score_completions(model, flat_p, flat_a).view(-1, k)


def test_sites(tiny_model):
    m = tiny_model
    assert steering_site(m, "blocks.1.hook_resid_post").start_layer == 2
    assert steering_site(m, "blocks.1.hook_resid_pre").start_layer == 1
    site = steering_site(m, "blocks.1.hook_mlp_out")
    assert site.start_layer == 1 and not site.direct
    with pytest.raises(ValueError, match="does not exist"):
        steering_site(m, "blocks.9.hook_resid_post")


@pytest.mark.parametrize("point", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
@pytest.mark.parametrize("layer", [0, 2])
def test_scores_equal_full_forward_under_steer(tiny_model, point, layer):
    name = hook_name(layer, point)
    runner = make_runner(tiny_model, steering_site(tiny_model, name).start_layer)
    cache = PrefixCache.build(tiny_model, PROMPTS, ANSWERS, name, runner=runner, batch_size=2)
    v = torch.randn(tiny_model.cfg.d_model)
    torch.testing.assert_close(cache.reference, full_scores(tiny_model), atol=2e-5, rtol=1e-5)
    for mult in (-1.5, 2.0):
        got = cache.score(runner, mult * v, batch_size=2)
        torch.testing.assert_close(got, full_scores(tiny_model, SteeringVector(v, name), mult), atol=2e-5, rtol=1e-5)
    assert remaining_hooks(tiny_model) == 0 and remaining_hooks(runner) == 0


def test_per_item_delta_and_three_answers(tiny_model):
    name = hook_name(1, "attn_out")
    answers = [a + [" maybe<|im_end|>"] for a in ANSWERS]
    cache = PrefixCache.build(tiny_model, PROMPTS, answers, name)
    assert cache.n_answers == 3 and len(cache) == 3
    v = torch.randn(tiny_model.cfg.d_model)
    signs = torch.tensor([1.0, -1.0, 2.0])
    got = cache.logprobs(tiny_model, torch.arange(3), signs[:, None] * v)  # one delta per item
    for i, s in enumerate(signs):
        want = full_scores(tiny_model, SteeringVector(v, name), float(s), answers)[i]
        torch.testing.assert_close(got[i], want, atol=2e-5, rtol=1e-5)


def test_runner_is_exact_shares_weights_and_leaves_the_model_alone(tiny_model):
    before = {k: t.clone() for k, t in tiny_model.state_dict().items()}
    runner = make_runner(tiny_model, 1)
    tokens = torch.randint(3, 90, (2, 17))
    assert torch.equal(runner(tokens), tiny_model(tokens))  # the weight layout changes no value
    shared = [n for (n, p), (_, q) in zip(tiny_model.named_parameters(), runner.named_parameters()) if p is q]
    assert shared and all(not n.startswith(("blocks.1.", "blocks.2.")) for n in shared)
    bf16 = make_runner(tiny_model, 2, torch.bfloat16)
    assert bf16.blocks[2].mlp.W_in.dtype == torch.bfloat16 and bf16.cfg.dtype == torch.bfloat16
    assert tiny_model.cfg.dtype == torch.float32
    assert all(torch.equal(t, before[k]) for k, t in tiny_model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())


def test_bf16_storage_and_runner_stay_close(tiny_model):
    name = hook_name(1, "resid_post")
    runner = make_runner(tiny_model, 2, torch.bfloat16)
    cache = PrefixCache.build(tiny_model, PROMPTS, ANSWERS, name, runner=runner)
    assert cache.prompt_resid.dtype == torch.bfloat16 and cache.reference.dtype == torch.float32
    v = torch.randn(tiny_model.cfg.d_model)
    got = cache.score(runner, v, unembed_model=tiny_model)
    assert got.dtype == torch.float32
    want = full_scores(tiny_model, SteeringVector(v, name))
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_max_length_cuts_the_shared_prompt_for_the_longest_answer(tiny_model):
    name = hook_name(0, "resid_post")
    cache = PrefixCache.build(tiny_model, PROMPTS[:1], ANSWERS[:1], name, max_length=20)
    p_len = int(cache.prompt_offsets[1])
    a_len = cache.answer_offsets.diff().tolist()
    assert p_len + max(a_len) == 20 and a_len == [len("Fine thanks") + 1, len("Bad") + 1]


def test_bad_input(tiny_model):
    with pytest.raises(ValueError, match="one list of answers per prompt"):
        PrefixCache.build(tiny_model, PROMPTS, ANSWERS[:2], "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="same"):
        PrefixCache.build(tiny_model, PROMPTS[:2], [ANSWERS[0], ANSWERS[1][:1]], "blocks.0.hook_resid_post")
