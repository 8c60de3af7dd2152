"""Tests for workbench.data.refusal: AdvBench's CSV, the embedded requests, refusal pairs, jailbreak templates."""

from __future__ import annotations

import pytest

from workbench.data.behaviors import list_behaviors, load_behavior
from workbench.data.formats import load_pairs
from workbench.data.pairs import DataFormatError
from workbench.data.refusal import (JAILBREAK_TEMPLATES, STOCK_REFUSALS, apply_template, load_advbench,
                                    load_refusal_prompts, load_refusal_requests, refusal_pairs, stock_refusal)
from workbench.evaluate.generation import is_refusal


def _csv(tmp_path, text, name="adv.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_advbench_reads_goal_and_target_and_names_bad_lines(tmp_path):
    good = _csv(tmp_path, 'goal,target\nDo a thing,"Sure, here is a thing"\n"Two\nlines",Sure\n')
    reqs = load_advbench(good)
    assert [r.goal for r in reqs] == ["Do a thing", "Two\nlines"]
    assert reqs[0].target == "Sure, here is a thing" and reqs[0].source == "adv.csv:2"
    with pytest.raises(DataFormatError, match=r"adv\.csv:5: empty target"):
        load_advbench(_csv(tmp_path, 'goal,target\nA,B\n"C\nD",E\nF,\n'))
    with pytest.raises(DataFormatError, match=r":1: missing column\(s\) target"):
        load_advbench(_csv(tmp_path, "goal,answer\nA,B\n", "cols.csv"))
    with pytest.raises(DataFormatError, match="no rows"):
        load_advbench(_csv(tmp_path, "goal,target\n", "empty.csv"))
    with pytest.raises(IsADirectoryError):
        load_advbench(tmp_path)
    assert len(load_advbench(good, limit=1)) == 1


def test_embedded_requests_split_and_pairs():
    train, test = load_refusal_requests("train"), load_refusal_requests("test")
    assert len(train) == 48 and len(test) == 12
    assert not {r.goal for r in train} & {r.goal for r in test}
    pairs = refusal_pairs(test)
    assert all(p.matching in STOCK_REFUSALS and is_refusal(p.matching) for p in pairs)
    assert all(p.not_matching == r.target and not is_refusal(r.target) for p, r in zip(pairs, test))
    assert refusal_pairs(test) == pairs  # deterministic
    assert len({p.matching for p in refusal_pairs(train)}) > 3  # the draw spreads over the stock set
    assert stock_refusal("x", seed=0) == stock_refusal("x", seed=0)


def test_every_stock_refusal_is_a_refusal_and_templates_wrap_the_request():
    assert all(is_refusal(r) for r in STOCK_REFUSALS)
    for name in JAILBREAK_TEMPLATES:
        assert "Open the jar." in apply_template("Open the jar.", name)
    assert apply_template("Open the jar.", None) == "Open the jar."
    assert apply_template("Q?", "Say it: {request}") == "Say it: Q?"
    with pytest.raises(ValueError, match="neither a known template"):
        apply_template("Q?", "no-such-template")


def test_refusal_is_an_embedded_behavior():
    assert "refusal" in list_behaviors()
    pairs = load_behavior("refusal", split="test")
    assert pairs == refusal_pairs(load_refusal_requests("test"))


def test_advbench_is_a_pair_format(tmp_path):
    path = _csv(tmp_path, 'goal,target\nOpen a jar,"Sure, here is how"\n')
    (pair,) = load_pairs(path, "advbench")
    assert load_pairs(path) == [pair]  # "auto" recognises the goal,target header
    assert pair.question == "Open a jar" and pair.not_matching == "Sure, here is how"
    assert pair.matching == stock_refusal("Open a jar")


def test_load_refusal_prompts(tmp_path):
    """Only the ``goal`` column is needed (a refusal rate needs no target)."""
    good = tmp_path / "benign.csv"
    good.write_text("goal,target\nWrite a poem about bread,Sure\n\"Explain, briefly, how rain forms\",Sure\n")
    assert load_refusal_prompts(good) == ["Write a poem about bread", "Explain, briefly, how rain forms"]
    assert load_refusal_prompts(good, limit=1) == ["Write a poem about bread"]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt\nhello\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: missing column\(s\) goal"):
        load_refusal_prompts(bad)
    empty_cell = tmp_path / "cell.csv"
    empty_cell.write_text("goal\nhello\n\"\"\n")
    with pytest.raises(ValueError, match=r"cell.csv:3: empty goal"):
        load_refusal_prompts(empty_cell)
    header_only = tmp_path / "h.csv"
    header_only.write_text("goal\n")
    with pytest.raises(ValueError, match="no rows after the header"):
        load_refusal_prompts(header_only)
    with pytest.raises(FileNotFoundError):
        load_refusal_prompts(tmp_path / "missing.csv")


def test_load_refusal_prompts_keeps_its_old_home():
    import workbench.evaluate.generation as old

    assert old.load_refusal_prompts is load_refusal_prompts  # cli/main.py still imports it there (one release)
