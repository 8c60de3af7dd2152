"""Tests for workbench.data.formats: every loader, its errors, round trips, format guessing, the real public files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workbench.data.formats import (PAIR_FORMATS, guess_format, load_ab_json, load_bipo_csv, load_pairs,
                                    load_truthfulqa, load_truthfulqa_mc, load_truthfulqa_questions,
                                    save_pairs_jsonl)
from workbench.data.pairs import DataFormatError, MCQuestion, PreferencePair, fingerprint, train_test_split

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not available")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def triples(pairs):
    return [(p.question, p.matching, p.not_matching) for p in pairs]


AB_ITEMS = [
    {"question": "Do you want more servers?\n\nChoices:\n (A) Yes, as many as possible\n (B) No, thanks",
     "answer_matching_behavior": " (A)", "answer_not_matching_behavior": [" (B)"]},
    {"question": "Pick one.\n\nChoices:\n (A) Stay small\n (B) Grow,\nthen grow more\n (C) Unsure",
     "answer_matching_behavior": "(B)", "answer_not_matching_behavior": "(A)"},
    {"question": "No header here?\n (A) Fine\n (B) Not fine",
     "answer_matching_behavior": "B", "answer_not_matching_behavior": "(A)"},
]

TQA_ITEMS = [
    {"question": "What colour is a clear daytime sky?",
     "mc1_targets": {"Blue.": 1, "Green.": 0, "Red.": 0},
     "mc2_targets": {"Blue.": 1, "Light blue.": 1, "Green.": 0, "Red.": 0}},
    {"question": "How many legs does a spider have?",
     "mc1_targets": {"Eight.": 1, "Six.": 0},
     "mc2_targets": {"Eight.": 1, "Six.": 0, "Ten.": 0}},
]


# --- round trips and loaders on our own fixtures --------------------------------------------


def test_jsonl_round_trip(tmp_path):
    pairs = [PreferencePair('Say "hi",\nplease', "Sure: \"hi\" ✓", "No.", source="x:1"),
             PreferencePair("Unicode: café, 日本", "(A)", "(B)")]
    path = save_pairs_jsonl(pairs, tmp_path / "sub" / "pairs.jsonl")
    for fmt in ("jsonl", "auto"):
        loaded = load_pairs(path, format=fmt)
        assert triples(loaded) == triples(pairs)
        assert loaded[0].source == f"{path}:1" and loaded[1].source == f"{path}:2"
    assert fingerprint(load_pairs(path)) == fingerprint(pairs)
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_save_refuses_empty(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        save_pairs_jsonl([], tmp_path / "x.jsonl")


def test_bipo_csv_quotes_newlines_extra_columns_bom(tmp_path):
    text = ('\ufeffid,question,matching,not_matching\n'
            '0,"Line one\nline two, with comma","He said ""yes""",No\n'
            '\n'
            '1,Plain question?,Take it,Leave it\n')
    pairs = load_bipo_csv(write(tmp_path, "t.csv", text))
    assert triples(pairs) == [("Line one\nline two, with comma", 'He said "yes"', "No"),
                              ("Plain question?", "Take it", "Leave it")]
    assert [p.source.rsplit(":", 1)[1] for p in pairs] == ["2", "5"]  # first line of each row


def test_ab_json_letters(tmp_path):
    path = write(tmp_path, "ab.json", json.dumps(AB_ITEMS, indent=2))
    pairs = load_ab_json(path)
    assert [(p.matching, p.not_matching) for p in pairs] == [("(A)", "(B)"), ("(B)", "(A)"),
                                                            ("(B)", "(A)")]
    assert pairs[0].question == AB_ITEMS[0]["question"]  # choices kept inline
    assert pairs[1].source == f"{path}:item 1"
    assert triples(load_pairs(path, "ab-json")) == triples(pairs)
    assert triples(load_pairs(path)) == triples(pairs)  # auto


def test_ab_json_text_mode(tmp_path):
    path = write(tmp_path, "ab.json", json.dumps(AB_ITEMS))
    pairs = load_pairs(path, "ab-text")
    assert triples(pairs) == [
        ("Do you want more servers?", "Yes, as many as possible", "No, thanks"),
        ("Pick one.", "Grow,\nthen grow more", "Stay small"),
        ("No header here?", "Not fine", "Fine"),
    ]


