"""BiPO's prefix cache against an independent full forward (workbench.engine.prefix_cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import naive_logprobs

from workbench.core.prompts import prompts_and_answers
from workbench.core.vector import SteeringVector, full_hook_name
from workbench.data.pairs import PreferencePair
from workbench.engine import PrefixCache, entry, make_runner, tokenize_items
from workbench.engine.steering import steer

SYS = "You are a helpful, honest and concise assistant."
PAIRS = [PreferencePair(f"Question {i}: {'why ' * (3 * i)}?", f"Yes, {'a' * (i + 1)}.", f"No{'!' * i}")
         for i in range(5)]
POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def vec(layer: int, point: str, seed: int = 0, d: int = 32) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(d, generator=g), full_hook_name(layer, point), method="x")


@pytest.mark.parametrize("point", POINTS)
def test_prefix_cache_per_item_delta_and_gradient(tiny_model, point):
    v = vec(1, point, 7)
    prompts, answers = prompts_and_answers(tiny_model, PAIRS[:4], SYS)
    items = tokenize_items(tiny_model, prompts, [a + ["maybe"] for a in answers])  # three answers each
    runner = make_runner(tiny_model, entry(tiny_model, v.hook_name)[0])
    cache = PrefixCache.build(tiny_model, items, v.hook_name, runner=runner, batch_size=3)
    d = torch.tensor([1.0, -1.0, 2.0, 0.5])
    x = v.vector.clone().requires_grad_(True)
    lp = cache.logprobs(runner, torch.arange(4), d[:, None] * x, unembed_model=tiny_model)  # (4, 3)
    for i in range(4):
        with steer(tiny_model, v, float(d[i])):
            want = naive_logprobs(tiny_model, [prompts[i]] * 3, answers[i] + ["maybe"])
        np.testing.assert_allclose(lp[i].detach().double(), want, atol=2e-5)
    np.testing.assert_allclose(cache.reference.double().flatten(),
                               naive_logprobs(tiny_model, [p for p in prompts for _ in range(3)],
                                              [a for pa in answers for a in pa + ["maybe"]]), atol=2e-5)
    lp.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_score_is_logprobs_of_every_item_and_needs_equal_answer_counts(tiny_model):
    v = vec(1, "resid_post", 3)
    prompts, answers = prompts_and_answers(tiny_model, PAIRS, SYS)
    items = tokenize_items(tiny_model, prompts, answers)
    cache = PrefixCache.build(tiny_model, items, v.hook_name, batch_size=2)
    assert len(cache) == len(PAIRS) and cache.n_answers == 2
    torch.testing.assert_close(cache.score(tiny_model), cache.reference)
    steered = cache.score(tiny_model, 1.5 * v.vector, batch_size=2)
    torch.testing.assert_close(steered[1:3], cache.logprobs(tiny_model, [1, 2], 1.5 * v.vector))
    ragged = tokenize_items(tiny_model, prompts[:2], [answers[0], answers[1] + ["maybe"]])
    with pytest.raises(ValueError, match="same number of answers"):
        PrefixCache.build(tiny_model, ragged, v.hook_name)


@pytest.mark.tl3  # packed blocks: HookedTransformer only
def test_shared_system_prompt_is_one_residual_and_computed_once_per_step(tiny_model, monkeypatch):
    """The system prompt every item shares holds the same residual in every item (setup batches built apart),
    so a step with one delta computes it once: log-probs as the independent forward, gradient as without sharing."""
    import workbench.engine.packed as packed

    v = vec(1, "resid_post", 5)
    prompts, answers = prompts_and_answers(tiny_model, PAIRS, SYS)
    items = tokenize_items(tiny_model, prompts, answers)
    runner = make_runner(tiny_model, entry(tiny_model, v.hook_name)[0])
    cache = PrefixCache.build(tiny_model, items, v.hook_name, runner=runner, batch_size=2)
    span = 0  # the tokens every prompt starts with: the template up to the question
    while all(len(t) > span and t[span] == items.prompts[0][span] for t in items.prompts):
        span += 1
    rows = [cache.prompt_resid[int(o): int(o) + span] for o in cache.prompt_offsets[:-1]]
    assert span > 4 and all(torch.equal(r, rows[0]) for r in rows)
    spans = []
    real = packed.shared_prefix
    monkeypatch.setattr(packed, "shared_prefix", lambda x_p, m_p: spans.append(real(x_p, m_p)) or spans[-1])
    grads = []
    for share in (True, False):
        monkeypatch.setattr(packed, "MIN_SHARED_ROWS", 1 if share else 10**9)
        x = v.vector.clone().requires_grad_(True)
        lp = cache.logprobs(runner, torch.tensor([4, 0, 2]), -1.5 * x, unembed_model=tiny_model)
        lp.sum().backward()
        grads.append(x.grad)
        with steer(tiny_model, v, -1.5):
            want = naive_logprobs(tiny_model, [p for i in (4, 0, 2) for p in [prompts[i]] * 2],
                                  [a for i in (4, 0, 2) for a in answers[i]])
        np.testing.assert_allclose(lp.detach().double().flatten(), want, atol=2e-5)
    assert spans[0] >= span and spans[1] == 0  # computed once, then not
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
