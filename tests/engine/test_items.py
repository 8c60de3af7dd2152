"""Items and the engine's one truncation rule (workbench.engine.items)."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import make_tiny_model

from workbench.core.prompts import prompts_and_answers
from workbench.data.pairs import PreferencePair
from workbench.engine.items import AnswerTooLongError, Items, pad_id, tokenize_completions, tokenize_items

SYS = "You are a helpful, honest and concise assistant."
PAIRS = [PreferencePair(f"Question {i}: {'why ' * (3 * i)}?", f"Yes, {'a' * (i + 1)}.", f"No{'!' * i}")
         for i in range(5)]


@pytest.fixture
def bos_model():
    """A tiny model whose config prepends BOS (like Llama-2): the engine must add it exactly once."""
    m = make_tiny_model(seed=1)
    m.cfg.default_prepend_bos = True
    return m


def test_items_share_one_cut_per_prompt(tiny_model):
    prompts = ["x" * 40, "short"]
    items = tokenize_items(tiny_model, prompts, [["a", "bbbbbbbbbb"], ["c"]], max_length=30)
    assert len(items) == 2 and items.n_answers == 3
    assert len(items.prompts[0]) == 30 - 10  # cut for the longest answer, the same for both answers
    assert len(items.prompts[1]) == 5
    n = len(tiny_model.tokenizer("z" * 40, add_special_tokens=False)["input_ids"])
    with pytest.raises(AnswerTooLongError, match=f"^answer 1 has {n} tokens, more than max_length=30$") as err:
        tokenize_items(tiny_model, ["p", "q"], [["a"], ["z" * 40]], max_length=30)
    assert (err.value.index, err.value.n_tokens, err.value.max_length) == (1, n, 30) and n > 30
    assert isinstance(err.value, ValueError)  # callers that catch ValueError keep working
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.index, again.n_tokens, again.max_length, str(again)) == (1, n, 30, str(err.value))
    with pytest.raises(ValueError, match="at least one answer"):
        tokenize_items(tiny_model, ["p"], [[]])


def test_bos_is_prepended_once(bos_model):
    bos = bos_model.tokenizer.bos_token_id
    items = tokenize_items(bos_model, ["hi", bos_model.tokenizer.bos_token + "hi"], [["a"], ["a"]])
    assert items.prompts[0].tolist() == items.prompts[1].tolist() and items.prompts[0][0] == bos
    batch = tokenize_completions(bos_model, ["hi"], ["a"])
    assert batch.tokens[0, 0] == bos and batch.tokens[0, 1] != bos


def test_truncation_is_in_play():
    model = make_tiny_model()
    full = tokenize_items(model, *prompts_and_answers(model, PAIRS, SYS), max_length=None)
    cut = tokenize_items(model, *prompts_and_answers(model, PAIRS, SYS), max_length=70)
    assert any(len(a) > len(b) for a, b in zip(full.prompts, cut.prompts))


def test_completions_are_the_items_rows_right_padded(tiny_model):
    answers = ["yes", "no thanks"]
    batch = tokenize_completions(tiny_model, ["Say a word"] * 2, answers, max_length=14, groups=[0, 0])
    items = tokenize_items(tiny_model, ["Say a word"], [answers], max_length=14)  # the same rule
    assert len(items.prompts[0]) < len(tokenize_items(tiny_model, ["Say a word"], [answers]).prompts[0])  # cut
    for row, answer in enumerate(items.answers):
        n_p, n = int(batch.prompt_lengths[row]), int(batch.lengths[row])
        assert batch.tokens[row, :n_p].tolist() == items.prompts[0].tolist()
        assert batch.tokens[row, n_p:n].tolist() == answer.tolist()
        assert batch.answer_mask[row].sum() == len(answer) and batch.attention_mask[row].sum() == n
        assert (batch.tokens[row, n:] == pad_id(tiny_model)).all()
    sub = batch.select([1])
    assert sub.tokens.shape == (1, int(batch.lengths[1])) and len(sub) == 1


def test_items_from_ids_and_their_lengths():
    items = Items.from_ids([[1, 2, 3], [4]], [[[5], [6, 7]], [[8, 9, 10]]])
    assert len(items) == 2 and items.n_answers == 3 and items.answer_offsets.tolist() == [0, 2, 3]
    assert items.answer_lengths().tolist() == [1, 2, 3] and items.lengths().tolist() == [5, 4]
    with pytest.raises(ValueError, match="at least one token"):
        Items.from_ids([[1]], [[[]]])
    assert torch.equal(items.answers[1], torch.tensor([6, 7]))


def test_prompt_cut_is_the_one_rule():
    from workbench.engine.items import prompt_cut

    assert prompt_cut(10, 3, None) == 0 and prompt_cut(10, 3, 20) == 0
    assert prompt_cut(10, 3, 8) == 5 and prompt_cut(10, 0, 4) == 6  # a bare prompt keeps its last 4 tokens
    assert prompt_cut(2, 9, 8) == 2  # never more than the prompt


def test_answer_too_long_can_name_its_source():
    err = AnswerTooLongError(3, 40, 30, where="data.jsonl:2: the matching answer")
    assert str(err) == "data.jsonl:2: the matching answer has 40 tokens, more than max_length=30 (answers are never cut)"
    again = pickle.loads(pickle.dumps(err))
    assert (again.index, again.where, str(again)) == (3, err.where, str(err))


def test_forward_memory_estimate_and_refusal(tiny_model):
    from workbench.engine.items import InputTooLargeError, available_memory, check_forward_memory, forward_bytes

    cfg = tiny_model.cfg
    want = 2 * (3 * cfg.n_heads * 100 * 100 + 100 * (6 * cfg.d_model + 3 * cfg.d_mlp)) * 4  # fp32
    assert forward_bytes(cfg, 2, 100) == want
    assert forward_bytes(cfg, 1, 2000) > 200 * forward_bytes(cfg, 1, 100)  # 20x the length: far more than 20x
    assert check_forward_memory(tiny_model, 2, 100, "x.jsonl:1", available=want) == want
    with pytest.raises(InputTooLargeError, match=r"^x.jsonl:1: a forward pass over 2 sequence\(s\) of 100 tokens "
                                                 r"needs about 0.0 GiB .* available; lower max_length$"):
        check_forward_memory(tiny_model, 2, 100, "x.jsonl:1", "lower max_length", available=want - 1)
    assert isinstance(InputTooLargeError("x"), ValueError)
    free = available_memory("cpu")
    assert free is None or free > 0
