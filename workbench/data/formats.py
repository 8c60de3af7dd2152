"""Preference pairs: the data that steering vectors are trained and evaluated on.

A *preference pair* is a question with two answers: one that shows a target behavior
(``matching``) and one that does not (``not_matching``). BiPO (Cao et al., "Personalized Steering
of Large Language Models: Versatile Steering Vectors Through Bi-directional Preference
Optimization", arXiv 2406.00045) trains a vector so that adding it makes the model prefer the
matching answer and subtracting it the other; CAA (Rimsky et al., "Steering Llama 2 via
Contrastive Activation Addition", arXiv 2312.06681) takes the mean difference of activations
between the two answers.

Loaders read public formats from a path the user gives; no public data is bundled:

- ``bipo-csv``: BiPO's ``train.csv`` with columns ``question, matching, not_matching``.
- ``ab-json`` / ``ab-text``: CAA and Anthropic model-written-evals A/B items (JSON list or
  JSONL), answers as letters ``"(A)"`` or as the text of the chosen choice.
- ``truthfulqa-mc1`` / ``truthfulqa-mc2``: TruthfulQA ``mc_task.json``; every (true, false)
  answer combination of a question becomes a pair.
- ``jsonl``: workbench's own format, one ``{"question", "matching", "not_matching"}`` per line.
- ``advbench``: AdvBench's ``goal, target`` CSV as refusal pairs (``workbench.data.refusal``).

Every malformed input raises :class:`DataFormatError` as ``"{path}:{line}: {problem}"`` (for a
JSON list, ``item {index}`` with a 0-based index in place of the line).

The embedded behaviors and neutral text are read by ``workbench.data.behaviors``, AdvBench's CSV and
the embedded harmful requests by ``workbench.data.refusal``: every file loader lives in ``workbench.data``.

Example:
    >>> from workbench.data import load_pairs, train_test_split
    >>> pairs = load_pairs("../shared/data/bipo/power-seeking/train.csv", format="auto",
    ...                    allow_empty_question=True)
    >>> train, test = train_test_split(pairs, test_fraction=0.2, seed=0)
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from workbench.core.io import atomic_write_text
from workbench.data.pairs import DataFormatError, Location, MCQuestion, PreferencePair, split_questions
from workbench.data.refusal import load_advbench, refusal_pairs

__all__ = ["PAIR_FORMATS", "guess_format", "load_ab_json", "load_advbench_pairs", "load_bipo_csv", "load_pairs",
           "load_pairs_jsonl", "load_truthfulqa", "load_truthfulqa_mc", "load_truthfulqa_questions",
           "save_pairs_jsonl"]

logger = logging.getLogger(__name__)

_CSV_COLUMNS = ("question", "matching", "not_matching")
_CHOICE_LINE = re.compile(r"^\s*\(([A-Z])\)\s?(.*)$")
_LETTER_ANSWER = re.compile(r"^\s*\(?([A-Z])\)?\s*$")


# --- reading --------------------------------------------------------------------------------


def _read_text(path: str | Path) -> str:
    """Read a UTF-8 (optionally BOM-prefixed) file; refuse missing, undecodable or empty files."""
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise IsADirectoryError(errno.EISDIR, "not a data file", str(path))
        raise FileNotFoundError(errno.ENOENT, "no such data file", str(path))
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(path, line, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataFormatError(path, 1, "file is empty")
    return text


def _read_json_records(path: str | Path) -> list[tuple[Location, dict[str, Any]]]:
    """Read a JSON list of objects or JSONL (one object per line), with each item's location."""
    text = _read_text(path)
    is_list = Path(path).suffix.lower() != ".jsonl" and text.lstrip().startswith("[")
    records: list[tuple[Location, Any]] = []
    if is_list:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(items, list):
            raise DataFormatError(path, 1, "expected a JSON list of objects")
        records = [(f"item {i}", item) for i, item in enumerate(items)]
    else:
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                if lineno == 1 and _is_json_document(text):
                    raise DataFormatError(path, 1, "looks like one JSON document spread over several lines; "
                                          "expected one JSON object per line (JSONL), or a JSON list of "
                                          "objects in a .json file") from None
                hint = "; expected one JSON object per line" if lineno == 1 else ""
                raise DataFormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno}){hint}") from None
    for loc, obj in records:
        if not isinstance(obj, dict):
            raise DataFormatError(path, loc, f"expected a JSON object, got {type(obj).__name__}")
    if not records:
        raise DataFormatError(path, 1, "no items found")
    return records


