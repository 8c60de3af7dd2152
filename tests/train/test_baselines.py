"""Mean-difference baselines: exact agreement with hand computations from ``run_with_cache``."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.train.baselines import actadd, caa, extract_activations, first_principal_component, mean_difference_vectors, pca
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
from workbench.data.pairs import PreferencePair, fingerprint
from workbench.core.prompts import format_chat
from workbench.engine.items import tokenize_completions
from workbench.engine.steering import remaining_hooks
from workbench.core.vector import SteeringVector

PAIRS = [
    PreferencePair("Would you take control of the city?", "Yes, gladly.", "No, thanks."),
    PreferencePair("Do you want more money?", "I want it all.", "No."),
    PreferencePair("Lead the team?", "Sure", "I would rather let someone else lead it."),
]
AB_PAIRS = [
    PreferencePair("Pick one:\n (A) power\n (B) modesty", "(A)", " (B) modesty"),
    PreferencePair("Choose:\n (A) rule\n (B) serve", " (A)", "(B)"),
]


def _hand_acts(model, pairs, layer, hook, position, system_prompt=DEFAULT_SYSTEM_PROMPT):
    """Each sequence alone (no padding) through ``run_with_cache``; the position picked by hand."""
    name = f"blocks.{layer}.hook_{hook}"
    out = []
    for answer_of in (lambda p: p.matching, lambda p: p.not_matching):
        rows = []
        for p in pairs:
            answer = answer_of(p)
            b = tokenize_completions(model, [format_chat(model, p.question, system_prompt)], [answer])
            _, cache = model.run_with_cache(b.tokens, attention_mask=b.attention_mask, names_filter=[name])
            act = cache[name][0]  # (pos, d_model)
            pl, n = int(b.prompt_lengths[0]), int(b.lengths[0])
            if position == "answer_mean":
                rows.append(act[pl:n].mean(0))
            elif position == "last":
                rows.append(act[n - 1])
            elif position == "prompt_last":
                rows.append(act[pl - 1])
            else:  # char-level tokenizer: the letter is 1 token after "(" (2 after " (")
                rows.append(act[pl + answer.index("(") + 1])
        out.append(torch.stack(rows))
    return out


@pytest.mark.parametrize("position", ["answer_mean", "last", "ab_letter", "prompt_last"])
def test_extract_matches_run_with_cache(tiny_model, position):
    pairs = AB_PAIRS if position == "ab_letter" else PAIRS
    acts = extract_activations(tiny_model, pairs, [1], position=position, batch_size=2, progress=False)
    pos, neg = _hand_acts(tiny_model, pairs, 1, "resid_post", position)
    torch.testing.assert_close(acts[1][0], pos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts[1][1], neg, atol=1e-5, rtol=1e-5)
    assert remaining_hooks(tiny_model) == 0


@pytest.mark.parametrize("position", ["answer_mean", "last", "ab_letter"])
def test_caa_equals_hand_mean_difference(tiny_model, position):
    pairs = AB_PAIRS if position == "ab_letter" else PAIRS
    v = caa(tiny_model, pairs, layer=2, position=position, batch_size=2, progress=False)
    pos, neg = _hand_acts(tiny_model, pairs, 2, "resid_post", position)
    torch.testing.assert_close(v.vector, (pos - neg).mean(0), atol=1e-5, rtol=1e-5)
    assert v.hook_name == "blocks.2.hook_resid_post" and v.layer == 2
    assert v.method == "caa" and v.model_name == tiny_model.cfg.model_name
    assert v.data_fingerprint == fingerprint(pairs)
    assert v.config["position"] == position and v.config["n"] == len(pairs)
    assert v.config["system_prompt"] == DEFAULT_SYSTEM_PROMPT
    assert v.metadata["n_pairs"] == len(pairs) and v.metadata["position"] == position
    assert v.vector.dtype == torch.float32


def test_system_prompt_none_and_resid_pre(tiny_model):
    v = caa(tiny_model, PAIRS, layer=0, hook="resid_pre", system_prompt=None, progress=False)
    pos, neg = _hand_acts(tiny_model, PAIRS, 0, "resid_pre", "answer_mean", system_prompt=None)
    torch.testing.assert_close(v.vector, (pos - neg).mean(0), atol=1e-5, rtol=1e-5)
    assert v.config["system_prompt"] is None


@pytest.mark.parametrize("hook,position", [("resid_post", "answer_mean"), ("resid_pre", "last"),
                                           ("mlp_out", "answer_mean")])
def test_one_pass_equals_per_layer_runs(tiny_model, hook, position):
    multi = mean_difference_vectors(tiny_model, PAIRS, torch.tensor([2, 0, 1, 2]), hook=hook, position=position,
                                    batch_size=2, progress=False)
    assert sorted(multi) == [0, 1, 2] and all(type(k) is int for k in multi)
    for layer in range(3):
        single = caa(tiny_model, PAIRS, layer, hook=hook, position=position, batch_size=2, progress=False)
        assert torch.equal(multi[layer].vector, single.vector), layer
        assert multi[layer].hook_name == single.hook_name
    assert remaining_hooks(tiny_model) == 0


def test_batch_size_does_not_change_result(tiny_model):
    a = extract_activations(tiny_model, PAIRS, [1], batch_size=1, progress=False)[1]
    b = extract_activations(tiny_model, PAIRS, [1], batch_size=8, progress=False)[1]
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)


def test_end_of_turn_appended_is_read_by_last(tiny_model):
    acts = extract_activations(tiny_model, PAIRS[:1], [0], position="last", append_end_of_turn=True,
                               progress=False)[0]
    p = PAIRS[0]
    b = tokenize_completions(tiny_model, [format_chat(tiny_model, p.question, DEFAULT_SYSTEM_PROMPT)],
                             [p.matching + "<|im_end|>"])
    _, cache = tiny_model.run_with_cache(b.tokens, attention_mask=b.attention_mask,
                                         names_filter=["blocks.0.hook_resid_post"])
    torch.testing.assert_close(acts[0][0], cache["blocks.0.hook_resid_post"][0, -1], atol=1e-5, rtol=1e-5)


def test_vectors_round_trip(tiny_model, tmp_path):
    v = caa(tiny_model, PAIRS, layer=1, progress=False)
    w = SteeringVector.load(v.save(tmp_path / "caa"))
    assert torch.equal(w.vector, v.vector) and w.config == v.config and w.metadata == v.metadata


# --------------------------------------------------------------------------- PCA
def test_first_principal_component_recovers_direction():
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    coef = 3 + torch.randn(50, generator=g)  # all positive: the mean points along u
    diffs = coef[:, None] * u + 0.05 * torch.randn(50, 16, generator=g)
    d, share = first_principal_component(diffs)
    assert abs(float(d.float() @ u)) > 0.999 and 0.9 < share <= 1.0
    # centred: the mean (3u) is removed; the spread of coef is still along u
    dc, _ = first_principal_component(diffs, center=True)
    assert abs(float(dc.float() @ u)) > 0.99


@pytest.mark.parametrize("center", [False, True])
def test_pca_sign_norm_and_direction(tiny_model, center):
    v = pca(tiny_model, PAIRS, layer=1, center=center, batch_size=2, progress=False)
    pos, neg = _hand_acts(tiny_model, PAIRS, 1, "resid_post", "answer_mean")
    diffs = (pos - neg).double()
    mean = diffs.mean(0)
    x = diffs - mean if center else diffs
    top = torch.linalg.svd(x, full_matrices=False)[2][0]
    assert float(v.vector.double() @ mean) > 0  # sign: along the mean difference
    assert v.norm == pytest.approx(float(mean.norm()), rel=1e-5)  # scale: norm of the mean difference
    assert abs(v.cosine(top.float())) == pytest.approx(1.0, abs=1e-5)
    assert v.method == "pca" and v.config["center"] is center and v.metadata["center"] is center
    assert v.metadata["cosine_with_mean_difference"] == pytest.approx(v.cosine(mean.float()), abs=1e-5)
    assert v.data_fingerprint == fingerprint(PAIRS)


def test_pca_of_one_pair_is_the_difference(tiny_model):
    v = pca(tiny_model, PAIRS[:1], layer=2, progress=False)
    c = caa(tiny_model, PAIRS[:1], layer=2, progress=False)
    torch.testing.assert_close(v.vector, c.vector, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- ActAdd
def _hand_actadd(model, text, name):
    tokens = model.to_tokens(text)
    _, cache = model.run_with_cache(tokens, attention_mask=torch.ones_like(tokens), names_filter=[name])
    return cache[name][0]


def test_actadd_last_equals_hand_difference(tiny_model):
    v = actadd(tiny_model, "Love", "Hatred", layer=1)
    name = "blocks.1.hook_resid_pre"
    want = _hand_actadd(tiny_model, "Love", name)[-1] - _hand_actadd(tiny_model, "Hatred", name)[-1]
    torch.testing.assert_close(v.vector, want, atol=1e-5, rtol=1e-5)
    assert v.method == "actadd" and v.hook_name == name and v.config["positive"] == "Love"
    assert remaining_hooks(tiny_model) == 0


@pytest.mark.parametrize("position", ["sum", "mean"])
def test_actadd_padded_sum_and_mean(tiny_model, position):
    v = actadd(tiny_model, "Love", "Hatred", layer=2, hook="resid_post", position=position)
    name = "blocks.2.hook_resid_post"
    # "Love" padded on the right with two one-character space tokens
    diff = _hand_actadd(tiny_model, "Love  ", name) - _hand_actadd(tiny_model, "Hatred", name)
    want = diff.sum(0) if position == "sum" else diff.mean(0)
    torch.testing.assert_close(v.vector, want, atol=1e-5, rtol=1e-5)
    assert v.metadata["n_tokens"] == [6, 6]


# --------------------------------------------------------------------------- bad input
def test_bad_input_errors(tiny_model):
    with pytest.raises(ValueError, match="pairs is empty"):
        caa(tiny_model, [], layer=0)
    with pytest.raises(ValueError, match="unknown position rule 'middle'"):
        caa(tiny_model, PAIRS, layer=0, position="middle")
    with pytest.raises(ValueError, match=r"layer 3 is out of range .*3 layers: 0\.\.2"):
        caa(tiny_model, PAIRS, layer=3)
    with pytest.raises(ValueError, match="layer -1 is out of range"):
        mean_difference_vectors(tiny_model, PAIRS, [0, -1])
    with pytest.raises(ValueError, match="layers is empty"):
        extract_activations(tiny_model, PAIRS, [])
    with pytest.raises(ValueError, match="unknown hook point"):
        caa(tiny_model, PAIRS, layer=0, hook="resid_middle")
    with pytest.raises(ValueError, match="not a full hook name"):
        mean_difference_vectors(tiny_model, PAIRS, [0, 1], hook="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="layer must be an int, got 1.5"):
        caa(tiny_model, PAIRS, layer=1.5)
    with pytest.raises(ValueError, match=r"pairs\[0\]\.matching 'Yes, gladly\.' has no answer letter"):
        caa(tiny_model, PAIRS, layer=0, position="ab_letter", progress=False)
    with pytest.raises(ValueError, match="prompt_last.*difference is zero"):
        caa(tiny_model, PAIRS, layer=0, position="prompt_last")
    with pytest.raises(TypeError, match=r"pairs\[1\] has no string field 'question'"):
        caa(tiny_model, [PAIRS[0], ("q", "a", "b")], layer=0)
    with pytest.raises(ValueError, match="unknown ActAdd position"):
        actadd(tiny_model, "a", "b", layer=0, position="first")
    with pytest.raises(ValueError, match="pad_text 'ab' is 2 tokens"):
        actadd(tiny_model, "a", "bb", layer=0, position="sum", pad_text="ab")
    with pytest.raises(ValueError, match="negative must be a non-empty"):
        actadd(tiny_model, "a", "", layer=0)
    assert remaining_hooks(tiny_model) == 0


# --------------------------------------------------------------------------- embedded model
@pytest.mark.embedded
def test_embedded_multi_layer_caa(embedded_model):
    pairs = [PreferencePair("Would you like more influence over world events?", "Yes, I would.", "No."),
             PreferencePair("Should you be given control of the budget?", "Yes, give it to me.", "No, keep it."),
             PreferencePair("Pick one:\n (A) Take charge\n (B) Stay an assistant", "(A)", "(B)"),
             PreferencePair("Choose:\n (A) Decline the offer\n (B) Accept power", "(B)", "(A)")]
    vecs = mean_difference_vectors(embedded_model, pairs, [2, 6], batch_size=4, progress=False)
    single = caa(embedded_model, pairs, 6, batch_size=4, progress=False)
    assert torch.equal(vecs[6].vector, single.vector)
    assert vecs[6].d_model == 576 and torch.isfinite(vecs[6].vector).all() and vecs[6].norm > 0
    assert vecs[6].metadata["mean_activation_norm"] > vecs[6].norm
    letters = caa(embedded_model, pairs[2:], 6, position="ab_letter", progress=False)
    name = "blocks.6.hook_resid_post"
    want = []
    for p in pairs[2:]:
        rows = []
        for answer in (p.matching, p.not_matching):
            prompt = format_chat(embedded_model, p.question, DEFAULT_SYSTEM_PROMPT)
            b = tokenize_completions(embedded_model, [prompt], [answer])
            _, cache = embedded_model.run_with_cache(b.tokens, attention_mask=b.attention_mask,
                                                     names_filter=[name], stop_at_layer=7)
            rows.append(cache[name][0, int(b.prompt_lengths[0]) + 1])  # "(", "A", ")": the letter is 2nd
        want.append(rows[0] - rows[1])
    torch.testing.assert_close(letters.vector, torch.stack(want).mean(0), atol=1e-3, rtol=1e-4)
    assert remaining_hooks(embedded_model) == 0


def test_pca_takes_the_extraction_options_as_keywords(tiny_model):
    """pca has at most ten parameters; the extraction options go through to extract_activations."""
    import inspect

    assert len(inspect.signature(pca).parameters) <= 10
    v = pca(tiny_model, PAIRS, layer=1, batch_size=2, progress=False, system_prompt=None, max_length=64)
    assert v.config["system_prompt"] is None and v.method == "pca"
    with pytest.raises(TypeError, match="unexpected keyword"):
        pca(tiny_model, PAIRS, layer=1, batch_sise=2)


# --------------------------------------------------------------------------- bounded length and memory
LONG = [PreferencePair("Tell me " + "very " * 60 + "much?", "Yes, gladly.", "No.", source="long.jsonl:3"),
        PreferencePair("Short?", "Sure", "No, thanks.", source="long.jsonl:4")]


def test_prompts_are_cut_by_the_engines_rule(tiny_model):
    """A long question is cut from the left by the engine's rule (both answers of a pair alike); the
    default bound is the engine's (DEFAULT_MAX_LENGTH), which this question exceeds."""
    from workbench.engine.items import DEFAULT_MAX_LENGTH

    name = "blocks.1.hook_resid_post"
    acts = extract_activations(tiny_model, LONG, [1], max_length=40, batch_size=2, progress=False)
    for k, answer_of in enumerate((lambda p: p.matching, lambda p: p.not_matching)):
        for i, p in enumerate(LONG):
            prompt = format_chat(tiny_model, p.question, DEFAULT_SYSTEM_PROMPT)
            b = tokenize_completions(tiny_model, [prompt] * 2, [p.matching, p.not_matching], max_length=40,
                                     groups=[0, 0])
            row = b.select([k])
            _, cache = tiny_model.run_with_cache(row.tokens, attention_mask=row.attention_mask, names_filter=[name])
            pl, n = int(row.prompt_lengths[0]), int(row.lengths[0])
            assert n <= 40
            torch.testing.assert_close(acts[1][k][i], cache[name][0, pl:n].mean(0), atol=1e-5, rtol=1e-5)
    n_long = len(tokenize_completions(tiny_model, [format_chat(tiny_model, LONG[0].question, DEFAULT_SYSTEM_PROMPT)],
                                      ["No."]).tokens[0])
    assert n_long > DEFAULT_MAX_LENGTH  # so the default cuts it:
    default = caa(tiny_model, LONG, layer=1, progress=False)
    assert torch.equal(default.vector, caa(tiny_model, LONG, layer=1, max_length=DEFAULT_MAX_LENGTH,
                                           progress=False).vector)
    assert not torch.allclose(default.vector, caa(tiny_model, LONG, layer=1, max_length=None, progress=False).vector)
    assert default.config["max_length"] == DEFAULT_MAX_LENGTH


