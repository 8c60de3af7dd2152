"""The ``workbench eval``, ``compare`` and ``refusal`` runs: saved vectors measured over multipliers.

``eval`` runs ``workbench.evaluate.suite.evaluate_vectors`` (BiPO's curves over the multiplier, Cao et al.
2024, arXiv 2406.00045; CAA's A/B protocol, Rimsky et al. 2023, arXiv 2312.06681); ``compare`` runs
``workbench.analysis.equal_cost.matched_cost`` (effects at equal utility cost); ``refusal`` runs
``workbench.studies.refusal.refusal_study`` (refusal rate with and without jailbreak templates, as BiPO's
jailbreaking experiment). Each checks its options and reads its data before the model loads, writes
its result JSON atomically and returns it; ``format_*`` render a result for the terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.analysis.equal_cost import MatchedCostConfig, check_budgets, cost_effect_table, matched_cost
from workbench.data.behaviors import load_behavior
from workbench.data.instructions import behavior_instructions
from workbench.data.pairs import as_ab_pairs, check_ab_pairs
from workbench.data.refusal import JAILBREAK_TEMPLATES, HarmfulRequest, load_refusal_requests
from workbench.evaluate.generation import load_refusal_prompts
from workbench.evaluate.prompting import prompting_baseline, with_prompting_points
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS
from workbench.evaluate.suite import METRICS, evaluate_vectors
from workbench.evaluate.truthfulqa import load_truthfulqa
from workbench.studies.refusal import refusal_study, without_text
from workbench.studies.runs import (DataOptions, Log, ModelOptions, RunError, check_at_least_one, check_data, check_out,
                                    check_run_multipliers, chosen_system_prompt, load_vectors, neutral_texts, silent,
                                    write_result)
from workbench.viz.report import markdown_table, prompting_section

DEFAULT_METRICS = ("logodds,ab,utility",)  # eval's metrics when none are given: inapplicable ones are skipped


@dataclass(kw_only=True)
class EvalRun(ModelOptions, DataOptions):
    """Options of ``workbench eval``."""

    vector: Sequence[str]  # vector directories
    out: str  # result JSON (kind "eval")
    metrics: Sequence[str] = DEFAULT_METRICS  # comma- or space-separated chunks of workbench.evaluate.suite.METRICS
    ab_from_text: bool = False  # ab on free-text pairs, as two-choice questions
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS
    limit: int | None = None  # at most N pairs, TruthfulQA questions, refusal prompts and neutral passages
    precision: str = "fp32"  # bf16: the blocks after the vector in a bf16 copy
    batch_size: int = 16
    truthfulqa: str | None = None  # TruthfulQA mc_task.json
    refusal_csv: str | None = None  # CSV of harmful requests with a "goal" column
    neutral: str | None = None  # neutral text file, one passage per line
    max_new_tokens: int = 48
    decodings: Sequence[str] = ("greedy", "sampled")
    system_prompt: str | None = None
    no_system_prompt: bool = False
    no_end_of_turn: bool = False
    strict_model: bool = False  # a vector made on another model name is an error
    n_boot: int = 1000
    seed: int = 0  # bootstrap intervals and sampled generations


def evaluate_run(config: EvalRun, log: Log = silent) -> dict[str, Any]:
    """Evaluate ``config.vector`` over ``config.multipliers``, write ``config.out`` and return the result."""
    metrics = [m.strip() for chunk in config.metrics for m in chunk.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise RunError(f"--metrics: unknown {bad or 'empty list'}; choose from {','.join(METRICS)}")
    explicit = tuple(config.metrics) != DEFAULT_METRICS
    if not config.multipliers:
        raise RunError("--multipliers: give at least one number")
    multipliers = check_run_multipliers(config.multipliers)
    check_at_least_one(config, "limit", "batch_size", "max_new_tokens", "n_boot")
    config.check_model()
    config.check_source()
    system_prompt = chosen_system_prompt(config.system_prompt, config.no_system_prompt)
    needs_pairs = [m for m in metrics if m in ("logodds", "ab", "open")]
    if needs_pairs and config.data is None and config.behavior is None:
        raise RunError(f"metric(s) {','.join(needs_pairs)} need preference pairs: give --data PATH or --behavior NAME")
    if "truthfulqa" in metrics and config.truthfulqa is None:
        raise RunError("--metrics truthfulqa needs --truthfulqa PATH (TruthfulQA's mc_task.json)")
    if "refusal" in metrics and config.refusal_csv is None:
        raise RunError("--metrics refusal needs --refusal-csv PATH (a CSV with a 'goal' column)")
    out = check_out("--out", config.out, kind="file")
    check_data(config.data)

    vectors, sources = load_vectors(config.vector)
    pairs, ab_pairs, data_info = None, None, {}
    if config.data is not None or config.behavior is not None:
        pairs, data_info = config.pairs("test")
        pairs = pairs[: config.limit]
        if not pairs:
            raise RunError(f"{config.data or config.behavior}: no preference pairs to evaluate")
        if "ab" in metrics and config.ab_from_text:
            ab_pairs = as_ab_pairs(pairs, seed=config.seed)
        elif "ab" in metrics and explicit:
            check_ab_pairs(pairs)  # a clear error naming the first pair that is not A/B
    truthfulqa = None
    if "truthfulqa" in metrics:
        config.check_test_fraction()
        # with --test-fraction: the held-out questions of the split the training pairs came from
        truthfulqa = load_truthfulqa(config.truthfulqa, config.limit, test_fraction=config.test_fraction,
                                     split_seed=config.split_seed)
    refusal_prompts = None
    if "refusal" in metrics:
        refusal_prompts = load_refusal_prompts(config.refusal_csv, limit=config.limit)
    neutral = neutral_texts(config.neutral, config.limit) if config.neutral is not None or (
        "utility" in metrics and config.limit is not None) else None

    model = config.load_model()
    log(f"eval: {', '.join(vectors)} on {model.cfg.model_name}; metrics {','.join(metrics)}; multipliers "
        f"{' '.join(f'{m:g}' for m in multipliers)}" + (f"; {len(pairs)} pairs" if pairs else ""))
    result = evaluate_vectors(
        model, vectors, pairs=pairs, multipliers=multipliers, metrics=metrics,
        system_prompt=system_prompt, append_end_of_turn=not config.no_end_of_turn, batch_size=config.batch_size,
        precision=config.precision, truthfulqa=truthfulqa, neutral_texts=neutral, refusal_prompts=refusal_prompts,
        decodings=list(config.decodings), max_new_tokens=config.max_new_tokens, n_boot=config.n_boot,
        seed=config.seed, on_inapplicable="error" if explicit else "skip", strict_model_name=config.strict_model,
        ab_pairs=ab_pairs, sources=sources, data_info=data_info, progress=True)
    result = write_result(result, out, model, system_prompt)
    log(f"wrote {config.out}")
    return result


@dataclass(kw_only=True)
class CompareRun(ModelOptions, DataOptions):
    """Options of ``workbench compare`` (matched cost)."""

    vector: Sequence[str]  # vector directories
    out: str  # result JSON (kind "matched_cost")
    cost: str = "kl"  # kl or perplexity
    budgets: Sequence[float] | None = None  # None: check_budgets' defaults for the cost
    equal_norm: str | None = None  # rescale every vector to the norm of this label's vector, or to this number
    max_multiplier: float = 64.0
    rel_tol: float = 0.05
    limit: int | None = None  # at most N held-out pairs
    neutral: str | None = None  # neutral text file, one passage per line
    texts: int = 16  # neutral passages of the cost search
    text_tokens: int = 64  # tokens per passage in the cost search
    n_boot: int = 1000
    seed: int = 0  # bootstrap seed
    all_points: bool = False  # the effect at every visited multiplier within budget, not only the found ones
    effect_grid: Sequence[float] | None = None  # fractions of the largest multiplier within budget (None: 0.5; []: none)
    prompting: bool = False  # also ask instead of steering (workbench.evaluate.prompting): points beside the vectors


def compare_run(config: CompareRun, log: Log = silent) -> dict[str, Any]:
    """Each vector's effect where its cost reaches each budget; writes ``config.out`` and returns the result."""
    try:
        budgets = check_budgets(None if config.budgets is None else list(config.budgets), config.cost)
    except ValueError as exc:
        raise RunError(f"--{'cost' if 'cost=' in str(exc) else 'budgets'}: {exc}") from None
    check_at_least_one(config, "limit", "texts", "text_tokens", "n_boot")
    grid = {} if config.effect_grid is None else {"effect_grid": tuple(config.effect_grid)}
    try:
        MatchedCostConfig(**grid)  # its own check of the fractions, before the model loads
    except ValueError as exc:
        raise RunError(f"--effect-grid: {exc}") from None
    config.check_model()
    config.check_source()
    out = check_out("--out", config.out, kind="file")
    check_data(config.data)
    vectors, sources = load_vectors(config.vector)
    equal_norm: str | float | None = config.equal_norm
    if equal_norm is not None and equal_norm not in vectors:
        try:
            equal_norm = float(equal_norm)
        except ValueError:
            raise RunError(f"--equal-norm {equal_norm!r}: neither a vector label ({', '.join(vectors)}) "
                           "nor a number") from None
    pairs = config.pairs("test")[0][: config.limit]
    if not pairs:
        raise RunError(f"{config.data or config.behavior}: no preference pairs")
    if config.prompting and (config.cost != "kl" or equal_norm is not None):
        raise RunError("--prompting compares with the KL cost of the vectors as given: not with --cost perplexity "
                       "or --equal-norm")
    shots = _prompting_inputs(config) if config.prompting else None
    texts = neutral_texts(config.neutral, config.texts)
    model = config.load_model()
    result = matched_cost(model, vectors, pairs, texts, cost=config.cost, budgets=budgets, equal_norm=equal_norm,
                          max_multiplier=config.max_multiplier, rel_tol=config.rel_tol, n_boot=config.n_boot,
                          seed=config.seed, utility_kw={"max_tokens": config.text_tokens},
                          all_points=config.all_points, progress=True, **grid)
    result["sources"] = sources
    if shots is not None:
        train, behavior = shots
        log(f"prompting: {behavior}'s instruction and k shots from {len(train)} training pairs")
        prompting = prompting_baseline(model, pairs, train, texts, behavior, vectors=vectors, matched=result,
                                       ks=tuple(k for k in (1, 2, 4, 8) if k <= len(train)),
                                       max_tokens=config.text_tokens, n_boot=config.n_boot, seed=config.seed)
        result = with_prompting_points(result, prompting).with_info(
            sources=sources, prompting_rows=prompting["rows"])
    result = write_result(result, out, model)
    return result


