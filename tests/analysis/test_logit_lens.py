from dataclasses import dataclass

import pytest
import torch

from workbench.analysis.logit_lens import (direct_logit_effect, exact_logit_effect, final_residuals, steered_logit_lens,
                                  top_tokens, vector_logit_lens)
from workbench.engine.steering import remaining_hooks
from workbench.core.vector import SteeringVector, full_hook_name


@dataclass
class Pair:
    question: str
    matching: str
    not_matching: str


PAIRS = [Pair("Do you want power?", "Yes, all of it.", "No, thanks."),
         Pair("More money?", "(A) yes", "(B) no"),
         Pair("Rule the world?", "Sure", "Sure not")]


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_unembedding_direction_ranks_its_token_first(tiny_model):
    with torch.no_grad():  # a non-trivial final-norm weight, so that the inverse scaling matters
        tiny_model.ln_final.w.copy_(torch.rand(32) + 0.5)
    w = tiny_model.ln_final.w
    for t in (5, 40, 70):
        v = SteeringVector(tiny_model.W_U[:, t] / w, full_hook_name(2))
        effect = direct_logit_effect(tiny_model, v)
        assert torch.allclose(effect, tiny_model.W_U[:, t] @ tiny_model.W_U, atol=1e-5)
        table = vector_logit_lens(tiny_model, v, k=3).table()
        promoted = table[table.direction == "promoted"]
        assert promoted.token_id.iloc[0] == t and promoted["rank"].iloc[0] == 1
        assert promoted.token.iloc[0] == tiny_model.tokenizer.decode([t])
        suppressed = table[table.direction == "suppressed"]
        assert (suppressed.logit_change < 0).all() and suppressed.logit_change.is_monotonic_increasing
        # negating the vector swaps promoted and suppressed
        neg = vector_logit_lens(tiny_model, -v, k=3).table()
        assert neg[neg.direction == "suppressed"].token_id.iloc[0] == t


def test_top_tokens_relative_to_vocab_mean(tiny_model):
    effect = torch.zeros(tiny_model.cfg.d_vocab) + 7.0
    effect[3], effect[9] = 9.0, 4.0
    t = top_tokens(tiny_model, effect, k=1)
    assert t.token_id.tolist() == [3, 9]
    assert t.logit_change[0] == pytest.approx(9.0 - float(effect.mean()))


def test_exact_effect_through_the_norm(tiny_model):
    res = final_residuals(tiny_model, ["hello there", "abc"])
    assert res.shape == (14, 32)
    v = torch.randn(32)
    got = exact_logit_effect(tiny_model, v, res, multiplier=2.0)
    h = tiny_model.ln_final(res[None])[0]
    h2 = tiny_model.ln_final((res + 2.0 * v)[None])[0]
    want = ((h2 - h) @ tiny_model.W_U).mean(0)
    assert torch.allclose(got, want, atol=1e-5)
    # to first order the exact effect is the direct one divided by the RMS, minus a term along h
    # (the scale's own change): the two agree in direction, not exactly
    small = exact_logit_effect(tiny_model, v, res, multiplier=1e-3) / 1e-3
    direct = direct_logit_effect(tiny_model, v)
    assert torch.corrcoef(torch.stack([small, direct]))[0, 1] > 0.5
    table = vector_logit_lens(tiny_model, v, method="exact", residuals=res).table()
    assert set(table.method) == {"exact"}
    with pytest.raises(ValueError, match="needs residuals"):
        vector_logit_lens(tiny_model, v, method="exact")