def test_ab_jsonl_by_extension_and_by_content(tmp_path):
    lines = "\n".join(json.dumps(item) for item in AB_ITEMS) + "\n"
    for name in ("ab.jsonl", "ab_lines.json"):
        path = write(tmp_path, name, lines)
        pairs = load_ab_json(path)
        assert len(pairs) == 3 and pairs[2].source == f"{path}:3"


def test_ab_text_mode_free_text_answers(tmp_path):
    item = {"question": "Is it good to be rich?", "answer_matching_behavior": " Yes",
            "answer_not_matching_behavior": " No"}
    path = write(tmp_path, "persona.jsonl", json.dumps(item))
    assert triples(load_ab_json(path, mode="text")) == [("Is it good to be rich?", "Yes", "No")]
    with pytest.raises(DataFormatError, match="not a choice letter"):
        load_ab_json(path, mode="letters")
    with pytest.raises(ValueError, match="mode"):
        load_ab_json(path, mode="words")


def test_truthfulqa(tmp_path):
    path = write(tmp_path, "mc_task.json", json.dumps(TQA_ITEMS))
    mc1 = load_truthfulqa_mc(path)
    assert triples(mc1) == [(TQA_ITEMS[0]["question"], "Blue.", "Green."),
                            (TQA_ITEMS[0]["question"], "Blue.", "Red."),
                            (TQA_ITEMS[1]["question"], "Eight.", "Six.")]
    assert len(load_truthfulqa_mc(path, targets="mc2")) == 2 * 2 + 1 * 2
    assert triples(load_pairs(path, "truthfulqa-mc1")) == triples(mc1)
    assert len(load_pairs(path, "truthfulqa-mc2")) == 6
    assert guess_format(path) == "truthfulqa-mc1"
    questions = load_truthfulqa_questions(path, targets="mc2")
    assert questions[0] == MCQuestion(TQA_ITEMS[0]["question"],
                                      ("Blue.", "Light blue.", "Green.", "Red."), (1, 1, 0, 0),
                                      f"{path}:item 0")
    assert load_truthfulqa_questions(path)[1].labels == (1, 0)
    with pytest.raises(ValueError):
        MCQuestion("q", ("a", "b"), (1,))


def test_truthfulqa_pairs_per_question_and_question_split(tmp_path):
    from workbench.data.pairs import split_questions, train_test_split

    path = write(tmp_path, "mc_task.json", json.dumps(TQA_ITEMS))
    # mc2 of item 0: true (Blue., Light blue.), false (Green., Red.); the diagonal first
    two = load_truthfulqa_mc(path, targets="mc2", per_question=2)
    assert triples(two)[:2] == [(TQA_ITEMS[0]["question"], "Blue.", "Green."),
                                (TQA_ITEMS[0]["question"], "Light blue.", "Red.")]
    assert len(two) == 2 + 2  # item 1 has 1 true x 2 false
    full = load_truthfulqa_mc(path, targets="mc2")
    assert sorted(triples(load_truthfulqa_mc(path, targets="mc2", per_question=99))) == sorted(triples(full))
    assert len(set(triples(full))) == len(full) == 6
    assert triples(load_pairs(path, "truthfulqa-mc2", per_question=1)) == [
        (TQA_ITEMS[0]["question"], "Blue.", "Green."), (TQA_ITEMS[1]["question"], "Eight.", "Six.")]
    with pytest.raises(ValueError, match="per_question"):
        load_truthfulqa_mc(path, per_question=0)
    # the question split holds out exactly the questions the pair split holds out, for any seed
    many = [dict(TQA_ITEMS[i % 2], question=f"Question {i}?") for i in range(20)]
    many_path = write(tmp_path, "many.json", json.dumps(many))
    for seed in range(4):
        train, test = train_test_split(load_truthfulqa_mc(many_path, "mc2"), 0.3, seed)
        q_train, q_test = split_questions(load_truthfulqa_questions(many_path, "mc2"), 0.3, seed)
        assert {q.question for q in q_test} == {p.question for p in test}
        assert {q.question for q in q_train} == {p.question for p in train}
        assert len(q_test) == 6 and not {q.question for q in q_test} & {p.question for p in train}


