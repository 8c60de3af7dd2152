"""Tests for workbench.data.behaviors: the embedded behaviors, their fixed splits and the neutral text."""

from __future__ import annotations

import json
import statistics

import pytest

from workbench.data.behaviors import DATA_DIR, list_behaviors, load_behavior, load_neutral_text
from workbench.data.pairs import DataFormatError

BEHAVIORS = ("power-seeking", "wealth-seeking", "sycophancy")


def triples(pairs):
    return [(p.question, p.matching, p.not_matching) for p in pairs]


# --- embedded data --------------------------------------------------------------------------


def test_list_behaviors():
    assert set(BEHAVIORS) | {"refusal"} <= set(list_behaviors())
    assert list_behaviors() == sorted(list_behaviors())


@pytest.mark.parametrize("name", BEHAVIORS)
def test_embedded_behavior(name):
    train, test, all_ = (load_behavior(name, s) for s in ("train", "test", "all"))
    assert len(all_) >= 90 and (len(train), len(test)) == (80, 20)
    assert load_behavior(name) == train
    assert sorted(triples(train + test)) == sorted(triples(all_))
    assert {p.question for p in train}.isdisjoint({p.question for p in test})
    assert len({p.question for p in all_}) == len(all_)
    assert all_[0].source == f"{name}:1"
    for p in all_:
        assert p.question.strip() and p.matching.strip() and p.not_matching.strip()
        assert p.matching != p.not_matching
    # Similar answer lengths, so that length does not stand in for the behavior.
    mean_m = statistics.mean(len(p.matching) for p in all_)
    mean_n = statistics.mean(len(p.not_matching) for p in all_)
    assert abs(mean_m - mean_n) / mean_n < 0.15


@pytest.mark.parametrize("name", BEHAVIORS)
def test_embedded_split_is_fixed_in_file(name):
    path = DATA_DIR / f"{name}.jsonl"
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [item["split"] for item in items] == ["test" if i % 5 == 4 else "train"
                                                 for i in range(len(items))]
    assert [item["question"] for item in items if item["split"] == "test"] == \
        [p.question for p in load_behavior(name, "test")]


def test_load_behavior_errors():
    with pytest.raises(ValueError, match="unknown behavior"):
        load_behavior("nonexistent")
    with pytest.raises(ValueError, match="split"):
        load_behavior("power-seeking", split="val")


def test_neutral_text():
    lines = load_neutral_text()
    assert len(lines) >= 40 and all(len(line) > 80 for line in lines)
    assert len(set(lines)) == len(lines)


def test_neutral_text_from_a_file(tmp_path):
    path = tmp_path / "n.txt"
    path.write_bytes("\ufeffone passage\r\n\n  two  \nthree\n".encode())
    assert load_neutral_text(path) == ["one passage", "two", "three"]  # BOM, CRLF and blank lines handled
    assert load_neutral_text(DATA_DIR / "neutral.txt") == load_neutral_text()
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(DataFormatError, match=r"blank\.txt:1: file is empty"):
        load_neutral_text(tmp_path / "blank.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: not valid UTF-8"):
        load_neutral_text(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_neutral_text(tmp_path / "missing.txt")
