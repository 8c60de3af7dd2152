"""The embedded instructions of the prompting baseline: every behavior, both directions, clear errors."""

from __future__ import annotations

import json

import pytest

from workbench.data.behaviors import list_behaviors
from workbench.data.instructions import DIRECTIONS, behavior_instructions, load_instructions


def test_every_embedded_and_public_behavior_has_both_directions():
    table = load_instructions()
    for name in list_behaviors() + ["hallucination"]:  # the embedded behaviors and BiPO's public ones
        assert set(table[name]) == set(DIRECTIONS)
        assert table[name]["elicit"] != table[name]["suppress"]
        assert all(len(t.split()) >= 5 for t in table[name].values())
    assert behavior_instructions("power-seeking") == table["power-seeking"]


def test_bad_files_and_names_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="no instructions; written for"):
        behavior_instructions("no-such-behavior")
    with pytest.raises(ValueError, match="no such instructions file"):
        load_instructions(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_instructions(bad)
    half = tmp_path / "half.json"
    half.write_text(json.dumps({"behaviors": {"x": {"elicit": "Do it."}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks a non-empty 'suppress'"):
        load_instructions(half)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"behaviors": {"x": {"elicit": " Do it. ", "suppress": "Do not."}}}), encoding="utf-8")
    assert behavior_instructions("x", good) == {"elicit": "Do it.", "suppress": "Do not."}