def test_guess_format_and_dispatch(tmp_path):
    csv_no_ext = write(tmp_path, "pairs.txt", "question,matching,not_matching\nq,a,b\n")
    assert guess_format(csv_no_ext) == "bipo-csv"
    assert guess_format(write(tmp_path, "x.csv", "a,b\n1,2\n")) == "bipo-csv"
    assert triples(load_pairs(csv_no_ext)) == [("q", "a", "b")]
    assert set(PAIR_FORMATS) == {"advbench", "bipo-csv", "ab-json", "ab-text", "truthfulqa-mc1",
                                 "truthfulqa-mc2", "jsonl"}
    with pytest.raises(ValueError, match="unknown format"):
        load_pairs(csv_no_ext, format="parquet")
    odd = write(tmp_path, "odd.jsonl", '{"prompt": "x"}\n')
    with pytest.raises(DataFormatError, match=r"odd\.jsonl:1: cannot guess"):
        load_pairs(odd)


def test_empty_question_allowed_on_request(tmp_path):
    path = write(tmp_path, "e.csv", "question,matching,not_matching\n,take,leave\n")
    with pytest.raises(DataFormatError, match=r"e\.csv:2: empty question"):
        load_pairs(path)
    assert triples(load_pairs(path, allow_empty_question=True)) == [("", "take", "leave")]


def test_duplicates_are_kept_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, "d.csv", "question,matching,not_matching\nq,a,b\nq,a,b\n")
    assert len(load_bipo_csv(path)) == 2
    assert "1 duplicate" in caplog.text


# --- malformed input ------------------------------------------------------------------------

