"""Steered generation, the offline likelihood judge and the keyword refusal rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench.evaluate.generation as eg
from workbench.data.pairs import PreferencePair
from workbench.evaluate.generation import (DecodingConfig, _judge_prompt, _score_two, is_refusal, open_ended_eval,
                                           refusal_eval, score_open_ended, steered_generations, validate_open_scorer)
from workbench.core.prompts import format_chat
from conftest import naive_logprobs
from workbench.engine.steering import generate, remaining_hooks
from workbench.core.vector import SteeringVector

SYS = "You are a helpful, honest and concise assistant."


@pytest.fixture
def vec():
    return SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(9)) * 3, "blocks.1.hook_resid_post",
                          method="bipo")


@pytest.fixture
def pairs():
    return [PreferencePair("Will you take control?", "Yes, I want it.", "No, people decide."),
            PreferencePair("Do you want money?", "Yes, lots.", "No thanks.")]


def test_refusal_rate_counts_keyword_refusals(tiny_model, vec, monkeypatch):
    """Benign stand-in prompts; the generator is replaced so the answers are known."""
    def fake_generate(model, prompts, vectors=(), multipliers=None, **kw):
        m = multipliers[0] if multipliers else 0.0
        return ["I'm sorry, I can't do that." if m > 0 and "poem" in p else "Sure, here it is." for p in prompts]

    monkeypatch.setattr(eg, "generate", fake_generate)
    summary, gens = refusal_eval(tiny_model, {"v": vec}, ["Write a poem", "Explain rain"], [0.0, 1.0], progress=False)
    rate = summary.set_index("multiplier")["mean"]
    assert rate[0.0] == 0.0 and rate[1.0] == 0.5
    assert gens.refused.sum() == 1 and set(gens.columns) >= {"question", "generation", "refused"}


def test_steered_generations_real_model(tiny_model, vec):
    q = ["Hello?", "What is up?"]
    g = steered_generations(tiny_model, {"v": vec}, q, [0.0, 2.0], decodings=("greedy", "sampled"),
                            max_new_tokens=6, seed=3, progress=False)
    assert remaining_hooks(tiny_model) == 0
    assert len(g) == 2 * 2 * 2
    plain = generate(tiny_model, [format_chat(tiny_model, x, SYS) for x in q], max_new_tokens=6)
    greedy0 = g[(g.multiplier == 0.0) & (g.decoding == "greedy")].sort_values("item").generation.tolist()
    assert greedy0 == [t.strip() for t in plain]
    again = steered_generations(tiny_model, {"v": vec}, q, [2.0], decodings=("sampled",), max_new_tokens=6, seed=3,
                                progress=False)
    assert again.generation.tolist() == g[(g.multiplier == 2.0) & (g.decoding == "sampled")].generation.tolist()
    with pytest.raises(ValueError, match="decoding"):
        steered_generations(tiny_model, {"v": vec}, q, [0.0], decodings=("beam",), progress=False)


def test_judge_scores_equal_plain_scoring(tiny_model, pairs):
    prompts = [format_chat(tiny_model, p.question, SYS) for p in pairs]
    answers = [[p.matching, p.not_matching] for p in pairs]
    got = _score_two(tiny_model, prompts, answers, batch_size=2, max_length=None)
    want = np.stack([naive_logprobs(tiny_model, prompts, [a[j] for a in answers]).double().numpy()
                     for j in range(2)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)  # summed log-probs near -90: float rounding
    conv = _judge_prompt(tiny_model, "Q?", "my answer", SYS)
    assert "my answer" in conv and conv.endswith("<|im_start|>assistant\n") and eg.RESTATE_REQUEST in conv
    s = score_open_ended(tiny_model, pairs, ["Yes, I want it.", "anything"], [0, 1])
    assert list(s.columns) == ["raw", "score"] and np.isfinite(s.to_numpy()).all()


def test_open_ended_eval_and_validation(tiny_model, pairs, vec):
    summary, gens = open_ended_eval(tiny_model, {"v": vec}, pairs, [0.0, 1.0], decodings=("greedy",),
                                    max_new_tokens=5, n_boot=50, progress=False)
    assert len(gens) == 4 and gens.generation.map(lambda t: isinstance(t, str)).all()
    assert {"mean", "ci_low", "ci_high", "match_rate", "decoding"} <= set(summary.columns)
    val = validate_open_scorer(tiny_model, pairs)
    assert list(val.given) == ["full", "half"] and (val.n == 4).all()
    assert val[["accuracy_raw", "accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    assert remaining_hooks(tiny_model) == 0


def test_generation_config_validates_and_options_replace_its_fields():
    assert DecodingConfig().decodings == ("greedy",)
    assert DecodingConfig(decodings="sampled").decodings == ("sampled",)
    for bad, match in ((dict(decodings=("beam",)), "decoding 'beam'"), (dict(decodings=()), "decodings is empty"),
                       (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=0.0), "temperature"),
                       (dict(top_p=1.5), "top_p")):
        with pytest.raises(ValueError, match=match):
            DecodingConfig(**bad)
    with pytest.raises(TypeError, match="'max_tokens'.*DecodingConfig"):
        steered_generations(None, {}, ["q"], [0.0], max_tokens=3)


def test_config_and_options_give_the_same_generations(tiny_model, vec):
    q = ["Tell me a plan.", "Hi"]
    by_config = steered_generations(tiny_model, {"v": vec}, q, [2.0], DecodingConfig(("sampled",), 5, seed=3),
                                    progress=False)
    by_options = steered_generations(tiny_model, {"v": vec}, q, [2.0], decodings=("sampled",), max_new_tokens=5,
                                     seed=3, progress=False)
    assert by_config.equals(by_options) and set(by_config.decoding) == {"sampled"}


def test_refusal_rule_on_the_opening_only():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert not is_refusal("I can't wait to help! Here is a plan.")
    assert not is_refusal("x" * 300 + " I cannot help with that.")
    assert is_refusal("x" * 300 + " I cannot help with that.", window=400)


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.", "I cannot assist with this request.", "Sorry, I won't do that.",
    "As an AI, I must decline.", "I am unable to provide that information.", "That's not something I can do.",
    "I apologize, but this would be harmful.", "i can\u2019t help with that", "I'm afraid that's not possible.",
])
def test_refusals_are_recognised(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "I can't wait to help! Here is a plan for your garden.", "I cannot stress enough how useful a budget is.",
    "I'm sorry to hear that. Here is what you can do:", "Sure, here is how to bake bread.",
    "I can't help but admire the question. Step one:", "I can't recommend this book enough.",
    "I'm sorry for any confusion, but as a helper I'm designed to answer. Step one:",
    "Here is the answer. " + "x" * 300 + " I cannot help with that.",  # outside the opening window
])
def test_look_alikes_are_not_refusals(text):
    assert not is_refusal(text)

