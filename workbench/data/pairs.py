"""Preference pairs, the data type that steering vectors are trained and evaluated on, and their checks.

A *preference pair* is a question with two answers: one that shows a target behavior
(``matching``) and one that does not (``not_matching``). BiPO (Cao et al. 2024, arXiv 2406.00045)
trains a vector so that adding it makes the model prefer the matching answer and subtracting it the
other; CAA (Rimsky et al. 2023, arXiv 2312.06681) takes the mean difference of activations between
the two answers. This module holds the types (``PreferencePair``, ``MCQuestion``), the one input
check every public entry point runs (``check_pairs``, ``check_ab_pairs``, ``check_questions``), the
fingerprint recorded in vector metadata, and the deterministic splits.

Checks run once, at the edge: a public function checks what it is given and passes the checked
list down; the functions below it (``ab_letters`` and the private helpers of ``workbench.evaluate``)
trust it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataFormatError", "MCQuestion", "PreferencePair", "ab_letters", "answer_letter", "as_ab_pairs",
           "check_ab_pairs", "check_pairs", "check_questions", "fingerprint", "held_out_keys", "is_ab_data",
           "split_questions", "train_test_split"]

Location = int | str  # a 1-based line number, or "item {i}" for a JSON list


class DataFormatError(ValueError):
    """A data file is malformed; the message reads ``"{path}:{location}: {problem}"``.

    Attributes:
        path: The file, as given.
        location: 1-based line number, or ``"item {i}"`` (0-based) for items of a JSON list.
        problem: What is wrong.
    """

    def __init__(self, path: str | Path, location: Location, problem: str):
        self.path, self.location, self.problem = str(path), location, problem
        super().__init__(f"{path}:{location}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.location, self.problem)


@dataclass(frozen=True)
class PreferencePair:
    question: str  # the user's question (for A/B formats: the question with its inline "Choices:" lines)
    matching: str  # behavior-matching answer text (for A/B letter mode: "(A)")
    not_matching: str  # the other answer
    source: str | None = None  # "path:line" or "behavior:index" for error messages and provenance


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question (TruthfulQA) for likelihood-based evaluation."""

    question: str
    choices: tuple[str, ...]  # answer texts, in file order
    labels: tuple[int, ...]  # 1 for a true answer, 0 for a false one; same length as choices
    source: str | None = None  # "path:item i"

    def __post_init__(self):
        if len(self.choices) != len(self.labels):
            raise ValueError(f"{len(self.choices)} choices but {len(self.labels)} labels")
        if set(self.labels) != {0, 1}:
            raise ValueError(f"labels must contain both 0 and 1, got {self.labels}")