HEADER = "question,matching,not_matching\n"
AB_OK = json.dumps(AB_ITEMS[0])
MALFORMED = [
    # (file name, content, format, location, message fragment)
    ("missing_col.csv", "question,matching\nq,a\n", "bipo-csv", 1, "missing column"),
    ("empty_answer.csv", HEADER + "q,a,b\nq2,,b\n", "bipo-csv", 3, "empty matching"),
    ("empty_not.csv", HEADER + "q,a,b\nq2,a,  \n", "bipo-csv", 3, "empty not_matching"),
    ("fields.csv", HEADER + "q,a,b\nq2,a\n", "bipo-csv", 3, "expected 3 fields"),
    ("same.csv", HEADER + "q,a,b\nq,a,b\nq3,same, same\n", "bipo-csv", 4, "identical"),
    ("quote.csv", HEADER + 'q,"a"x,b\n', "bipo-csv", 2, "malformed CSV"),
    ("header_only.csv", HEADER, "bipo-csv", 1, "no pairs"),
    ("empty.csv", "", "bipo-csv", 1, "empty"),
    ("blank.jsonl", "\n  \n", "jsonl", 1, "empty"),
    ("latin1.csv", (HEADER + "q,a,b\nq2,caf\xe9,b\n").encode("latin-1"), "bipo-csv", 3, "UTF-8"),
    ("bad_line.jsonl", '{"question": "q", "matching": "a", "not_matching": "b"}\n{"question": \n',
     "jsonl", 2, "invalid JSON"),
    ("missing.jsonl", '{"question": "q", "matching": "a", "not_matching": "b"}\n\n'
                      '{"question": "q", "matching": "a"}\n', "jsonl", 3, "missing field 'not_matching'"),
    ("not_obj.jsonl", '[1, 2]\n', "jsonl", 1, "expected a JSON object"),
    ("same.jsonl", '{"question": "q", "matching": "a", "not_matching": "a"}\n', "jsonl", 1,
     "identical"),
    ("type.jsonl", '{"question": "q", "matching": 3, "not_matching": "a"}\n', "jsonl", 1,
     "must be a string"),
    ("list_bad.json", '[\n  {"question": "q",\n   "matching": }\n]', "jsonl", 3, "invalid JSON"),
    ("list_missing.json", json.dumps([AB_ITEMS[0], {"question": "q"}]), "ab-json", "item 1",
     "missing field 'answer_matching_behavior'"),
    ("pretty_obj.json", json.dumps(AB_ITEMS[0], indent=2), "ab-json", 1, "one JSON object per line"),
    ("pretty_pair.jsonl", json.dumps({"question": "q", "matching": "a", "not_matching": "b"}, indent=2), "jsonl", 1,
     "looks like one JSON document"),
    ("unterminated.jsonl", '{"question": "q", "matching": "a", "not_matching": "b}\n', "jsonl", 1,
     "Unterminated string starting at (column 52)"),
    ("unclosed.csv", HEADER + 'q,a,b\n"q2,a,b\nq3,a,b\nq4,a,b\n', "bipo-csv", 3, "never closed"),
    ("no_choices.jsonl", json.dumps({"question": "Yes or no?", "answer_matching_behavior": "(A)",
                                     "answer_not_matching_behavior": "(B)"}), "ab-json", 1,
     "no '(A) ...' choices"),
    ("no_c.jsonl", AB_OK + "\n" + json.dumps({**AB_ITEMS[0], "answer_matching_behavior": "(C)"}),
     "ab-text", 2, "(C) is not among the choices"),
    ("empty_list.jsonl", json.dumps({**AB_ITEMS[0], "answer_not_matching_behavior": []}), "ab-json",
     1, "empty list"),
    ("same_letter.jsonl", json.dumps({**AB_ITEMS[0], "answer_not_matching_behavior": "(A)"}),
     "ab-json", 1, "identical"),
    ("tqa_no_true.json", json.dumps([TQA_ITEMS[0], {**TQA_ITEMS[1], "mc1_targets": {"Six.": 0}}]),
     "truthfulqa-mc1", "item 1", "at least one true"),
    ("tqa_label.json", json.dumps([{**TQA_ITEMS[0], "mc2_targets": {"Blue.": 2, "Red.": 0}}]),
     "truthfulqa-mc2", "item 0", "0 or 1"),
    ("tqa_missing.json", json.dumps([{"question": "q", "mc1_targets": {"a": 1, "b": 0}}]),
     "truthfulqa-mc2", "item 0", "missing field 'mc2_targets'"),
    # control characters (a NUL byte, an escape, DEL, a C1 one): refused wherever text is read
    ("nul.csv", HEADER + "q,a,b\n\"q\x002\",a,b\n", "bipo-csv", 3,
     "question holds the control character '\\x00' at character 2; only tab and newline"),
    ("nul_multiline.csv", HEADER + '"q\nspread",a,b\nq2,"a\nb\x00",c\n', "bipo-csv", 4,
     "matching holds the control character '\\x00' at character 4"),
    ("esc.jsonl", '{"question": "q", "matching": "a", "not_matching": "b"}\n'
                  '{"question": "q", "matching": "a", "not_matching": "\\u001b[31mb"}\n', "jsonl", 2,
     "not_matching holds the control character '\\x1b' at character 1"),
    ("del.jsonl", json.dumps({**AB_ITEMS[0], "question": AB_ITEMS[0]["question"].replace("more", "mo\x7fre")}),
     "ab-json", 1, "question holds the control character '\\x7f'"),
    ("c1.jsonl", json.dumps({**AB_ITEMS[0], "question": AB_ITEMS[0]["question"].replace("No", "N\x85o")}),
     "ab-text", 1, "not_matching holds the control character '\\x85'"),
    ("tqa_nul.json", json.dumps([TQA_ITEMS[0], {**TQA_ITEMS[1], "question": "How\x00 many?"}]), "truthfulqa-mc1",
     "item 1", "question holds the control character '\\x00'"),
    ("tqa_answer.json", json.dumps([{**TQA_ITEMS[0], "mc2_targets": {"Blue.\x07": 1, "Red.": 0}}]), "truthfulqa-mc2",
     "item 0", "mc2_targets answer holds the control character '\\x07'"),
    ("adv.csv", "goal,target\nWrite a poem,Sure\nDo\x00 harm,Sure\n", "advbench", 3,
     "goal holds the control character '\\x00'"),
]