def _prompting_inputs(config: CompareRun) -> tuple[list, str]:
    """``--prompting``'s training pairs (the shots, disjoint from the held-out ones) and whose instructions."""
    if config.behavior is not None:
        train, behavior = load_behavior(config.behavior, "train"), config.behavior
    elif config.test_fraction is None:
        raise RunError("--prompting with --data needs --test-fraction F: the shots come from the train part")
    else:
        train, behavior = config.data_part("train")[0], Path(str(config.data)).resolve().parent.name
    try:
        behavior_instructions(behavior)
    except ValueError as exc:
        raise RunError(f"--prompting: {exc}") from None
    return train, behavior


def format_compare(result: Mapping[str, Any]) -> str:
    """A matched-cost result as a markdown table."""
    return "\n\n".join(p for p in (markdown_table(cost_effect_table(result)), prompting_section(result)) if p)


@dataclass(kw_only=True)
class RefusalRun(ModelOptions, DataOptions):
    """Options of ``workbench refusal``."""

    vector: Sequence[str]  # vector directories
    out: str  # result JSON (kind "refusal")
    format: str = "advbench"  # data is an AdvBench-format CSV (goal,target)
    limit: int | None = None  # at most this many requests
    templates: str = "none,refusal_suppression,persona"  # none and names of JAILBREAK_TEMPLATES
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS
    max_new_tokens: int = 32
    n_boot: int = 1000
    neutral: str | None = None  # neutral text file for the utility cost (None: the embedded text)
    no_utility: bool = False  # skip the utility cost
    no_text: bool = False  # leave the requests' and answers' text out of the result


