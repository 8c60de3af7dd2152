"""Tests for workbench.data.pairs: the types, the edge checks, splits and fingerprints."""

from __future__ import annotations

import pickle

import pytest

from workbench.data.pairs import (DataFormatError, MCQuestion, PreferencePair, ab_letters, as_ab_pairs,
                                  check_ab_pairs, check_pairs, check_questions, fingerprint, is_ab_data,
                                  train_test_split)


def make_pairs(n: int, per_question: int = 1) -> list[PreferencePair]:
    return [PreferencePair(f"q{i // per_question}", f"yes {i}", f"no {i}") for i in range(n)]


def test_data_format_error_is_value_error_and_pickles():
    err = DataFormatError("a/b.csv", 7, "bad thing")
    assert isinstance(err, ValueError) and str(err) == "a/b.csv:7: bad thing"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.location == 7


# --- splits and fingerprints ----------------------------------------------------------------


def test_train_test_split_deterministic_disjoint_ordered():
    pairs = make_pairs(50)
    train, test = train_test_split(pairs, test_fraction=0.2, seed=0)
    assert (train, test) == train_test_split(pairs, test_fraction=0.2, seed=0)
    assert len(test) == 10 and len(train) == 40
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(pairs)
    assert train == [p for p in pairs if p in set(train)]  # original order kept
    assert train_test_split(pairs, seed=1)[1] != test
    assert train_test_split(pairs, test_fraction=0.0) == (pairs, [])


def test_train_test_split_groups_questions():
    pairs = make_pairs(30, per_question=3)  # 10 questions, 3 pairs each
    train, test = train_test_split(pairs, test_fraction=0.3, seed=4)
    assert len(test) == 9
    assert {p.question for p in train}.isdisjoint({p.question for p in test})
    _, test_flat = train_test_split(pairs, test_fraction=0.3, seed=4, by_question=False)
    assert len(test_flat) == 9


def test_train_test_split_edges():
    assert [len(s) for s in train_test_split(make_pairs(3), 0.01)] == [2, 1]
    assert [len(s) for s in train_test_split(make_pairs(3), 0.99)] == [1, 2]
    with pytest.raises(ValueError):
        train_test_split(make_pairs(3), 1.0)
    with pytest.raises(ValueError):
        train_test_split([], 0.2)


def test_fingerprint_stable_and_sensitive():
    pairs = [PreferencePair("q", "a", "b", source="x:1"), PreferencePair("q2", "c", "d")]
    fp = fingerprint(pairs)
    assert fp == "6c069c57f7b78b4f"  # frozen: changing the encoding changes saved metadata
    assert len(fp) == 16 and fp == fingerprint(list(pairs))
    assert fingerprint([PreferencePair("q", "a", "b", source="y:9"), pairs[1]]) == fp
    for changed in ([PreferencePair("q", "a", "b "), pairs[1]], [PreferencePair("q", "b", "a"), pairs[1]],
                    pairs[::-1], pairs[:1]):
        assert fingerprint(changed) != fp


def test_as_ab_pairs_balanced_and_reversible():
    pairs = [PreferencePair(f"Q{i}?", f"take {i}", f"leave {i}", source=f"f:{i}") for i in range(7)]
    ab = as_ab_pairs(pairs, seed=1)
    assert is_ab_data(ab) and len(ab) == 7
    assert sum(p.matching == "(A)" for p in ab) == 4  # ceil(7 / 2)
    for p, q, (m, n) in zip(pairs, ab, check_ab_pairs(ab)):
        choices = dict(line.strip().split(") ", 1) for line in q.question.split("Choices:\n")[1].splitlines())
        assert q.question.startswith(p.question) and q.source == p.source
        assert choices[f"({m}"] == p.matching and choices[f"({n}"] == p.not_matching
    assert as_ab_pairs(pairs, seed=1) == ab and as_ab_pairs(ab) == ab  # deterministic; A/B data unchanged


def test_check_pairs_returns_a_list_and_names_the_bad_pair():
    pairs = (PreferencePair("q", "a", "b"), PreferencePair("q2", "c", "d"))
    assert check_pairs(pairs) == list(pairs) and isinstance(check_pairs(iter(pairs)), list)
    with pytest.raises(ValueError, match="pairs is missing"):
        check_pairs(None)
    with pytest.raises(ValueError, match="eval_pairs is empty"):
        check_pairs([], "eval_pairs")
    with pytest.raises(TypeError, match=r"pairs\[1\] has no string field 'question'"):
        check_pairs([pairs[0], object()])
    with pytest.raises(ValueError, match=r"pairs\[0\] \(f:3\): not_matching is empty"):
        check_pairs([PreferencePair("q", "a", " ", source="f:3")])


def test_ab_letters_trusts_checked_pairs_and_check_ab_pairs_checks_them():
    ab = [PreferencePair("q", "(A)", "(B)"), PreferencePair("r", "B", "(a)")]
    assert ab_letters(ab) == check_ab_pairs(ab) == [("A", "B"), ("B", "A")]
    with pytest.raises(ValueError, match="same letter 'A'"):
        ab_letters([PreferencePair("q", "(A)", "A")])
    with pytest.raises(ValueError, match=r"pairs\[0\]: the 'ab' metric needs A/B answers"):
        check_ab_pairs([PreferencePair("q", "yes", "no")])
    with pytest.raises(ValueError, match="is empty"):
        check_ab_pairs([])


def test_check_questions():
    mc1 = [MCQuestion("Q?", ("a", "b", "c"), (0, 1, 0))]
    mc2 = [MCQuestion("Q?", ("a", "b", "c"), (1, 1, 0))]
    assert check_questions(mc1, "mc1") == mc1 and check_questions(None) == []
    assert check_questions(mc2, "mc2") == mc2
    with pytest.raises(ValueError, match=r"mc1\[0\] has 2 true choices"):
        check_questions(mc2, "mc1")
    with pytest.raises(TypeError, match=r"mc2\[0\] is not a workbench.data.MCQuestion"):
        check_questions(["not a question"], "mc2")
    with pytest.raises(ValueError, match="both 0 and 1"):
        MCQuestion("Q?", ("a", "b"), (1, 1))