def test_answer_too_long_names_the_pair(tiny_model):
    from workbench.engine.items import AnswerTooLongError

    pairs = [LONG[1], PreferencePair("Q?", "fine", "x" * 50, source="data.jsonl:9")]
    with pytest.raises(AnswerTooLongError, match=r"^data.jsonl:9: the not_matching answer has \d+ tokens, "
                                                 r"more than max_length=30 \(answers are never cut\)$"):
        caa(tiny_model, pairs, layer=1, max_length=30, progress=False)
    with pytest.raises(ValueError, match="max_length=0"):
        caa(tiny_model, pairs, layer=1, max_length=0, progress=False)


def test_memory_estimate_refuses_before_any_forward_pass(tiny_model, monkeypatch):
    import workbench.engine.items as items

    calls = []
    monkeypatch.setattr(items, "available_memory", lambda device=None: 10_000)  # bytes
    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: calls.append(1))]):
        with pytest.raises(items.InputTooLargeError, match=r"^long.jsonl:3: a forward pass over 4 sequence\(s\) of "
                                                           r"\d+ tokens needs about [\d.]+ GiB .*more than the 0.0 GiB "
                                                           r"available; give max_length= \(the engine's default is "
                                                           r"256\) or batch_size=2$"):
            caa(tiny_model, LONG, layer=1, max_length=None, batch_size=2, progress=False)
        with pytest.raises(items.InputTooLargeError, match="^positive: "):
            actadd(tiny_model, "Love " * 40, "Hate", layer=1, max_length=None)
    assert calls == []  # refused before the work
    assert remaining_hooks(tiny_model) == 0
    monkeypatch.setattr(items, "available_memory", lambda device=None: 2**40)
    assert caa(tiny_model, LONG, layer=1, max_length=None, progress=False).norm > 0


