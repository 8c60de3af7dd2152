"""The scoring engine (workbench.engine.scoring) against an independent full forward pass for every metric it
serves, with padding, truncation, BOS, every hook point and a composition across layers; bf16; memory."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, naive_logprobs

from workbench.data.pairs import MCQuestion, PreferencePair
from workbench.core.prompts import format_chat, prompts_and_answers
from workbench.core.vector import SteeringVector, full_hook_name
from workbench.engine import (Items, PrefixCache, answer_logprobs, entry, preference_logprobs, run_conditions,
                              tokenize_items)
from workbench.engine.steering import remaining_hooks, steer
from workbench.evaluate.preference import ab_pair_probs, pair_logodds
from workbench.evaluate.truthfulqa import truthfulqa_per_question
from workbench.evaluate.utility import utility_per_text

SYS = "You are a helpful, honest and concise assistant."
PAIRS = [PreferencePair(f"Question {i}: {'why ' * (3 * i)}?", f"Yes, {'a' * (i + 1)}.", f"No{'!' * i}")
         for i in range(5)]
POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def vec(layer: int, point: str, seed: int = 0, d: int = 32) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(d, generator=g), full_hook_name(layer, point), method="x")


def naive_pairs(model, pairs, condition, max_length=None):
    """(n, 2) log-probs of matching / not matching by the independent reference under ``condition``."""
    prompts, answers = prompts_and_answers(model, pairs, SYS)
    flat_p = [p for p in prompts for _ in range(2)]
    flat_a = [a for pa in answers for a in pa]
    groups = [i for i in range(len(pairs)) for _ in range(2)]
    with steer(model, [v for v, _ in condition], [m for _, m in condition]) if condition else _null():
        return naive_logprobs(model, flat_p, flat_a, max_length, groups).view(-1, 2)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


@pytest.fixture
def bos_model():
    """A tiny model whose config prepends BOS (like Llama-2): the engine must add it exactly once."""
    m = make_tiny_model(seed=1)
    m.cfg.default_prepend_bos = True
    return m


# --------------------------------------------------------------------------- log-odds
@pytest.mark.parametrize("point", POINTS)
def test_logprobs_equal_full_forward_at_every_hook_point(bos_model, point):
    """With BOS, padding (different lengths) and a prompt longer than max_length."""
    v = vec(1, point)
    conds = [(), ((v, 1.5),), ((v, -2.0),)]
    for max_length in (None, 70):
        lp, n_tok = preference_logprobs(bos_model, PAIRS, conds, system_prompt=SYS, max_length=max_length,
                                        batch_size=2)
        for c, cond in enumerate(conds):
            np.testing.assert_allclose(lp[c].double(), naive_pairs(bos_model, PAIRS, cond, max_length), atol=2e-5)
        assert (n_tok > 0).all()
    assert remaining_hooks(bos_model) == 0


def test_composition_across_two_layers_and_shared_unsteered(tiny_model):
    a, b = vec(0, "resid_post", 1), vec(2, "attn_out", 2)
    conds = [((a, 1.0), (b, -2.0)), (), ((b, 0.5),), ((a, 1.0), (b, -2.0))]
    lp, _ = preference_logprobs(tiny_model, PAIRS, conds, system_prompt=SYS, batch_size=3)
    for c, cond in enumerate(conds):
        np.testing.assert_allclose(lp[c].double(), naive_pairs(tiny_model, PAIRS, cond), atol=2e-5)
    torch.testing.assert_close(lp[0], lp[3])


def test_pair_logodds_columns_and_per_token(tiny_model):
    v = vec(1, "resid_post")
    per = pair_logodds(tiny_model, {"v": v}, PAIRS, [0.0, 1.0], batch_size=2, progress=False)
    ref = naive_pairs(tiny_model, PAIRS, ((v, 1.0),)).numpy()
    got = per[per.multiplier == 1.0].sort_values("pair")
    np.testing.assert_allclose(got.logodds, ref[:, 0] - ref[:, 1], atol=2e-5)
    want = ref[:, 0] / got.n_tokens_matching - ref[:, 1] / got.n_tokens_not_matching
    np.testing.assert_allclose(got.logodds_per_token, want, atol=2e-5)


# --------------------------------------------------------------------------- A/B, MC, utility
def test_ab_equals_full_forward(tiny_model):
    pairs = [PreferencePair(f"Agree {i}?\n (A) Yes\n (B) No", "(A)" if i % 2 else "(B)", "(B)" if i % 2 else "(A)")
             for i in range(4)]
    v = vec(1, "mlp_out", 4)
    per = ab_pair_probs(tiny_model, {"v": v}, pairs, [2.0], batch_size=3, progress=False)
    tok = tiny_model.tokenizer
    a, b = (tok(x, add_special_tokens=False)["input_ids"][0] for x in "AB")
    for i, p in enumerate(pairs):
        ids = tok(format_chat(tiny_model, p.question, SYS) + "(", add_special_tokens=False, return_tensors="pt")
        with steer(tiny_model, v, 2.0), torch.no_grad():
            lp = tiny_model(ids["input_ids"])[0, -1].float().log_softmax(-1)
        pa = torch.sigmoid(lp[a] - lp[b]).item()
        got = per[per.pair == i].iloc[0]
        assert got.p_matching == pytest.approx(pa if p.matching == "(A)" else 1 - pa, abs=1e-5)
        assert got.p_letters == pytest.approx((lp[a].exp() + lp[b].exp()).item(), abs=1e-5)


def test_mc_equals_full_forward(tiny_model):
    mc1 = [MCQuestion("Is the sky green?", ("No, it is blue.", "Yes.", "Always."), (1, 0, 0))]
    mc2 = [MCQuestion("Is the sky green?", ("No, it is blue.", "No.", "Yes."), (1, 1, 0))]
    v = vec(2, "resid_pre", 5)
    per = truthfulqa_per_question(tiny_model, {"v": v}, mc1, mc2, [1.5], progress=False)
    for targets, qs in (("mc1", mc1), ("mc2", mc2)):
        q = qs[0]
        with steer(tiny_model, v, 1.5):
            lp = naive_logprobs(tiny_model, [format_chat(tiny_model, q.question, SYS)] * len(q.choices),
                                list(q.choices)).numpy()
        true = np.array(q.labels, dtype=bool)
        p = np.exp(lp - lp.max())
        want = float(true[np.argmax(lp)]) if targets == "mc1" else p[true].sum() / p.sum()
        assert per[per.targets == targets].score.iloc[0] == pytest.approx(want, abs=1e-5)


def test_perplexity_and_kl_equal_full_forward(tiny_model):
    texts = ["The river winds through low hills.", "Bread needs flour and water."]
    v = vec(0, "attn_out", 6)
    per = utility_per_text(tiny_model, {"v": v}, texts, [0.0, 3.0], progress=False)
    for i, t in enumerate(texts):
        toks = tiny_model.tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = tiny_model(toks)[0, :-1].float().log_softmax(-1)
            with steer(tiny_model, v, 3.0):
                st = tiny_model(toks)[0, :-1].float().log_softmax(-1)
        row = per[(per.multiplier == 3.0) & (per.text == i)].iloc[0]
        assert row.nll_sum == pytest.approx(-st.gather(1, toks[0, 1:, None]).sum().item(), abs=1e-4)
        assert row.kl_sum == pytest.approx((ref.exp() * (ref - st)).sum().item(), abs=1e-4)
        assert row.agree_sum == (st.argmax(-1) == ref.argmax(-1)).sum().item()


# --------------------------------------------------------------------------- runners and memory


def _live_parameter_bytes() -> int:
    seen = {}
    for o in gc.get_objects():
        if isinstance(o, torch.nn.Parameter):
            s = o.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def test_training_and_evaluation_copy_no_weight_beyond_the_formula(tiny_model):
    from workbench.train.bipo import BiPOConfig, train_bipo

    gc.collect()
    base = _live_parameter_bytes()
    seen = []
    config = BiPOConfig(layer=1, epochs=1, batch_size=2, warmup_steps=0, max_length=None)
    train_bipo(tiny_model, PAIRS, config, progress=False, callback=lambda r: seen.append(_live_parameter_bytes()))
    start = entry(tiny_model, config.hook_name)[0]
    laid_out = sum(p.numel() * p.element_size() for n, p in tiny_model.blocks[start:].named_parameters()
                   if n.rsplit(".", 1)[-1] in ("W_Q", "W_K", "W_V", "_W_K", "_W_V", "W_O", "W_in", "W_gate", "W_out"))
    assert seen and seen[0] - base == laid_out  # CPU: the runner's laid-out matrices only
    during = []
    v = vec(1, "resid_post")

    def probe(act, hook):  # noqa: ARG001
        during.append(_live_parameter_bytes())
        return act

    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", probe)]):
        pair_logodds(tiny_model, {"v": v}, PAIRS, [0.0, 1.0], progress=False)
    assert during and max(during) == base  # fp32 evaluation: the model itself, no copy


# --------------------------------------------------------------------------- precision, dtype, device
def test_bf16_model_and_bf16_runner_stay_close_and_on_device():
    fp32 = make_tiny_model(seed=2)
    bf16 = make_tiny_model(seed=2, dtype=torch.bfloat16)
    v = vec(1, "resid_post", 8)
    conds = [(), ((v, 1.0),)]
    ref, _ = preference_logprobs(fp32, PAIRS, conds, system_prompt=SYS)
    low, _ = preference_logprobs(bf16, PAIRS, conds, system_prompt=SYS)
    mixed, _ = preference_logprobs(fp32, PAIRS, conds, system_prompt=SYS, precision="bf16")
    for got in (low, mixed):
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        scale = ref.abs().max()
        assert (got - ref).abs().max() < 0.05 * scale
    items = tokenize_items(bf16, *prompts_and_answers(bf16, PAIRS, SYS))
    cache = PrefixCache.build(bf16, items, v.hook_name)
    dev = torch.device(bf16.cfg.device)
    for t in (cache.reference, cache.prompt_resid, cache.answer_resid):
        assert t.device.type == dev.type
    assert cache.prompt_resid.dtype == torch.bfloat16 and cache.reference.dtype == torch.float32
    for idx, a_idx, readouts in run_conditions(bf16, items, conds, batch_size=2):
        for r in readouts:
            assert r.h.device.type == dev.type and r.targets.device.type == dev.type
        assert idx.device.type == "cpu" and a_idx.device.type == "cpu"  # indices into CPU outputs


def test_answer_logprobs_from_token_ids(tiny_model):
    ids = tiny_model.tokenizer("Hello there, friend.", add_special_tokens=False)["input_ids"]
    items = Items.from_ids([ids[:1]], [[ids[1:]]])
    lp = answer_logprobs(tiny_model, items, [()])[0, 0]
    with torch.no_grad():
        t = torch.tensor([ids])
        want = tiny_model(t)[0, :-1].float().log_softmax(-1).gather(1, t[0, 1:, None]).sum()
    assert lp.item() == pytest.approx(want.item(), abs=1e-4)
    with pytest.raises(ValueError, match="at least one token"):
        Items.from_ids([[]], [[[1]]])
    assert math.isfinite(lp.item())
