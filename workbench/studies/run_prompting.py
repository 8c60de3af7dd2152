"""The ``workbench prompting`` run: the prompting baseline beside a matched-cost comparison.

Asks for a behavior (an instruction in the system turn, k-shot examples from the training pairs) and
measures the effect on held-out pairs and the KL cost on neutral text as ``matched_cost`` does
(``workbench.evaluate.prompting``; AxBench's question, Wu et al. 2025, arXiv 2501.17148). With
``--compare RESULT.json`` (a ``workbench compare`` result on the same pairs) the vectors' rows are
added, and each vector (from the result's ``sources`` or ``--vector``) is also applied together with
the instruction at the multipliers the comparison found. Options and data are checked before the
model loads; the result is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.results import MATCHED_COST, ResultFormatError, load_result
from workbench.data.behaviors import load_behavior
from workbench.data.instructions import behavior_instructions
from workbench.evaluate.prompting import prompting_baseline, prompting_table, with_prompting_points
from workbench.studies.runs import (DataOptions, Log, ModelOptions, RunError, check_at_least_one, check_data, check_out,
                                    load_vectors, neutral_texts, silent, write_result)
from workbench.viz.report import markdown_table


@dataclass(kw_only=True)
class PromptingRun(ModelOptions, DataOptions):
    """Options of ``workbench prompting``."""

    out: str  # result JSON (kind "prompting")
    compare: str | None = None  # a matched_cost result JSON of the same pairs: vector rows and prompt + vector rows
    vector: Sequence[str] | None = None  # vector directories (default: the --compare result's sources)
    merged: str | None = None  # also write the --compare result with the prompting points added (matched_cost)
    instructions_for: str | None = None  # whose instructions (default: --behavior, or --data's folder name)
    instructions: str | None = None  # an instructions JSON file (default: the embedded one)
    ks: Sequence[int] = (1, 2, 4, 8)
    budgets: Sequence[float] | None = None  # prompt + vector at these budgets of --compare (default: all)
    limit: int | None = None  # at most N held-out pairs
    neutral: str | None = None  # neutral text file, one passage per line
    texts: int = 16  # neutral passages of the cost
    text_tokens: int = 64  # tokens per passage
    batch_size: int = 8
    n_boot: int = 1000
    seed: int = 0  # bootstrap seed


def _behavior_name(config: PromptingRun) -> str:
    if config.instructions_for is not None:
        return config.instructions_for
    if config.behavior is not None:
        return config.behavior
    return Path(str(config.data)).resolve().parent.name


def prompting_run(config: PromptingRun, log: Log = silent) -> dict[str, Any]:
    """The prompting baseline (and the vectors of ``--compare``); writes ``config.out`` and returns the result."""
    check_at_least_one(config, "limit", "texts", "text_tokens", "n_boot", "batch_size")
    config.check_model()
    config.check_source()
    out = check_out("--out", config.out, kind="file")
    merged_out = check_out("--merged", config.merged, kind="file")
    if config.merged is not None and config.compare is None:
        raise RunError("--merged needs --compare RESULT.json (the points are added to that result)")
    check_data(config.data)
    if config.data is not None and config.test_fraction is None:
        raise RunError("--data needs --test-fraction F: the shots come from the train part, the effect from the "
                       "held-out part")
    if any(isinstance(k, bool) or int(k) != k or k < 1 for k in config.ks):
        raise RunError(f"--ks: each k must be a whole number >= 1, got {list(config.ks)}")
    behavior = _behavior_name(config)
    try:
        instructions = behavior_instructions(behavior, config.instructions)
    except ValueError as exc:
        flag = "--instructions-for" if config.instructions_for else ("--behavior" if config.behavior else "--data")
        hint = " (name one with --instructions-for)" if "no instructions" in str(exc) and flag != "--instructions-for" else ""
        raise RunError(f"{flag}: {exc}{hint}") from None
    matched: Mapping[str, Any] | None = None
    vectors: dict = {}
    if config.compare is not None:
        if not Path(config.compare).is_file():
            raise RunError(f"--compare {config.compare}: no such file")
        try:
            matched = load_result(config.compare)
        except ResultFormatError as exc:
            raise RunError(f"--compare {exc}") from None
        if matched["kind"] != MATCHED_COST:
            raise RunError(f"--compare {config.compare}: a {matched['kind']} result, not matched_cost")
        paths = list(config.vector or (matched.get("sources") or {}).values())
        missing = [p for p in paths if not Path(p).is_dir()]
        if missing:
            raise RunError(f"--vector {missing[0]}: no such vector directory (give --vector DIR for each vector of "
                           "--compare)")
        if paths:
            vectors, _ = load_vectors(paths)
    if config.behavior is not None:
        train = load_behavior(config.behavior, "train")
        test = load_behavior(config.behavior, config.split)[: config.limit]
        data_info: dict[str, Any] = {"behavior": config.behavior, "split": config.split, "shots_from": "train"}
    else:
        train, _ = config.data_part("train")
        test, data_info = config.data_part("test")
        test = test[: config.limit]
        data_info |= {"shots_from": "train"}
    if not test:
        raise RunError(f"{config.data or config.behavior}: no held-out preference pairs")
    if matched is not None and matched.get("n_pairs") not in (None, len(test)):
        log(f"warning: --compare measured {matched.get('n_pairs')} pairs, this run {len(test)}: give the same "
            "--limit so that the rows compare the same pairs")
    texts = neutral_texts(config.neutral, config.texts)
    model = config.load_model()
    log(f"prompting: {behavior} on {model.cfg.model_name}; {len(test)} held-out pairs, {len(train)} training pairs, "
        f"{len(texts)} passages; k = {' '.join(str(int(k)) for k in config.ks)}"
        + (f"; vectors {', '.join(vectors)}" if vectors else ""))
    result = prompting_baseline(model, test, train, texts, behavior=behavior,
                                instructions=instructions, ks=tuple(int(k) for k in config.ks),
                                budgets=None if config.budgets is None else tuple(config.budgets),
                                max_tokens=config.text_tokens, batch_size=config.batch_size, n_boot=config.n_boot,
                                seed=config.seed, vectors=vectors, matched=matched)
    result = result.with_info(data=data_info, compare=config.compare)
    result = write_result(result, out, model)
    log(f"wrote {config.out}")
    if merged_out is not None and matched is not None:
        write_result(with_prompting_points(matched, result), merged_out, model)
        log(f"wrote {config.merged}")
    return result


def format_prompting(result: Mapping[str, Any]) -> str:
    """A prompting result as a markdown table."""
    return markdown_table(prompting_table(result))


__all__ = ["PromptingRun", "format_prompting", "prompting_run"]