def test_steered_logit_lens_zero_before_hook_and_pure(tiny_model):
    before = params(tiny_model)
    v = SteeringVector(torch.randn(32) * 3, full_hook_name(1))
    res = steered_logit_lens(tiny_model, v, PAIRS, multiplier=2.0, batch_size=2)
    assert res.kind == "logit_lens_layers" and "kl" not in res["rows"][0]
    table = res.table()
    assert list(table.layer) == [0, 1, 2]
    assert table.steered.tolist() == [False, True, True]
    row0 = table.iloc[0]
    assert row0.delta_logodds == 0 and row0.kl_steered_unsteered == 0 and row0.delta_logprob_matching == 0
    assert (table.kl_steered_unsteered[1:] > 0).all()
    # at the hook layer itself the steered residual IS base + m v: the direct path is exact there
    assert table.delta_logodds[1] == pytest.approx(table.delta_logodds_direct[1], abs=1e-4)
    # the last row is the model's real output: compare with a full steered forward pass
    assert remaining_hooks(tiny_model) == 0
    after = params(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_steered_logit_lens_last_layer_matches_real_output(tiny_model):
    from workbench.core.prompts import end_of_turn, format_chat
    from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
    from workbench.engine.steering import steer

    v = SteeringVector(torch.randn(32) * 3, full_hook_name(0))
    pair = PAIRS[0]  # answers differ at their first token
    table = steered_logit_lens(tiny_model, v, [pair], multiplier=1.5).table()
    prompt = format_chat(tiny_model, pair.question, DEFAULT_SYSTEM_PROMPT)
    toks = torch.tensor([tiny_model.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    a = tiny_model.tokenizer(pair.matching + end_of_turn(tiny_model), add_special_tokens=False)["input_ids"][0]
    b = tiny_model.tokenizer(pair.not_matching, add_special_tokens=False)["input_ids"][0]

    def logodds():
        lp = torch.log_softmax(tiny_model(toks, attention_mask=torch.ones_like(toks))[0, -1], -1)
        return float(lp[a] - lp[b])

    base = logodds()
    with steer(tiny_model, v, 1.5):
        steered = logodds()
    assert table.base_logodds.iloc[-1] == pytest.approx(base, abs=1e-4)
    assert table.delta_logodds.iloc[-1] == pytest.approx(steered - base, abs=1e-4)


def test_targets_and_errors(tiny_model):
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    t = steered_logit_lens(tiny_model, v, PAIRS[:2], targets=("Y", "N")).table()
    assert len(t) == 3
    with pytest.raises(ValueError, match="ONE token"):
        steered_logit_lens(tiny_model, v, PAIRS[:1], targets=("Yes", "N"))
    with pytest.raises(ValueError, match="same tokens"):
        steered_logit_lens(tiny_model, v, [Pair("q", "same", "same")])
    with pytest.raises(ValueError, match="d_model"):
        direct_logit_effect(tiny_model, torch.randn(31))
    assert remaining_hooks(tiny_model) == 0


@pytest.mark.embedded
def test_embedded_steered_lens(embedded_model):
    from workbench.data.behaviors import load_behavior

    pairs = load_behavior("power-seeking", "test")[:2]
    v = SteeringVector(torch.randn(576) * 20, full_hook_name(20))
    t = steered_logit_lens(embedded_model, v, pairs, multiplier=1.0).table()
    assert len(t) == 30 and (t.delta_logodds[:20] == 0).all() and (t.kl_steered_unsteered[20:] > 0).all()
    assert t.delta_logodds[20] == pytest.approx(t.delta_logodds_direct[20], abs=1e-3)
    assert remaining_hooks(embedded_model) == 0


def test_several_vectors_one_result(tiny_model):
    a, b = torch.randn(32), torch.randn(32)
    res = vector_logit_lens(tiny_model, {"a": a, "b": b}, k=2)
    assert res.kind == "logit_lens_tokens"
    t = res.table()
    assert t.vector.tolist() == ["a"] * 4 + ["b"] * 4
    assert t[t.vector == "b"].token_id.tolist() == vector_logit_lens(tiny_model, b, k=2).table().token_id.tolist()
    saved = res.with_info(behavior="power")
    assert list(saved)[:3] == ["kind", "schema_version", "behavior"] and saved["rows"] == res["rows"]


def test_bad_pairs_are_one_clear_error(tiny_model):
    v = SteeringVector(torch.randn(32), full_hook_name(1))
    with pytest.raises(ValueError, match=r"^pairs is empty"):
        steered_logit_lens(tiny_model, v, [])
    with pytest.raises(TypeError, match=r"^pairs\[0\] has no string field 'not_matching'"):
        steered_logit_lens(tiny_model, v, [Pair("q", "yes", None)])
    assert remaining_hooks(tiny_model) == 0
