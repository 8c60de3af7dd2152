"""The prompting baseline on the tiny random model: exact zeros, the cost and effect by hand, the shots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
from workbench.core.results import result
from workbench.core.vector import SteeringVector
from workbench.data.pairs import PreferencePair
from workbench.engine.scoring import preference_logodds
from workbench.engine.steering import steer
from workbench.evaluate.prompting import (choose_shots, instruction_context, kshot_context, kshot_prompt,
                                          prompting_baseline, with_instruction, with_prompting_points)

TEXTS = ["The river ran past the old mill.", "A quiet morning in the town square, with bread."]
PAIRS = [PreferencePair(f"Question {i}?", f"Yes {i}", f"No {i}") for i in range(5)]
TRAIN = [PreferencePair(f"Train {i}?", f"Sure {i}", f"Nope {i}") for i in range(8)]
ASK = {"elicit": "Say yes.", "suppress": "Say no."}


def _vec() -> SteeringVector:
    return SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(5)), "blocks.1.hook_resid_post",
                          layer=1, method="test")


def _plain_kl(model, context: str, vec=None, m: float = 0.0) -> float:
    """Mean KL(unprompted || prompted) per passage token by full forwards (the tiny model has no BOS)."""
    tok = model.tokenizer
    ctx = tok(context, add_special_tokens=False)["input_ids"] if context else []
    num = den = 0.0
    for t in TEXTS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        ref = model(torch.tensor([ids]))[0, :-1].log_softmax(-1)  # predicts ids[1:]
        if vec is None:
            out = model(torch.tensor([ctx + ids]))
        else:
            with steer(model, vec, m):
                out = model(torch.tensor([ctx + ids]))
        lp = out[0, len(ctx):-1].log_softmax(-1)  # the positions that predict ids[1:]
        num += float((ref.exp() * (ref - lp)).sum(-1).clamp_min(0).sum())
        den += len(ids) - 1
    return num / den


def _row(res, method, direction, k=0):
    return next(r for r in res["rows"] if r["method"] == method and r["direction"] == direction and r["k"] == k)


def test_empty_instruction_costs_and_moves_exactly_nothing(tiny_model):
    res = prompting_baseline(tiny_model, PAIRS, TRAIN, TEXTS, instructions={"elicit": "", "suppress": ""}, ks=(),
                             n_boot=20)
    assert [r["method"] for r in res["rows"]] == ["instruction", "instruction"]
    for r in res["rows"]:
        assert r["cost"] == 0.0 and r["effect"] == 0.0 and r["n"] == len(PAIRS)
    assert res["instructions"] == {"elicit": "", "suppress": ""}


def test_cost_and_effect_match_the_plain_path(tiny_model):
    res = prompting_baseline(tiny_model, PAIRS, TRAIN, TEXTS, instructions=ASK, ks=(2,), n_boot=50)
    assert res.kind == "prompting" and res["instructions"] == ASK
    base = preference_logodds(tiny_model, PAIRS, [()])[0]
    for d, goal in ((1, "elicit"), (-1, "suppress")):
        r = _row(res, "instruction", d)
        assert math.isclose(r["cost"], _plain_kl(tiny_model, instruction_context(tiny_model, ASK[goal])),
                            rel_tol=1e-4, abs_tol=1e-6)
        lo = preference_logodds(tiny_model, PAIRS, [()], system_prompt=with_instruction(DEFAULT_SYSTEM_PROMPT,
                                                                                         ASK[goal]))[0]
        assert math.isclose(r["effect"], float((lo - base).mean()), rel_tol=1e-5, abs_tol=1e-5)
        assert r["ci_low"] <= r["effect"] <= r["ci_high"]
        assert r["cost_ci_low"] <= r["cost"] <= r["cost_ci_high"]
        shots = choose_shots(TRAIN, 2)
        k = _row(res, "kshot", d, 2)
        assert math.isclose(k["cost"], _plain_kl(tiny_model, kshot_context(tiny_model, shots, d)), rel_tol=1e-4,
                            abs_tol=1e-6)
    assert res["shots"]["2"] == [p.source for p in choose_shots(TRAIN, 2)]
    assert len(tiny_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks) == 0


def test_kshot_prompt_shows_matching_to_elicit_and_not_matching_to_suppress(tiny_model):
    shots = choose_shots(TRAIN, 4, seed=1)
    assert shots[:2] == choose_shots(TRAIN, 2, seed=1)  # the shots of k are among those of 2k
    up = kshot_prompt(tiny_model, "Final?", shots, 1)
    down = kshot_prompt(tiny_model, "Final?", shots, -1)
    for p in shots:
        assert p.question in up and p.matching in up and p.not_matching not in up
        assert p.not_matching in down and p.matching not in down
    assert up.endswith("<|im_start|>assistant\n") and DEFAULT_SYSTEM_PROMPT in up
    ctx = kshot_context(tiny_model, shots, 1)
    assert ctx in up and DEFAULT_SYSTEM_PROMPT not in ctx  # the shots' turns alone
    assert instruction_context(tiny_model, "") == "" and kshot_context(tiny_model, [], 1) == ""


def test_prompt_plus_vector_rows_at_the_matched_multipliers(tiny_model):
    vec = _vec()
    matched = result("matched_cost", cost="kl", budgets=[0.1], n_pairs=len(PAIRS), slopes=[], points=[
        {"vector": "v", "direction": 1, "multiplier": 0.0, "cost": 0.0, "effect": 0.0}], rows=[
        {"vector": "v", "direction": 1, "budget": 0.1, "reached": True, "multiplier": 2.0, "cost": 0.1,
         "effect": 1.5, "effect_ci_low": 1.0, "effect_ci_high": 2.0},
        {"vector": "v", "direction": -1, "budget": 0.1, "reached": False, "multiplier": None, "cost": None}])
    res = prompting_baseline(tiny_model, PAIRS, TRAIN, TEXTS, instructions=ASK, ks=(1,), n_boot=20,
                             vectors={"v": vec}, matched=matched)
    both = _row(res, "instruction+v", 1)
    assert both["multiplier"] == 2.0 and both["budget"] == 0.1
    assert math.isclose(both["cost"], _plain_kl(tiny_model, instruction_context(tiny_model, ASK["elicit"]), vec, 2.0),
                        rel_tol=1e-4, abs_tol=1e-6)
    base = preference_logodds(tiny_model, PAIRS, [()])[0]
    lo = preference_logodds(tiny_model, PAIRS, [((vec, 2.0),)],
                            system_prompt=with_instruction(DEFAULT_SYSTEM_PROMPT, ASK["elicit"]))[0]
    assert math.isclose(both["effect"], float((lo - base).mean()), rel_tol=1e-5, abs_tol=1e-5)
    alone = _row(res, "v", 1)
    assert alone["effect"] == 1.5 and alone["cost"] == 0.1  # the matched result's own row
    assert not [r for r in res["rows"] if r["method"] == "instruction+v" and r["direction"] == -1]  # unreached
    merged = with_prompting_points(matched, res)
    labels = {p["vector"] for p in merged["points"]}
    assert {"v", "prompt: instruction", "prompt: k-shot", "prompt: instruction+v"} <= labels
    kpts = [p for p in merged["points"] if p["vector"] == "prompt: k-shot"]
    assert sorted(p["multiplier"] for p in kpts) == [-1.0, 0.0, 1.0]
    assert len(tiny_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks) == 0


def test_bad_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="behavior"):
        prompting_baseline(tiny_model, PAIRS, TRAIN, TEXTS, ks=(1,))
    with pytest.raises(ValueError, match="train_pairs"):
        prompting_baseline(tiny_model, PAIRS, TRAIN[:3], TEXTS, behavior="power-seeking", ks=(4,))
    with pytest.raises(ValueError, match="ks="):
        prompting_baseline(tiny_model, PAIRS, TRAIN, TEXTS, behavior="power-seeking", ks=(0,))
    with pytest.raises(ValueError, match="no instructions"):
        prompting_baseline(tiny_model, PAIRS, TRAIN, TEXTS, behavior="no-such-behavior")
    assert np.isfinite([r["cost"] for r in prompting_baseline(tiny_model, PAIRS[:2], TRAIN, TEXTS[:1],
                                                              behavior="power-seeking", ks=(1,),
                                                              n_boot=10)["rows"]]).all()