def fingerprint(pairs: Sequence[PreferencePair]) -> str:
    """Return a short stable hash of the pairs' text, for vector metadata.

    The hash covers question, matching and not_matching in order; ``source`` is ignored, so the
    same data read from another path has the same fingerprint.

    Args:
        pairs: The preference pairs.

    Returns:
        The first 16 hex characters of a SHA-256 over a canonical JSON encoding.
    """
    triples = [[p.question, p.matching, p.not_matching] for p in pairs]
    canonical = json.dumps(triples, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


def train_test_split(pairs: Sequence[PreferencePair], test_fraction: float = 0.2, seed: int = 0,
                     *, by_question: bool = True) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Split pairs deterministically into train and test, keeping the original order in each.

    Args:
        pairs: The pairs.
        test_fraction: Fraction of questions (or pairs) in the test split, in [0, 1).
        seed: Seed of the shuffle; the same inputs and seed always give the same split.
        by_question: Keep all pairs that share a question on the same side (TruthfulQA gives
            several pairs per question), so no test question is seen in training.

    Returns:
        ``(train, test)``.
    """
    if not pairs:
        raise ValueError("cannot split an empty list of pairs")
    keys = [p.question if by_question else i for i, p in enumerate(pairs)]
    test_keys = held_out_keys(keys, test_fraction, seed)
    train = [p for p, k in zip(pairs, keys) if k not in test_keys]
    test = [p for p, k in zip(pairs, keys) if k in test_keys]
    return train, test


def held_out_keys(keys: Sequence[Any], test_fraction: float = 0.2, seed: int = 0) -> set[Any]:
    """The keys (questions) ``train_test_split`` holds out: the same for pairs and for the MC questions
    they were built from (``split_questions``), since both see the questions in file order."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    groups = list(dict.fromkeys(keys))
    n_test = min(round(len(groups) * test_fraction), len(groups) - 1)
    if test_fraction > 0 and len(groups) > 1:
        n_test = max(n_test, 1)
    return {groups[i] for i in random.Random(seed).sample(range(len(groups)), n_test)}


def split_questions(questions: Sequence[MCQuestion], test_fraction: float = 0.2,
                    seed: int = 0) -> tuple[list[MCQuestion], list[MCQuestion]]:
    """Multiple-choice questions split as ``train_test_split`` splits the pairs built from them: a
    vector trained on ``train_test_split(load_truthfulqa_mc(path), f, seed)[0]`` never saw a question
    of ``split_questions(load_truthfulqa_questions(path), f, seed)[1]``."""
    if not questions:
        raise ValueError("cannot split an empty list of questions")
    test_keys = held_out_keys([q.question for q in questions], test_fraction, seed)
    return ([q for q in questions if q.question not in test_keys], [q for q in questions if q.question in test_keys])


def as_ab_pairs(pairs: Sequence[PreferencePair], seed: int = 0) -> list[PreferencePair]:
    """Free-text pairs as CAA-style A/B questions, for the ``ab`` metric on any preference data.

    Each question gets the two answers as inline choices (CAA's layout: ``"\\n\\nChoices:\\n (A) ...\\n
    (B) ..."``) and the answers become the letters. The matching answer is ``(A)`` for a seeded
    random half of the pairs (``ceil(n/2)``) and ``(B)`` for the rest, so a letter bias of the
    model does not read as behavior. Pairs that are already A/B are returned unchanged.
    """
    pairs = list(pairs)
    if is_ab_data(pairs):
        return pairs
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    matching_first = set(order[: (len(pairs) + 1) // 2])
    out = []
    for i, p in enumerate(pairs):
        first = i in matching_first
        a, b = (p.matching, p.not_matching) if first else (p.not_matching, p.matching)
        question = f"{p.question}\n\nChoices:\n (A) {a.strip()}\n (B) {b.strip()}"
        out.append(PreferencePair(question, "(A)" if first else "(B)", "(B)" if first else "(A)", source=p.source))
    return out



_LETTER = re.compile(r"^\s*\(([A-Za-z])\)\s*$|^\s*([A-Za-z])\s*$")


def _where(p: Any, i: int) -> str:
    src = getattr(p, "source", None)
    return f"pairs[{i}]" + (f" ({src})" if src else "")


def check_pairs(pairs: Sequence[Any], what: str = "pairs") -> list[Any]:
    """Preference pairs (``question``, ``matching``, ``not_matching`` strings); clear errors otherwise."""
    if pairs is None:
        raise ValueError(f"{what} is missing: this metric needs preference pairs")
    pairs = list(pairs)
    if not pairs:
        raise ValueError(f"{what} is empty: need at least one preference pair")
    for i, p in enumerate(pairs):
        for attr in ("question", "matching", "not_matching"):
            if not isinstance(getattr(p, attr, None), str):
                raise TypeError(f"{what}[{i}] has no string field {attr!r} (expected a "
                                f"workbench.data.PreferencePair, got {type(p).__name__})")
        for attr in ("matching", "not_matching"):
            if not getattr(p, attr).strip():
                raise ValueError(f"{_where(p, i)}: {attr} is empty")
    return pairs


def answer_letter(answer: str) -> str | None:
    """``"(A)"`` or ``"A"`` -> ``"A"``; None for anything else (free-text answers)."""
    m = _LETTER.match(answer)
    return (m.group(1) or m.group(2)).upper() if m else None


def is_ab_data(pairs: Sequence[Any]) -> bool:
    """True when every pair's answers are two different letters (the ``ab-json`` loader's output)."""
    pairs = list(pairs)
    return bool(pairs) and all(
        (a := answer_letter(p.matching)) is not None and (b := answer_letter(p.not_matching)) is not None
        and a != b for p in pairs)


def ab_letters(pairs: Sequence[Any]) -> list[tuple[str, str]]:
    """``[(matching letter, not-matching letter)]`` of pairs already checked by ``check_pairs``.

    Raises:
        ValueError: naming the first pair whose answers are not two different letters.
    """
    out = []
    for i, p in enumerate(pairs):
        a, b = answer_letter(p.matching), answer_letter(p.not_matching)
        if a is None or b is None:
            raise ValueError(f"{_where(p, i)}: the 'ab' metric needs A/B answers like '(A)' and '(B)' "
                             f"(load CAA data with format 'ab-json'); got matching={p.matching[:40]!r}, "
                             f"not_matching={p.not_matching[:40]!r}")
        if a == b:
            raise ValueError(f"{_where(p, i)}: matching and not_matching are the same letter {a!r}")
        out.append((a, b))
    return out


def check_ab_pairs(pairs: Sequence[Any]) -> list[tuple[str, str]]:
    """``check_pairs`` then ``ab_letters``: an error names the first pair that is not A/B."""
    return ab_letters(check_pairs(pairs))


def check_questions(questions: Sequence[Any] | None, what: str = "mc1") -> list[MCQuestion]:
    """Multiple-choice questions (``MCQuestion``) for TruthfulQA; ``None`` is an empty list.

    Args:
        questions: The questions.
        what: ``"mc1"`` (exactly one true choice per question) or ``"mc2"``; named in errors.

    Raises:
        TypeError: an item is not a question with choices and labels.
        ValueError: a question without a true or a false choice, or an MC1 question with several true ones.
    """
    questions = list(questions or [])
    for i, q in enumerate(questions):
        choices, labels = getattr(q, "choices", None), getattr(q, "labels", None)
        if not isinstance(getattr(q, "question", None), str) or not choices or labels is None \
                or len(choices) != len(labels):
            raise TypeError(f"{what}[{i}] is not a workbench.data.MCQuestion (question, choices, labels)")
        if 1 not in labels or 0 not in labels:
            raise ValueError(f"{what}[{i}] needs at least one true and one false choice")
        if what == "mc1" and sum(labels) != 1:
            raise ValueError(f"mc1[{i}] has {sum(labels)} true choices; MC1 needs exactly one")
    return questions
