import pytest
import torch

from workbench.model import end_of_turn, format_chat
from workbench.scoring import answer_logprobs, score_completions, tokenize_completions
from workbench.steering import steer
from workbench.vector import SteeringVector, hook_name


def reference_logprobs(model, prompts, answers):
    out = []
    for p, a in zip(prompts, answers):
        pt = model.tokenizer(p, add_special_tokens=False)["input_ids"]
        at = model.tokenizer(a, add_special_tokens=False)["input_ids"]
        toks = torch.tensor([pt + at])
        lp = model(toks).log_softmax(-1)[0]
        out.append(sum(lp[len(pt) + i - 1, t] for i, t in enumerate(at)))
    return torch.stack(out)


def pairs(model):
    eot = end_of_turn(model)
    prompts = [format_chat(model, q, "be brief") for q in ("hi", "what is the answer?", "x")]
    answers = [f"yes{eot}", f"a much longer answer{eot}", f"z{eot}"]
    return prompts, answers


def test_tokenize_boundaries(tiny_model):
    prompts, answers = pairs(tiny_model)
    b = tokenize_completions(tiny_model, prompts, answers)
    assert b.tokens.shape[0] == 3
    for i, (p, a) in enumerate(zip(prompts, answers)):
        n_p = len(tiny_model.tokenizer(p, add_special_tokens=False)["input_ids"])
        assert int(b.prompt_lengths[i]) == n_p
        assert tiny_model.tokenizer.decode(b.tokens[i][b.answer_mask[i]]) == a
        assert int(b.attention_mask[i].sum()) == int(b.lengths[i])
    # the real end-of-turn token (== pad) stays attended
    assert all(b.attention_mask[i, int(b.lengths[i]) - 1] == 1 for i in range(3))


def test_answer_logprobs_match_full_log_softmax(tiny_model):
    prompts, answers = pairs(tiny_model)
    b = tokenize_completions(tiny_model, prompts, answers)
    got = answer_logprobs(tiny_model, b)
    want = reference_logprobs(tiny_model, prompts, answers)
    assert torch.allclose(got, want, atol=1e-5)
    per_tok = answer_logprobs(tiny_model, b, per_token=True)
    assert torch.allclose(per_tok, want / b.answer_mask.sum(1), atol=1e-5)
    assert torch.allclose(score_completions(tiny_model, prompts, answers, batch_size=2), want, atol=1e-5)


def test_prefix_path_equals_full_path_under_steering(tiny_model):
    prompts, answers = pairs(tiny_model)
    b = tokenize_completions(tiny_model, prompts, answers)
    v = SteeringVector(torch.randn(32), hook_name(0))
    with steer(tiny_model, v, 2.0):
        full = answer_logprobs(tiny_model, b)
    resid = tiny_model(b.tokens, attention_mask=b.attention_mask, stop_at_layer=1)
    fast = answer_logprobs(tiny_model, b, residual=resid + 2.0 * v.vector, start_at_layer=1)
    assert torch.allclose(full, fast, atol=1e-5)


def test_truncation_keeps_answer(tiny_model):
    prompts, answers = pairs(tiny_model)
    b = tokenize_completions(tiny_model, prompts, answers, max_length=30)
    assert b.tokens.shape[1] <= 30
    assert [tiny_model.tokenizer.decode(b.tokens[i][b.answer_mask[i]]) for i in range(3)] == answers
    with pytest.raises(ValueError, match="more than max_length"):
        tokenize_completions(tiny_model, prompts, answers, max_length=15)
    # rows of one group lose the same prompt tokens: the most any of them needs
    p, short, longer = prompts[1], "a", "a much longer answer here"
    full = tokenize_completions(tiny_model, [p, p], [short, longer])
    limit = int(full.lengths.max()) - 3  # the longer row must lose 3 prompt tokens, the short one none
    g = tokenize_completions(tiny_model, [p, p], [short, longer], max_length=limit, groups=[0, 0])
    alone = tokenize_completions(tiny_model, [p, p], [short, longer], max_length=limit)
    assert g.prompt_lengths[0] == g.prompt_lengths[1] == alone.prompt_lengths.min() < alone.prompt_lengths.max()
    with pytest.raises(ValueError, match="empty after tokenization"):
        tokenize_completions(tiny_model, ["p"], [""])
