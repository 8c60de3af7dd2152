"""Truthfulness steering: a vector trained on TruthfulQA's true/false answers, scored by MC1 and MC2.

BiPO (Cao et al. 2024, arXiv 2406.00045, section 4.2) steers Llama-2-7b-chat toward truthful answers
with a vector trained on TruthfulQA's correct and incorrect answers, and scores it by multiple
choice. Here, from TruthfulQA's ``mc_task.json`` (Lin et al. 2021, arXiv 2109.07958; a path the user
gives, e.g. ``../shared/data/truthfulqa/mc_task_dev.json``):

* the **questions are split** (``workbench.data.formats.split_questions``, seed ``seed``): the held-out
  questions are never trained on, in any of their answers;
* **training pairs** come from the training questions' ``mc2_targets``: the question, a true answer
  (matching) and a false one (not matching), at most ``pairs_per_question`` per question along the
  diagonal of the (true, false) grid (``workbench.data.formats.load_truthfulqa_mc``), so no question
  dominates by having many answers;
* a **BiPO** vector (``workbench.train.bipo.train_bipo``) and a **CAA** vector (``workbench.train.baselines.caa``)
  at the same layer are made from them (saved under ``runs_dir``, reused when model, data and
  settings are the same);
* they are **evaluated** (``workbench.evaluate.suite.evaluate_vectors``) over multipliers on the held-out
  questions: MC1 (accuracy: the one true answer has the highest total log-prob among the choices)
  and MC2 (normalised probability mass of the true answers), the held-out pairs' log-odds, and the
  utility cost on neutral text (perplexity, KL from the unsteered model).

Answers are scored as the chat's assistant turn under the default system prompt, without an
end-of-turn token (the evaluation's TruthfulQA convention); training appends it, as BiPO does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.core.backend import Model
from workbench.core.io import atomic_write_json
from workbench.core.options import with_options
from workbench.core.results import Result
from workbench.core.vector import SteeringVector
from workbench.data.formats import load_truthfulqa_mc, load_truthfulqa_questions
from workbench.data.pairs import MCQuestion, PreferencePair, fingerprint, split_questions, train_test_split
from workbench.evaluate.suite import evaluate_vectors
from workbench.studies.config import TruthfulnessConfig
from workbench.train.baselines import caa
from workbench.train.bipo import BiPOConfig, train_bipo

logger = logging.getLogger(__name__)


def truthfulqa_split(path: str | Path, test_fraction: float = 0.5, seed: int = 0, pairs_per_question: int = 2,
                     ) -> tuple[list[PreferencePair], list[PreferencePair], list[MCQuestion], list[MCQuestion]]:
    """``(train_pairs, test_pairs, test_mc1, test_mc2)`` of TruthfulQA's ``mc_task.json``, split by question.

    ``train_pairs``/``test_pairs`` are ``mc2_targets`` pairs (at most ``pairs_per_question`` per
    question) of the training / held-out questions; ``test_mc1``/``test_mc2`` the held-out questions
    as multiple choice. No held-out question appears in ``train_pairs``.
    """
    pairs = load_truthfulqa_mc(path, "mc2", per_question=pairs_per_question)
    train, test = train_test_split(pairs, test_fraction, seed)
    mc1 = split_questions(load_truthfulqa_questions(path, "mc1"), test_fraction, seed)[1]
    mc2 = split_questions(load_truthfulqa_questions(path, "mc2"), test_fraction, seed)[1]
    return train, test, mc1, mc2


def _vectors(model: Model, train: Sequence[PreferencePair], bipo_config: BiPOConfig, runs_dir: Path,
             progress: bool) -> dict[str, SteeringVector]:
    """BiPO and CAA on ``train``, loaded from ``runs_dir/{bipo,caa}`` when made with the same settings."""
    spec = {"model": str(model.cfg.model_name), "data": fingerprint(train), "bipo": bipo_config.to_dict()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    key_file = runs_dir / "study_key.json"
    if key_file.is_file() and json.loads(key_file.read_text()).get("key") == key and all(
            (runs_dir / m / "vector.json").is_file() for m in ("bipo", "caa")):
        logger.info("reusing truthfulness vectors in %s", runs_dir)
        return {m: SteeringVector.load(runs_dir / m) for m in ("bipo", "caa")}
    t0 = time.perf_counter()
    res = train_bipo(model, train, bipo_config, progress=progress)
    bipo = res.vector.replace(metadata={**res.vector.metadata, "behavior": "truthfulness",
                                        "train_seconds": time.perf_counter() - t0})
    caa_vec = caa(model, train, bipo_config.layer, hook=bipo_config.hook)
    caa_vec = caa_vec.replace(metadata={**caa_vec.metadata, "behavior": "truthfulness"})
    bipo.save(runs_dir / "bipo",  # the history is committed with its vector, in one directory rename
              extra={"history.json": {**res.to_dict(), "behavior": "truthfulness", "layer": bipo_config.layer}})
    caa_vec.save(runs_dir / "caa")
    atomic_write_json({"key": key, "behavior": "truthfulness"}, key_file)
    return {"bipo": bipo, "caa": caa_vec}


def truthfulness_study(model: Model, path: str | Path, runs_dir: str | Path, bipo_config: BiPOConfig | None = None,
                       *, neutral_texts: Sequence[str] | None = None, config: TruthfulnessConfig | None = None,
                       progress: bool = False, **options: Any) -> Result:
    """Train BiPO and CAA truthfulness vectors and evaluate them on held-out TruthfulQA questions.

    Args:
        model: the model.
        path: TruthfulQA's ``mc_task.json`` (or a slice of it).
        runs_dir: where the vectors are saved (and reused from).
        bipo_config: ``workbench.train.bipo.BiPOConfig`` (default: its defaults); CAA uses its layer and hook.
        neutral_texts: passages for the utility cost (default: the embedded neutral text).
        config: the options (``TruthfulnessConfig``): ``test_fraction`` and ``seed`` (the question
            split, ``truthfulqa_split``), ``pairs_per_question`` (training pairs per question, from
            ``mc2_targets``), ``n_train`` (the first training pairs), ``n_test`` (the first held-out
            questions and pairs), ``multipliers``, ``utility_max_tokens``, ``batch_size``, ``n_boot``.
        progress: show progress bars.
        **options: fields of ``TruthfulnessConfig``, replacing those of ``config``.

    Returns:
        An ``eval`` result (``workbench.evaluate.suite.evaluate_vectors``: tables ``mc1``, ``mc2``, ``logodds``,
        ``utility``) with ``"behavior": "truthfulness"`` and the split under ``"data"``.

    Raises:
        ValueError: the split leaves no training pair or no held-out question.
        TypeError: an option that is not a field of ``TruthfulnessConfig``.
    """
    config = with_options(TruthfulnessConfig, config, options, "truthfulness_study")
    test_fraction, seed, pairs_per_question = config.test_fraction, config.seed, config.pairs_per_question
    n_train, n_test = config.n_train, config.n_test
    bipo_config = bipo_config or BiPOConfig()
    train, test, mc1, mc2 = truthfulqa_split(path, test_fraction, seed, pairs_per_question)
    train, test, mc1, mc2 = train[:n_train], test[:n_test], mc1[:n_test], mc2[:n_test]
    if not train or not mc1:
        raise ValueError(f"{path}: the split left {len(train)} training pairs and {len(mc1)} held-out questions")
    vectors = _vectors(model, train, bipo_config, Path(runs_dir), progress)
    res = evaluate_vectors(model, vectors, test, multipliers=config.multipliers,
                           metrics=["logodds", "truthfulqa", "utility"], truthfulqa=(mc1, mc2),
                           neutral_texts=neutral_texts, utility_max_tokens=config.utility_max_tokens,
                           batch_size=config.batch_size,
                           n_boot=config.n_boot, seed=seed, progress=progress,
                           data_info={"path": str(path), "format": "truthfulqa-mc2", "split": "test",
                                      "test_fraction": test_fraction, "split_seed": seed,
                                      "pairs_per_question": pairs_per_question, "n_train_pairs": len(train),
                                      "n_test_questions": len(mc1)})
    return res.with_info(behavior="truthfulness")


__all__ = ["truthfulqa_split", "truthfulness_study"]