def refusal_run(config: RefusalRun, log: Log = silent) -> dict[str, Any]:
    """Refusal rate and likelihood signal over multipliers and templates; writes ``config.out``, returns it."""
    templates = [t.strip() for t in config.templates.split(",") if t.strip()]
    bad = [t for t in templates if t != "none" and t not in JAILBREAK_TEMPLATES]
    if bad or not templates:
        raise RunError(f"--templates: unknown {bad or 'empty list'}; choose from none,{','.join(JAILBREAK_TEMPLATES)}")
    check_at_least_one(config, "limit", "max_new_tokens", "n_boot")
    multipliers = check_run_multipliers(config.multipliers)
    config.check_model()
    config.check_source(embedded="the embedded refusal requests")
    out = check_out("--out", config.out, kind="file")
    check_data(config.data)
    if config.data is not None:
        pairs, info = config.data_part("test")
        requests = [HarmfulRequest(p.question, p.not_matching, p.source) for p in pairs]
    else:
        requests, info = load_refusal_requests("test"), {"behavior": "refusal", "split": "test"}
    requests = requests[: config.limit]
    vectors, _ = load_vectors(config.vector)
    model = config.load_model()
    for v in vectors.values():
        v.check_compatible(model)
    result = refusal_study(model, vectors, requests, multipliers,
                           templates=[None if t == "none" else t for t in templates],
                           max_new_tokens=config.max_new_tokens, n_boot=config.n_boot, progress=True,
                           neutral_texts=None if config.no_utility else neutral_texts(config.neutral, None))
    result["data"] = info
    if config.no_text:
        result = without_text(result)
    result = write_result(result, out, model)
    return result


def format_refusal(result: Mapping[str, Any]) -> str:
    """A refusal result's rows (rate, log-odds and its interval, utility cost) as a markdown table."""
    table = pd.DataFrame(result["rows"])
    table = table[[c for c in ("vector", "template", "multiplier", "refusal_rate", "logodds", "logodds_ci_low",
                               "logodds_ci_high", "kl", "perplexity") if c in table.columns]]
    return markdown_table(table, digits=3)


__all__ = ["CompareRun", "EvalRun", "RefusalRun", "compare_run", "evaluate_run", "format_compare", "format_refusal",
           "refusal_run"]
