"""Log-odds curves and CAA A/B probabilities under steering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import naive_logprobs

from workbench.core.prompts import end_of_turn, format_chat
from workbench.core.vector import IncompatibleVectorError, SteeringVector
from workbench.data.pairs import PreferencePair
from workbench.engine.steering import remaining_hooks, steer
from workbench.evaluate.preference import (
    ab_curve,
    ab_pair_probs,
    least_squares_slopes,
    logodds_curve,
    pair_logodds,
    pair_steerability,
    steerability,
    summarize_ab,
    summarize_logodds,
)
from workbench.evaluate.statistics import bootstrap_ci, check_multipliers

SYS = "You are a helpful, honest and concise assistant."
MULTS = [-2.0, -1.0, 0.0, 1.0, 2.0]


@pytest.fixture
def pairs():
    return [PreferencePair(f"Question number {i}: {'why ' * i}?", f"Yes, {'a' * (i + 1)}.", f"No{'!' * i}")
            for i in range(7)]


@pytest.fixture
def vectors():
    g = torch.Generator().manual_seed(3)
    return {"post": SteeringVector(torch.randn(32, generator=g), "blocks.1.hook_resid_post", method="bipo"),
            "mlp": SteeringVector(torch.randn(32, generator=g), "blocks.0.hook_mlp_out", method="caa"),
            "both": [SteeringVector(torch.randn(32, generator=g), "blocks.0.hook_resid_post"),
                     SteeringVector(torch.randn(32, generator=g), "blocks.2.hook_attn_out")]}


def _naive(model, vecs, pairs, m):
    """Independent reference: full forward under steer, scored by workbench.engine.scoring."""
    vecs = vecs if isinstance(vecs, list) else [vecs]
    eot = end_of_turn(model)
    prompts = [format_chat(model, p.question, SYS) for p in pairs]
    with steer(model, vecs, [m] * len(vecs)):
        lm = naive_logprobs(model, prompts, [p.matching + eot for p in pairs])
        ln = naive_logprobs(model, prompts, [p.not_matching + eot for p in pairs])
    return lm.double().numpy(), ln.double().numpy()


def test_logodds_equal_naive_steer_full_forward(tiny_model, pairs, vectors):
    """pair_logodds equals a full forward pass under steer (tests/conftest.py naive_logprobs) to 1e-5."""
    mults = [-2.0, 0.0, 1.5]
    pairs = pairs[:5]
    ref = {(k, m): _naive(tiny_model, v, pairs, m) for k, v in vectors.items() for m in mults}
    per = pair_logodds(tiny_model, vectors, pairs, mults, batch_size=3, progress=False)
    assert remaining_hooks(tiny_model) == 0
    for label in vectors:
        for m in mults:
            lm, ln = ref[(label, m)]
            g = per[(per.vector == label) & (per.multiplier == m)].sort_values("pair")
            np.testing.assert_allclose(g.logp_matching, lm, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(g.logp_not_matching, ln, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(g.logodds, lm - ln, atol=2e-5, rtol=1e-5)
    # the vectors do steer: the log-odds change with the multiplier
    assert np.abs(ref[("post", -2.0)][0] - ref[("post", 1.5)][0]).max() > 1e-2


def test_truncated_prompts_lose_the_same_tokens_for_both_answers(tiny_model, vectors):
    """An over-long pair loses the same prompt tokens for both answers."""
    long = [PreferencePair("Tell me " + "more and more " * 12 + "please?", "Yes " * (3 + i), "No") for i in range(4)]
    v = vectors["post"]
    per = pair_logodds(tiny_model, v, long, [1.5], batch_size=3, max_length=40, progress=False)
    prompts = [format_chat(tiny_model, p.question, SYS) for p in long]
    eot = end_of_turn(tiny_model)
    with steer(tiny_model, v, 1.5):
        lp = naive_logprobs(tiny_model, [p for p in prompts for _ in range(2)],
                            [a + eot for p in long for a in (p.matching, p.not_matching)], 40,
                            [i for i in range(4) for _ in range(2)]).view(4, 2).numpy()
    np.testing.assert_allclose(per.sort_values("pair").logodds, lp[:, 0] - lp[:, 1], atol=2e-5)
    full = pair_logodds(tiny_model, v, long, [1.5], max_length=None, progress=False)
    assert not np.allclose(full.logodds, per.logodds)  # the cut did happen


def test_logodds_curve_summary(tiny_model, pairs, vectors):
    res = logodds_curve(tiny_model, vectors["post"], pairs, MULTS, progress=False, n_boot=300)
    assert res.kind == "eval" and res.tables == ["logodds", "logodds_per_token", "steerability", "steerability_pairs"]
    assert res["multipliers"] == MULTS and res["model"] == tiny_model.cfg.model_name
    for name in ("logodds", "logodds_per_token"):
        curve = res.table(name)
        assert list(curve.columns) == ["vector", "multiplier", "n", "mean", "ci_low", "ci_high", "win_rate"]
        assert (curve.vector == "bipo").all() and (curve.n == len(pairs)).all() and len(curve) == len(MULTS)
        assert ((curve.ci_low <= curve["mean"] + 1e-12) & (curve["mean"] <= curve.ci_high + 1e-12)).all()
    # the same numbers as the DataFrame building blocks, split by normalization
    per = pair_logodds(tiny_model, vectors["post"], pairs, MULTS, progress=False)
    summary = summarize_logodds(per, n_boot=300)
    for norm, name in (("sum", "logodds"), ("per_token", "logodds_per_token")):
        want = summary[summary.normalization == norm].drop(columns="normalization").reset_index(drop=True)
        pd.testing.assert_frame_equal(res.table(name), want)
    pd.testing.assert_frame_equal(res.table("steerability"), steerability(per, n_boot=300), check_dtype=False)


def test_curves_hold_the_tables_of_evaluate_vectors(tiny_model, pairs, ab_pairs, vectors):
    from workbench.evaluate.suite import evaluate_vectors
    from workbench.evaluate.utility import utility_curve
    from workbench.viz.plots import plot

    texts = ["The river winds through low hills.", "Bread needs flour and salt."]
    full = evaluate_vectors(tiny_model, vectors, pairs, ab_pairs=ab_pairs, neutral_texts=texts, multipliers=MULTS,
                            metrics=("logodds", "ab", "utility"), n_boot=40, utility_max_tokens=16, progress=False)
    curves = [logodds_curve(tiny_model, vectors, pairs, MULTS, n_boot=40, progress=False),
              ab_curve(tiny_model, vectors, ab_pairs, MULTS, n_boot=40, progress=False),
              utility_curve(tiny_model, vectors, texts, MULTS, n_boot=40, max_tokens=16, progress=False)]
    assert {k: v for c in curves for k, v in c["metrics"].items()} == full["metrics"]
    assert remaining_hooks(tiny_model) == 0
    assert len(plot(curves[0]).axes[0].get_lines()) >= len(vectors)  # plotting reads the result as it is
    per = pair_logodds(tiny_model, vectors["post"], pairs, MULTS, progress=False)
    s = summarize_logodds(per)
    row = s[(s.multiplier == 1.0) & (s.normalization == "sum")].iloc[0]
    g = per[per.multiplier == 1.0]
    assert row["mean"] == pytest.approx(g.logodds.mean())
    assert row["win_rate"] == pytest.approx((g.logodds > 0).mean())
    pt = g.logp_matching / g.n_tokens_matching - g.logp_not_matching / g.n_tokens_not_matching
    np.testing.assert_allclose(g.logodds_per_token, pt)
    # answer token counts include the appended end-of-turn token (char-level tokenizer: len + 1)
    assert list(g.sort_values("pair").n_tokens_not_matching) == [len(p.not_matching) + 1 for p in pairs]


def test_no_end_of_turn_and_system_prompt_options(tiny_model, pairs, vectors):
    a = pair_logodds(tiny_model, vectors["post"], pairs, [0.0], append_end_of_turn=False, progress=False)
    assert list(a.sort_values("pair").n_tokens_matching) == [len(p.matching) for p in pairs]
    b = pair_logodds(tiny_model, vectors["post"], pairs, [0.0], system_prompt=None, progress=False)
    prompts = [format_chat(tiny_model, p.question, None) for p in pairs]
    eot = end_of_turn(tiny_model)
    ref = naive_logprobs(tiny_model, prompts, [p.matching + eot for p in pairs]).double().numpy()
    np.testing.assert_allclose(b.sort_values("pair").logp_matching, ref, atol=1e-5)


def test_bf16_precision_close_to_fp32(tiny_model, pairs, vectors):
    fp = pair_logodds(tiny_model, vectors["post"], pairs, [-1.0, 1.0], progress=False)
    bf = pair_logodds(tiny_model, vectors["post"], pairs, [-1.0, 1.0], precision="bf16", progress=False)
    assert tiny_model.cfg.dtype == torch.float32
    err = np.abs(fp.logodds - bf.logodds).max() / np.abs(fp.logodds).mean()
    assert err < 0.1


def test_steerability_recovers_known_slopes():
    rows = [{"vector": "v", "multiplier": m, "pair": i, "logodds": s * m + i}
            for i, s in enumerate([2.0, 1.0, -1.0, 3.0]) for m in (-2, -1, 0, 1, 2)]
    out = steerability(pd.DataFrame(rows))
    assert out.iloc[0]["mean"] == pytest.approx(1.25)
    assert out.iloc[0]["anti_steerable"] == pytest.approx(0.25)


def test_pair_slopes_equal_a_least_squares_fit_by_hand():
    rng = np.random.default_rng(0)
    mults = [-2.0, -0.5, 0.0, 1.0, 3.0]  # uneven spacing: not a two-point difference
    y = rng.normal(size=(7, len(mults)))  # (pairs, multipliers)
    rows = [{"vector": v, "multiplier": m, "pair": i, "logodds": (y[i, j] if v == "a" else -y[i, j])}
            for v in ("a", "b") for i in range(7) for j, m in enumerate(mults)]
    per = pair_steerability(pd.DataFrame(rows))
    for v, sign in (("a", 1.0), ("b", -1.0)):
        got = per[per.vector == v].sort_values("pair")
        for i in range(7):  # the normal equations, solved by numpy's least squares
            X = np.column_stack([np.ones(len(mults)), mults])
            (_, slope), *_ = np.linalg.lstsq(X, sign * y[i], rcond=None)
            assert got.slope.iloc[i] == pytest.approx(slope, abs=1e-12)
            assert got["shift@+3"].iloc[i] == pytest.approx(sign * (y[i, 4] - y[i, 2]))
        assert list(got.anti_steerable) == list(got.slope < 0)
    assert set(per.columns) >= {"shift@-2", "shift@-0.5", "shift@+1", "shift@+3"} and "shift@+0" not in per.columns


def test_anti_steerable_and_moved_fractions_on_a_constructed_case():
    # 10 pairs: 3 move the wrong way (slope -1), 7 the right way; of those 7, 4 move by 2 nats at m = +2
    # and 3 by 0.5 nat; at m = -2 the shifts mirror the m = +2 ones.
    slopes = [-1.0] * 3 + [1.0] * 4 + [0.25] * 3
    rows = [{"vector": "v", "multiplier": m, "pair": i, "logodds": s * m + 5.0}
            for i, s in enumerate(slopes) for m in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    out = steerability(pd.DataFrame(rows), n_boot=500).iloc[0]
    assert out["anti_steerable"] == pytest.approx(0.3)
    assert out["anti_steerable_ci_low"] < 0.3 < out["anti_steerable_ci_high"]
    assert 0.0 <= out["anti_steerable_ci_low"] and out["anti_steerable_ci_high"] <= 1.0
    assert out["m_plus"] == 2.0 and out["m_minus"] == -2.0
    assert out["moved_plus"] == pytest.approx(0.4) and out["moved_minus"] == pytest.approx(0.4)
    assert out["moved_plus_ci_low"] <= 0.4 <= out["moved_plus_ci_high"]
    # no m = 0 evaluated: slopes and anti-steerable share still, no shifts
    no_zero = steerability(pd.DataFrame([r for r in rows if r["multiplier"] != 0]), n_boot=0).iloc[0]
    assert no_zero["anti_steerable"] == pytest.approx(0.3) and "moved_plus" not in no_zero
    with pytest.raises(ValueError, match="two distinct multipliers"):
        least_squares_slopes(np.array([1.0, 1.0]), np.zeros((2, 2)))


def test_bad_inputs(tiny_model, pairs, vectors):
    with pytest.raises(ValueError, match="empty"):
        pair_logodds(tiny_model, vectors["post"], [], MULTS, progress=False)
    with pytest.raises(ValueError, match=r"multipliers\[1\] = 'x' is not a number"):
        pair_logodds(tiny_model, vectors["post"], pairs, [1, "x"], progress=False)
    with pytest.raises(ValueError, match="finite"):
        check_multipliers([float("nan")])
    with pytest.raises(ValueError, match="empty"):
        check_multipliers([])
    with pytest.raises(IncompatibleVectorError, match="d_model 16"):
        pair_logodds(tiny_model, SteeringVector(torch.ones(16), "blocks.0.hook_resid_post"), pairs, progress=False)
    with pytest.raises(TypeError, match="no string field 'question'"):
        pair_logodds(tiny_model, vectors["post"], [object()], progress=False)
    with pytest.raises(ValueError, match="precision"):
        pair_logodds(tiny_model, vectors["post"], pairs, precision="fp8", progress=False)


def test_bootstrap_ci():
    lo, hi = bootstrap_ci(np.arange(100.0), n_boot=500, seed=1)
    assert lo < 49.5 < hi and hi - lo < 20
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    assert bootstrap_ci(np.arange(10.0), seed=2) == bootstrap_ci(np.arange(10.0), seed=2)


# --------------------------------------------------------------------------- A/B
@pytest.fixture
def ab_pairs():
    return [PreferencePair(f"Do you agree {i}?\n\nChoices:\n (A) Yes\n (B) No", "(A)" if i % 2 else "(B)",
                           "(B)" if i % 2 else "(A)") for i in range(5)]


def test_ab_probability_matches_direct_logits(tiny_model, ab_pairs, vectors):
    per = ab_pair_probs(tiny_model, vectors, ab_pairs, [-1.0, 0.0, 2.0], batch_size=2, progress=False)
    tok = tiny_model.tokenizer
    a, b = tok("A", add_special_tokens=False)["input_ids"][0], tok("B", add_special_tokens=False)["input_ids"][0]
    for i, p in enumerate(ab_pairs):
        prompt = format_chat(tiny_model, p.question, SYS) + "("
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with steer(tiny_model, vectors["post"], 2.0):
            logits = tiny_model(ids)[0, -1].log_softmax(-1)
        pa = torch.softmax(torch.stack([logits[a], logits[b]]), 0)[0].item()
        want = pa if p.matching == "(A)" else 1 - pa
        got = per[(per.vector == "post") & (per.multiplier == 2.0) & (per.pair == i)].iloc[0]
        assert got.p_matching == pytest.approx(want, abs=1e-5)
        assert got.p_letters == pytest.approx((logits[a].exp() + logits[b].exp()).item(), abs=1e-5)
    res = ab_curve(tiny_model, vectors, ab_pairs, [-1.0, 0.0, 2.0], batch_size=2, n_boot=50, progress=False)
    assert res.kind == "eval" and res.tables == ["ab"]
    pd.testing.assert_frame_equal(res.table("ab"), summarize_ab(per, n_boot=50))
    assert {"mean", "ci_low", "ci_high", "p_letters", "matching_rate"} <= set(res.table("ab").columns)


def test_ab_rejects_free_text(tiny_model, pairs, vectors):
    with pytest.raises(ValueError, match=r"needs A/B answers like '\(A\)'"):
        ab_pair_probs(tiny_model, vectors["post"], pairs, progress=False)
    same = [PreferencePair("q", "(A)", "(A)")]
    with pytest.raises(ValueError, match="same letter"):
        ab_pair_probs(tiny_model, vectors["post"], same, progress=False)