def test_actadd_keeps_the_last_max_length_tokens(tiny_model):
    name = "blocks.1.hook_resid_pre"
    text = "Love " * 20
    v = actadd(tiny_model, text, "Hatred", layer=1, max_length=6)
    tokens = tiny_model.to_tokens(text)[:, -6:]
    _, cache = tiny_model.run_with_cache(tokens, attention_mask=torch.ones_like(tokens), names_filter=[name])
    want = cache[name][0, -1] - _hand_actadd(tiny_model, "Hatred", name)[-1]
    torch.testing.assert_close(v.vector, want, atol=1e-5, rtol=1e-5)
    assert v.config["max_length"] == 6 and v.metadata["n_tokens"][0] == 6
    assert not torch.allclose(v.vector, actadd(tiny_model, text, "Hatred", layer=1, max_length=None).vector)


# --------------------------------------------------------------------------- the coherence predictor
def test_difference_coherence_of_constructed_differences():
    from workbench.train.baselines import difference_coherence
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])
    assert difference_coherence(same)["coherence"] == pytest.approx(1.0)
    assert difference_coherence(same)["coherence_std"] == pytest.approx(0.0, abs=1e-12)
    # two orthogonal unit differences: the mean is at 45 degrees to each
    ortho = difference_coherence(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert ortho["coherence"] == pytest.approx(2 ** -0.5)
    # one pair against the others: cosines 1, 1, -1 to the mean (1/3, 0)
    mixed = difference_coherence(torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]))
    assert mixed["coherence"] == pytest.approx(1 / 3)
    assert math.isnan(difference_coherence(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))["coherence"])  # zero mean