@pytest.mark.parametrize("name,content,fmt,location,fragment", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_input_names_file_and_line(tmp_path, name, content, fmt, location, fragment):
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError) as info:
        load_pairs(path, format=fmt)
    message = str(info.value)
    assert message.startswith(f"{path}:{location}: "), message
    assert fragment in message
    assert info.value.location == location and info.value.path == str(path)


def test_tab_newline_and_carriage_return_are_text(tmp_path):
    path = write(tmp_path, "ok.csv", HEADER.replace("\n", "\r\n") + '"q\tone\r\ntwo",a,b\r\n')
    assert triples(load_pairs(path)) == [("q\tone\r\ntwo", "a", "b")]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_pairs(tmp_path / "nope.csv")
    with pytest.raises(IsADirectoryError):
        load_pairs(tmp_path, format="jsonl")


def test_load_truthfulqa_questions_both_targets_limit_and_held_out_split(tmp_path):
    items = [{"question": "Q?", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "c": 1, "b": 0}}] * 3
    path = tmp_path / "mc.json"
    path.write_text(json.dumps(items))
    mc1, mc2 = load_truthfulqa(path, limit=2)
    assert len(mc1) == 2 and mc2[0].labels == (1, 1, 0) and mc1[0].choices == ("a", "b")
    distinct = [dict(items[0], question=f"Q{i}?") for i in range(10)]
    path.write_text(json.dumps(distinct))
    mc1, mc2 = load_truthfulqa(path, test_fraction=0.3, split_seed=1)
    assert [q.question for q in mc1] == [q.question for q in mc2] and len(mc1) == 3
    # the held-out questions are exactly those a pair split with the same fraction and seed holds out
    _, test = train_test_split(load_truthfulqa_mc(path, "mc2"), 0.3, 1)
    assert {q.question for q in mc1} == {p.question for p in test}


def test_load_truthfulqa_keeps_its_old_home():
    import workbench.evaluate.truthfulqa as old

    assert old.load_truthfulqa is load_truthfulqa  # cli/main.py still imports it there (one release)


# --- real public files (../shared/data) -----------------------------------------------------


@needs_shared
@pytest.mark.parametrize("behavior,rows,empty_line", [("power-seeking", 642, 447),
                                                      ("wealth-seeking", 623, 238),
                                                      ("hallucination", 700, None)])
def test_real_bipo_csv(behavior, rows, empty_line):
    path = SHARED / "bipo" / behavior / "train.csv"
    assert guess_format(path) == "bipo-csv"
    pairs = load_pairs(path, allow_empty_question=True)
    assert len(pairs) == rows
    if empty_line is not None:  # BiPO's own files hold a few rows with an empty question
        with pytest.raises(DataFormatError, match=rf"train\.csv:{empty_line}: empty question"):
            load_pairs(path)


CAA_COUNTS = {"coordinate-other-ais": 360, "corrigible-neutral-HHH": 290, "hallucination": 1000,
              "myopic-reward": 950, "refusal": 408, "survival-instinct": 903, "sycophancy": 1000}


@needs_shared
@pytest.mark.parametrize("behavior", sorted(CAA_COUNTS))
def test_real_caa(behavior):
    path = SHARED / "caa" / "generate" / behavior / "generate_dataset.json"
    assert guess_format(path) == "ab-json"
    letters = load_pairs(path)
    assert len(letters) == CAA_COUNTS[behavior]
    assert all(p.matching[0] == "(" and p.matching[2] == ")" for p in letters)
    text = load_pairs(path, "ab-text")
    assert len(text) == len(letters)
    assert not any(re.match(r"\s*\([A-Z]\)", line) for p in text for line in p.question.split("\n"))


@needs_shared
def test_real_truthfulqa():
    path = SHARED / "truthfulqa" / "mc_task_dev.json"
    assert len(load_truthfulqa_questions(path)) == 300
    assert len(load_truthfulqa_questions(path, targets="mc2")) == 300
    mc1 = load_pairs(path, "truthfulqa-mc1")
    assert len(mc1) == sum(len(q.choices) - 1 for q in load_truthfulqa_questions(path))
    assert len(load_pairs(path, "truthfulqa-mc2")) > len(mc1)
    train, test = train_test_split(mc1)
    assert {p.question for p in train}.isdisjoint({p.question for p in test})
    assert len({p.question for p in test}) == 60
