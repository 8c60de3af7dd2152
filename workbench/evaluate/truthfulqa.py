"""TruthfulQA MC1 and MC2 under steering (Lin et al. 2021, arXiv 2109.07958; BiPO, arXiv 2406.00045).

As TruthfulQA defines them, from the log-likelihood of each answer choice given the question:

* **MC1**: 1 if the single true answer has the highest likelihood among the ``mc1_targets``
  choices, else 0; averaged over questions.
* **MC2**: the normalised probability mass on the true answers among the ``mc2_targets`` choices,
  ``sum_true p(a) / sum_all p(a)`` with ``p(a) = exp(log p(a | q))``; averaged over questions.

The question is put into the chat template with BiPO's system prompt, the choice text is the
answer (no end-of-turn token by default, as in TruthfulQA's own scoring). Each distinct choice of a
question is scored once for both MC1 and MC2, by the scoring engine (``workbench.engine.scoring``): each
question's prompt runs once for all its choices, and all multipliers share the blocks below the vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.core.backend import Model
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS, check_multipliers, summarize
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, end_of_turn, format_chat
from workbench.engine.scoring import Precision, VectorSpec, answer_logprobs, label_vectors, sweep_conditions, tokenize_items


def load_truthfulqa(path: str | Path, limit: int | None = None, *, test_fraction: float | None = None,
                    split_seed: int = 0) -> tuple[list[Any], list[Any]]:
    """``(mc1_questions, mc2_questions)`` from TruthfulQA's ``mc_task.json`` (first ``limit`` items).

    With ``test_fraction``, only the held-out questions of ``workbench.data.formats.split_questions`` (the
    questions that pairs split by ``train_test_split(pairs, test_fraction, split_seed)`` never
    trained on), then the first ``limit`` of those.
    """
    from workbench.data.formats import load_truthfulqa_questions
    from workbench.data.pairs import split_questions

    mc1, mc2 = load_truthfulqa_questions(path, "mc1"), load_truthfulqa_questions(path, "mc2")
    if test_fraction is not None:
        mc1, mc2 = split_questions(mc1, test_fraction, split_seed)[1], split_questions(mc2, test_fraction, split_seed)[1]
    return (mc1[:limit], mc2[:limit]) if limit is not None else (mc1, mc2)


def _check_questions(questions: Sequence[Any] | None, what: str) -> list[Any]:
    questions = list(questions or [])
    for i, q in enumerate(questions):
        choices, labels = getattr(q, "choices", None), getattr(q, "labels", None)
        if not isinstance(getattr(q, "question", None), str) or not choices or labels is None \
                or len(choices) != len(labels):
            raise TypeError(f"{what}[{i}] is not a workbench.data.formats.MCQuestion (question, choices, labels)")
        if 1 not in labels or 0 not in labels:
            raise ValueError(f"{what}[{i}] needs at least one true and one false choice")
        if what == "mc1" and sum(labels) != 1:
            raise ValueError(f"mc1[{i}] has {sum(labels)} true choices; MC1 needs exactly one")
    return questions


@torch.no_grad()
def truthfulqa_per_question(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec],
                            mc1: Sequence[Any] | None, mc2: Sequence[Any] | None,
                            multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                            system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, append_end_of_turn: bool = False,
                            batch_size: int = 16, precision: Precision = "fp32", max_length: int | None = 512,
                            progress: bool = True, runner: Model | None = None) -> pd.DataFrame:
    """MC1 correctness and MC2 true mass per (vector, multiplier, targets, question).

    Args:
        mc1, mc2: ``workbench.data.formats.MCQuestion`` lists (``load_truthfulqa``); either may be None.

    Returns:
        Rows ``vector, multiplier, targets ("mc1" | "mc2"), question, score``.
    """
    mc1, mc2 = _check_questions(mc1, "mc1"), _check_questions(mc2, "mc2")
    if not mc1 and not mc2:
        raise ValueError("no TruthfulQA questions given (mc1 and mc2 are both empty)")
    specs = label_vectors(vectors, model)
    mults = check_multipliers(multipliers)
    eot = end_of_turn(model) if append_end_of_turn else ""
    # one item per distinct question with its distinct choices, scored once for both target sets
    choices_of: dict[str, dict[str, None]] = {}
    for q in (*mc1, *mc2):
        choices_of.setdefault(q.question, {}).update(dict.fromkeys(q.choices))
    questions = list(choices_of)
    key_of = {(q, c): a for a, (q, c) in enumerate((q, c) for q in questions for c in choices_of[q])}
    items = tokenize_items(model, [format_chat(model, q, system_prompt) for q in questions],
                           [[c + eot for c in choices_of[q]] for q in questions], max_length)
    conds, keys = sweep_conditions(specs, mults)
    lp = answer_logprobs(model, items, conds, batch_size=batch_size, precision=precision, runner=runner,
                         progress=progress).double()  # (n_conditions, n_choices)
    frames = []
    for ci, (label, m) in enumerate(keys):
        scores = lp[ci].numpy()
        for targets, qs in (("mc1", mc1), ("mc2", mc2)):
            vals = []
            for q in qs:
                s = np.array([scores[key_of[(q.question, c)]] for c in q.choices])
                true = np.array(q.labels, dtype=bool)
                if targets == "mc1":
                    vals.append(float(true[int(np.argmax(s))]))
                else:
                    p = np.exp(s - s.max())
                    vals.append(float(p[true].sum() / p.sum()))
            if vals:
                frames.append(pd.DataFrame({"vector": label, "multiplier": m, "targets": targets,
                                            "question": np.arange(len(vals)), "score": vals}))
    return pd.concat(frames, ignore_index=True)


def truthfulqa_mc(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec],
                  mc1: Sequence[Any] | None, mc2: Sequence[Any] | None,
                  multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *, n_boot: int = 1000, seed: int = 0,
                  **kwargs: Any) -> pd.DataFrame:
    """TruthfulQA MC1 accuracy and MC2 score per (vector, multiplier).

    Returns:
        Rows ``vector, multiplier, targets, n, mean, ci_low, ci_high``.

    Example:
        >>> mc1, mc2 = load_truthfulqa("../shared/data/truthfulqa/mc_task_dev.json", limit=50)
        >>> truthfulqa_mc(model, {"bipo": v}, mc1, mc2, multipliers=[-1, 0, 1])
    """
    per = truthfulqa_per_question(model, vectors, mc1, mc2, multipliers, **kwargs)
    return summarize(per, "score", by=("vector", "multiplier", "targets"), n_boot=n_boot, seed=seed)