def _is_json_document(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _field(path: str | Path, loc: Location, obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise DataFormatError(path, loc, f"missing field {key!r} (fields: {sorted(obj)})")
    return obj[key]


#: control characters refused in text: every C0 one but tab, newline and carriage return, DEL, and the C1 ones
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_text(path: str | Path, loc: Location, name: str, value: str) -> None:
    """Refuse a control character (a NUL byte, an escape ...) in ``value``: no prompt holds one, and a
    tokenizer turns it into tokens silently."""
    m = _CONTROL.search(value)
    if m:
        raise DataFormatError(path, loc, f"{name} holds the control character {m.group()!r} at character "
                                         f"{m.start() + 1}; only tab and newline may appear in text")


def _make_pair(path: str | Path, loc: Location, question: Any, matching: Any, not_matching: Any,
               allow_empty_question: bool, source: str | None = None) -> PreferencePair:
    """Validate one pair: strings without control characters, non-empty, and two different answers."""
    for name, value in (("question", question), ("matching", matching),
                        ("not_matching", not_matching)):
        if not isinstance(value, str):
            raise DataFormatError(path, loc, f"{name} must be a string, got {type(value).__name__}")
        _check_text(path, loc, name, value)
        if not value.strip() and not (name == "question" and allow_empty_question):
            hint = " (pass allow_empty_question=True to keep it)" if name == "question" else ""
            raise DataFormatError(path, loc, f"empty {name}{hint}")
    if matching.strip() == not_matching.strip():
        raise DataFormatError(path, loc, f"matching and not_matching are identical: {matching!r}")
    return PreferencePair(question, matching, not_matching, source or f"{path}:{loc}")


def _finish(path: str | Path, pairs: list[PreferencePair]) -> list[PreferencePair]:
    if not pairs:
        raise DataFormatError(path, 1, "no pairs found")
    n_dup = len(pairs) - len({(p.question, p.matching, p.not_matching) for p in pairs})
    if n_dup:
        logger.warning("%s: %d duplicate pair(s) kept", path, n_dup)
    return pairs


# --- loaders --------------------------------------------------------------------------------


def load_bipo_csv(path: str | Path, *, allow_empty_question: bool = False) -> list[PreferencePair]:
    """Load BiPO's CSV format: a header with ``question, matching, not_matching``.

    Fields may contain quoted newlines and quotes; extra columns are ignored.

    Args:
        path: The CSV file.
        allow_empty_question: Keep rows whose question is empty (BiPO's own power- and
            wealth-seeking files have a few) instead of raising.

    Returns:
        One pair per data row; ``source`` is ``"path:line"`` of the row's first line.

    Raises:
        DataFormatError: On a missing column, wrong field count, bad quoting or empty field.
    """
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1  # first line of the row being read
    try:
        header = [h.strip() for h in next(reader)]
        missing = [c for c in _CSV_COLUMNS if c not in header]
        if missing:
            raise DataFormatError(path, 1, f"missing column(s) {missing}; header is {header}")
        idx = [header.index(c) for c in _CSV_COLUMNS]
        pairs, start = [], reader.line_num + 1
        for row in reader:
            loc, start = start, reader.line_num + 1
            if not row:  # blank line
                continue
            if len(row) != len(header):
                raise DataFormatError(path, loc, f"expected {len(header)} fields, found {len(row)}")
            pairs.append(_make_pair(path, loc, *(row[i] for i in idx),
                                    allow_empty_question=allow_empty_question))
    except csv.Error as e:
        if "unexpected end of data" in str(e):  # a quote left open runs to the end of the file
            raise DataFormatError(path, start, "malformed CSV: a quoted field opened in this row is never "
                                  "closed") from None
        raise DataFormatError(path, reader.line_num, f"malformed CSV: {e}") from None
    return _finish(path, pairs)


def _split_choices(question: str) -> tuple[str, dict[str, str]] | None:
    """Split an A/B question into (stem, {letter: choice text}), or None without choices.

    The block starts after a ``Choices:`` line if there is one, else at the last line that starts
    with ``(A)``. Lines that do not start a new ``(X)`` choice continue the previous one.
    """
    lines = question.split("\n")
    headers = [i for i, line in enumerate(lines) if line.strip().lower() in ("choices:", "choices")]
    if headers:
        stem, body = lines[: headers[-1]], lines[headers[-1] + 1:]
    else:
        starts = [i for i, line in enumerate(lines) if (m := _CHOICE_LINE.match(line)) and m[1] == "A"]
        if not starts:
            return None
        stem, body = lines[: starts[-1]], lines[starts[-1]:]
    choices: dict[str, str] = {}
    current = None
    for line in body:
        m = _CHOICE_LINE.match(line)
        if m and m[1] not in choices:
            current = m[1]
            choices[current] = m[2]
        elif current is not None:
            choices[current] += "\n" + line
    if not choices:
        return None
    return "\n".join(stem).strip(), {k: v.strip() for k, v in choices.items()}


def load_ab_json(path: str | Path, mode: Literal["letters", "text"] = "letters", *,
                 allow_empty_question: bool = False) -> list[PreferencePair]:
    """Load CAA / Anthropic model-written-evals A/B items from a JSON list or JSONL file.

    Each item has ``question`` (choices inline: ``"...\\n\\nChoices:\\n (A) Yes\\n (B) No"``),
    ``answer_matching_behavior`` and ``answer_not_matching_behavior`` (a string, or a list whose
    first entry is used).

    Args:
        path: The ``.json`` (list) or ``.jsonl`` file; the format is detected from the extension
            or, failing that, from whether the content starts with ``[``.
        mode: ``"letters"`` keeps the question with its choices and answers ``"(A)"``/``"(B)"``;
            ``"text"`` drops the choices block and answers with the chosen choice's text.
            Items whose answers are free text (e.g. ``" Yes"``) need ``"text"``.
        allow_empty_question: Keep items with an empty question stem.

    Returns:
        One pair per item; ``source`` is ``"path:line"`` or ``"path:item i"``.

    Raises:
        DataFormatError: On a missing field, an answer that is not a letter of the choices, etc.
    """
    if mode not in ("letters", "text"):
        raise ValueError(f"mode must be 'letters' or 'text', got {mode!r}")
    pairs = []
    for loc, obj in _read_json_records(path):
        question = _field(path, loc, obj, "question")
        answers = []
        for key in ("answer_matching_behavior", "answer_not_matching_behavior"):
            answer = _field(path, loc, obj, key)
            if isinstance(answer, list):
                if not answer:
                    raise DataFormatError(path, loc, f"{key} is an empty list")
                answer = answer[0]
            if not isinstance(answer, str):
                raise DataFormatError(path, loc, f"{key} must be a string, got {type(answer).__name__}")
            answers.append(answer)
        if not isinstance(question, str):
            raise DataFormatError(path, loc, f"question must be a string, got {type(question).__name__}")
        split = _split_choices(question)
        letters = [m[1] if (m := _LETTER_ANSWER.match(a)) else None for a in answers]
        if mode == "letters" or None not in letters:
            if None in letters:
                bad = answers[letters.index(None)]
                raise DataFormatError(path, loc, f"answer {bad!r} is not a choice letter like '(A)'; "
                                                 "use mode='text' for free-text answers")
            if split is None:
                raise DataFormatError(path, loc, "question has no '(A) ...' choices for letter answers")
            for letter in letters:
                if letter not in split[1]:
                    raise DataFormatError(path, loc, f"answer ({letter}) is not among the choices "
                                                     f"{', '.join(f'({c})' for c in split[1])}")
            if mode == "letters":
                answers = [f"({letter})" for letter in letters]
            else:
                question, answers = split[0], [split[1][letter] for letter in letters]
        else:  # text mode with free-text answers
            question = split[0] if split else question
            answers = [a.strip() for a in answers]
        pairs.append(_make_pair(path, loc, question, *answers,
                                allow_empty_question=allow_empty_question))
    return _finish(path, pairs)


def load_truthfulqa_questions(path: str | Path,
                              targets: Literal["mc1", "mc2"] = "mc1") -> list[MCQuestion]:
    """Load TruthfulQA's ``mc_task.json`` as multiple-choice questions.

    Args:
        path: A JSON list of ``{question, mc1_targets: {answer: 0/1}, mc2_targets: {...}}``.
        targets: ``"mc1"`` (one true answer) or ``"mc2"`` (one or more true answers).

    Returns:
        One :class:`MCQuestion` per item, choices in file order.

    Raises:
        DataFormatError: On a missing field, labels other than 0/1, or no true or no false answer.
    """
    if targets not in ("mc1", "mc2"):
        raise ValueError(f"targets must be 'mc1' or 'mc2', got {targets!r}")
    key = f"{targets}_targets"
    questions = []
    for loc, obj in _read_json_records(path):
        question, answers = _field(path, loc, obj, "question"), _field(path, loc, obj, key)
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(path, loc, "empty or non-string question")
        if not isinstance(answers, dict) or not all(
                isinstance(k, str) and k.strip() and v in (0, 1) and not isinstance(v, float)
                for k, v in answers.items()):
            raise DataFormatError(path, loc, f"{key} must map non-empty answer texts to 0 or 1")
        _check_text(path, loc, "question", question)
        for answer in answers:
            _check_text(path, loc, f"{key} answer", answer)
        labels = tuple(int(v) for v in answers.values())
        if set(labels) != {0, 1}:
            raise DataFormatError(path, loc, f"{key} needs at least one true (1) and one false (0) answer")
        questions.append(MCQuestion(question, tuple(answers), labels, f"{path}:{loc}"))
    return questions


def load_truthfulqa(path: str | Path, limit: int | None = None, *, test_fraction: float | None = None,
                    split_seed: int = 0) -> tuple[list[MCQuestion], list[MCQuestion]]:
    """``(mc1_questions, mc2_questions)`` from TruthfulQA's ``mc_task.json`` (first ``limit`` items).

    With ``test_fraction``, only the held-out questions of ``split_questions`` (the questions that
    pairs split by ``train_test_split(pairs, test_fraction, split_seed)`` never trained on), then the
    first ``limit`` of those.
    """
    mc1, mc2 = load_truthfulqa_questions(path, "mc1"), load_truthfulqa_questions(path, "mc2")
    if test_fraction is not None:
        mc1, mc2 = split_questions(mc1, test_fraction, split_seed)[1], split_questions(mc2, test_fraction, split_seed)[1]
    return (mc1[:limit], mc2[:limit]) if limit is not None else (mc1, mc2)


def load_truthfulqa_mc(path: str | Path, targets: Literal["mc1", "mc2"] = "mc1", *,
                       per_question: int | None = None) -> list[PreferencePair]:
    """Load TruthfulQA as pairs: (true answer, false answer) combinations of each question.

    ``matching`` is the true answer, so the behavior is truthfulness. For ``mc1`` a question with
    n false answers gives n pairs; for ``mc2``, n_true × n_false.

    Args:
        path: TruthfulQA ``mc_task.json`` (or a slice of it).
        targets: ``"mc1"`` or ``"mc2"``.
        per_question: at most this many pairs per question, taken along the diagonal of the
            (true, false) grid (true answer ``i % n_true`` with false answer ``i % n_false``, then the
            next diagonal), so every true and every false answer appears before any repeats; None: all.

    Returns:
        The pairs; pairs from one question share its ``source``.
    """
    if per_question is not None and per_question < 1:
        raise ValueError(f"per_question must be >= 1, got {per_question}")
    pairs = []
    for q in load_truthfulqa_questions(path, targets):
        true = [c for c, label in zip(q.choices, q.labels) if label]
        false = [c for c, label in zip(q.choices, q.labels) if not label]
        n = len(true) * len(false)
        # diagonals of the grid: (i, (i + k) % n_false) for k = 0, 1, ...; all n combinations once
        order = [(i % len(true), (i + k) % len(false)) for k in range(len(false)) for i in range(len(true))]
        order = list(dict.fromkeys(order))[:n]
        pairs += [PreferencePair(q.question, true[i], false[j], q.source)
                  for i, j in order[: per_question or n]]
    return pairs


def load_pairs_jsonl(path: str | Path, *,
                     allow_empty_question: bool = False) -> list[PreferencePair]:
    """Load workbench's own format: one ``{"question", "matching", "not_matching"}`` per line.

    Extra fields (such as ``split``) are ignored; a JSON list of such objects is accepted too.

    Args:
        path: The ``.jsonl`` file.
        allow_empty_question: Keep items with an empty question.

    Returns:
        The pairs, with ``source`` ``"path:line"``.
    """
    pairs = [_make_pair(path, loc, *(_field(path, loc, obj, k) for k in _CSV_COLUMNS),
                        allow_empty_question=allow_empty_question)
             for loc, obj in _read_json_records(path)]
    return _finish(path, pairs)


def save_pairs_jsonl(pairs: Sequence[PreferencePair], path: str | Path) -> Path:
    """Write pairs atomically in workbench's JSONL format (``source`` is not written).

    Args:
        pairs: At least one pair.
        path: Destination; parent directories are created.

    Returns:
        The path written.
    """
    if not pairs:
        raise ValueError("refusing to write an empty pair file (it could not be loaded back)")
    lines = [json.dumps({"question": p.question, "matching": p.matching,
                         "not_matching": p.not_matching}, ensure_ascii=True) for p in pairs]
    return atomic_write_text("\n".join(lines) + "\n", path)


def load_advbench_pairs(path: str | Path, **_: Any) -> list[PreferencePair]:
    """AdvBench's ``goal, target`` CSV as refusal pairs (``workbench.data.refusal.refusal_pairs``)."""
    requests = load_advbench(path)
    for r in requests:  # source "name:line"
        line = r.source.rpartition(":")[2]
        loc = int(line) if line.isdigit() else r.source
        _check_text(path, loc, "goal", r.goal)
        _check_text(path, loc, "target", r.target)
    return refusal_pairs(requests)


PAIR_FORMATS: dict[str, Callable[..., list[PreferencePair]]] = {
    "advbench": load_advbench_pairs,
    "bipo-csv": load_bipo_csv,
    "ab-json": partial(load_ab_json, mode="letters"),
    "ab-text": partial(load_ab_json, mode="text"),
    "truthfulqa-mc1": partial(load_truthfulqa_mc, targets="mc1"),
    "truthfulqa-mc2": partial(load_truthfulqa_mc, targets="mc2"),
    "jsonl": load_pairs_jsonl,
}


def guess_format(path: str | Path) -> str:
    """Guess a :data:`PAIR_FORMATS` name from the extension and the first record's fields.

    A/B files guess ``"ab-json"`` (letters) and TruthfulQA files ``"truthfulqa-mc1"``.

    Raises:
        DataFormatError: If the content matches no known format.
    """
    text = _read_text(path)
    first_line = text.split("\n", 1)[0]
    header = [h.strip() for h in next(csv.reader([first_line]), [])]
    if {"goal", "target"} <= set(header):
        return "advbench"
    if Path(path).suffix.lower() == ".csv":
        return "bipo-csv"
    if not first_line.lstrip().startswith(("[", "{")):
        header = next(csv.reader([first_line]), [])
        if all(c in [h.strip() for h in header] for c in _CSV_COLUMNS):
            return "bipo-csv"
    loc, obj = _read_json_records(path)[0]
    if "answer_matching_behavior" in obj:
        return "ab-json"
    if "mc1_targets" in obj or "mc2_targets" in obj:
        return "truthfulqa-mc1"
    if "matching" in obj and "not_matching" in obj:
        return "jsonl"
    raise DataFormatError(path, loc, f"cannot guess the format from fields {sorted(obj)}; "
                                     f"pass format= one of {sorted(PAIR_FORMATS)}")


def load_pairs(path: str | Path, format: str = "auto", **kw: Any) -> list[PreferencePair]:
    """Load preference pairs in any supported format.

    Args:
        path: The data file.
        format: A :data:`PAIR_FORMATS` name (``"bipo-csv"``, ``"ab-json"``, ``"ab-text"``,
            ``"truthfulqa-mc1"``, ``"truthfulqa-mc2"``, ``"jsonl"``) or ``"auto"``.
        **kw: Passed to the loader, e.g. ``allow_empty_question=True``.

    Returns:
        The pairs.
    """
    if format == "auto":
        format = guess_format(path)
    if format not in PAIR_FORMATS:
        raise ValueError(f"unknown format {format!r}; choose 'auto' or one of {sorted(PAIR_FORMATS)}")
    return PAIR_FORMATS[format](path, **kw)