def test_caa_and_pca_record_the_coherence_of_their_differences(tiny_model):
    from workbench.train.baselines import pair_coherence
    pos, neg = _hand_acts(tiny_model, PAIRS, 1, "resid_post", "answer_mean")
    d = (pos - neg).double()
    mean = d.mean(0)
    want = float(torch.nn.functional.cosine_similarity(d, mean[None], dim=1).mean())
    v = caa(tiny_model, PAIRS, layer=1, batch_size=2, progress=False)
    assert v.metadata["coherence"] == pytest.approx(want, abs=1e-5)
    assert pca(tiny_model, PAIRS, layer=1, progress=False).metadata["coherence"] == pytest.approx(want, abs=1e-5)
    got = pair_coherence(tiny_model, PAIRS, "blocks.1.hook_resid_post", progress=False)  # what BiPO's trainer calls
    assert got["coherence"] == pytest.approx(want, abs=1e-5) and got["coherence_position"] == "answer_mean"
    assert remaining_hooks(tiny_model) == 0
    with pytest.raises(ValueError, match="block hook name"):
        pair_coherence(tiny_model, PAIRS, "resid_post")


@pytest.mark.tl3  # the bridge reads every hook point through its hooked forward
@pytest.mark.parametrize("hook", ["resid_pre", "resid_post"])
def test_streamed_residuals_equal_the_hooked_pass(tiny_model, monkeypatch, hook):
    """Residual-stream hook points are read from the engine's stream (packed blocks, each prompt once for
    both answers); the hooked forward pass gives the same activations at every position rule."""
    import workbench.train.baselines as baselines

    calls = []
    streamed = baselines._streamed_batch
    monkeypatch.setattr(baselines, "_streamed_batch", lambda *a: calls.append(1) or streamed(*a))
    for position, pairs in (("answer_mean", PAIRS), ("last", PAIRS), ("prompt_last", PAIRS), ("ab_letter", AB_PAIRS)):
        fast = extract_activations(tiny_model, pairs, [0, 2], hook=hook, position=position, batch_size=2,
                                   progress=False)
        assert calls, "the residual stream was not read from the engine"
        calls.clear()  # the hook point's full name (as pair_coherence passes it) reads the stream too
        again = extract_activations(tiny_model, pairs, [0, 2], hook="hook_" + hook, position=position,
                                    batch_size=2, progress=False)
        assert calls and torch.equal(again[2][0], fast[2][0])
        with monkeypatch.context() as m:
            m.setattr(baselines, "packable", lambda model: False)  # the hooked forward pass
            hooked = extract_activations(tiny_model, pairs, [0, 2], hook=hook, position=position, batch_size=2,
                                         progress=False)
        for layer in (0, 2):
            for k in (0, 1):
                torch.testing.assert_close(fast[layer][k], hooked[layer][k], atol=1e-4, rtol=1e-4)  # summation order
        calls.clear()
