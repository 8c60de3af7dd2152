"""Evaluating steering vectors: how strongly, how controllably and at what cost a vector steers.

BiPO (Cao et al. 2024, arXiv 2406.00045) reports steering as curves over the multiplier ``m`` of
``m * v``: persona behaviors, truthfulness, hallucination and jailbreaking, with little loss of
general ability. Its code judges open-ended answers with GPT-4; everything here is offline and works
for any ``SteeringVector`` (BiPO or a CAA/ActAdd/PCA baseline) on any ``HookedTransformer``.

Metrics (each a pure function returning a tidy ``pandas.DataFrame``; the model is unchanged and no
hook is left attached):

1. ``logodds_curve``: mean and bootstrap 95% interval of ``log p(matching) - log p(not_matching)``
   over held-out pairs, the win rate (share of pairs with log-odds > 0), and the same per answer
   token; ``steerability`` fits each pair's slope over ``m`` (Tan et al. 2024, arXiv 2407.12404).
2. ``ab_curve``: the CAA protocol (Rimsky et al. 2023, arXiv 2312.06681): the question with inline
   choices, the answer prefix ``"("``, and ``p(matching letter)`` normalised over the two letters.
3. ``workbench.evaluate.generation.open_ended_eval``: steered generations scored offline.
4. ``workbench.evaluate.truthfulqa.truthfulqa_mc``: TruthfulQA MC1 and MC2 (Lin et al. 2021).
5. ``workbench.evaluate.utility.utility_curve``: perplexity on neutral text and next-token agreement and
   KL with the unsteered model, to see where steering starts to break the model.
6. ``workbench.evaluate.generation.refusal_rate``: share of refused harmful requests (keyword rule).

Prompts are the chat template around the question with BiPO's system prompt
(``DEFAULT_SYSTEM_PROMPT``); answers get the end-of-turn token appended, as in BiPO's training.
Every metric is computed by the one scoring engine (``workbench.engine.scoring``): multipliers share the
blocks below the steered layer, and each prompt runs once for all of its answers.

``evaluate_vectors`` runs several metrics for several vectors and returns one JSON-ready dict
(``kind: "eval"``, schema in its docstring); ``format_eval`` renders it for the terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from workbench.core.backend import Model
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS, check_multipliers, records
from workbench.data.pairs import check_pairs, is_ab_data
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
from workbench.evaluate.preference import (ab_curve, ab_pair_probs, logodds_curve, pair_logodds, steerability,
                                       summarize_logodds)
from workbench.engine.scoring import Precision, VectorSpec, label_vectors, precision_runner
from workbench.core.results import EVAL, result
from workbench.core.vector import SteeringVector, __version__

logger = logging.getLogger(__name__)

METRICS = ("logodds", "ab", "open", "truthfulqa", "utility", "refusal")


# --------------------------------------------------------------------------- all metrics
def _vector_info(label: str, vecs: list[SteeringVector], source: str | None) -> dict[str, Any]:
    v = vecs[0]
    info = {"label": label, "path": source, "method": "+".join(x.method for x in vecs),
            "hook_name": v.hook_name if len(vecs) == 1 else [x.hook_name for x in vecs],
            "layer": v.layer if len(vecs) == 1 else [x.layer for x in vecs],
            "norm": v.norm if len(vecs) == 1 else [x.norm for x in vecs],
            "model_name": v.model_name, "data_fingerprint": v.data_fingerprint, "version": v.version}
    if len(vecs) > 1:
        info["components"] = [x.to_dict() for x in vecs]
    return info


def check_vectors(model: Model, specs: Mapping[str, list[SteeringVector]],
                  strict_model_name: bool = False) -> list[str]:
    """Check every vector fits ``model``; returns warnings.

    A different ``d_model`` or a hook the model lacks is an ``IncompatibleVectorError``. A vector
    made on a model of another *name* but the same ``d_model`` is only a warning (a fine-tuned or
    renamed copy is a legitimate transfer experiment), or an error with ``strict_model_name``.
    """
    warnings = []
    for label, vecs in specs.items():
        for v in vecs:
            v.check_compatible(model, strict_model_name=strict_model_name)
            if v.model_name and v.model_name != model.cfg.model_name:
                msg = (f"vector {label!r} was made on {v.model_name!r} but is evaluated on "
                       f"{model.cfg.model_name!r} (same d_model {v.d_model}); results measure transfer")
                logger.warning(msg)
                warnings.append(msg)
    return warnings


def _split_by(df: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    return {str(k): g.drop(columns=column).reset_index(drop=True) for k, g in df.groupby(column, sort=False)}


def evaluate_vectors(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec],
                     pairs: Sequence[Any] | None = None, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
                     metrics: Sequence[str] = ("logodds", "ab", "utility"), *,
                     system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, append_end_of_turn: bool = True,
                     batch_size: int = 16, precision: Precision = "fp32", max_length: int | None = 256,
                     truthfulqa: tuple[Sequence[Any] | None, Sequence[Any] | None] | str | None = None,
                     neutral_texts: Sequence[str] | None = None, refusal_prompts: Sequence[str] | None = None,
                     decodings: Sequence[str] = ("greedy", "sampled"), max_new_tokens: int = 48,
                     utility_max_tokens: int = 128, n_boot: int = 1000, seed: int = 0,
                     on_inapplicable: Literal["skip", "error"] = "skip", strict_model_name: bool = False,
                     validate_open: bool = True, ab_pairs: Sequence[Any] | None = None,
                     sources: Mapping[str, str] | None = None,
                     data_info: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run several metrics for several vectors; return one JSON-ready result.

    Args:
        model: the model (unchanged; no hook remains).
        vectors: ``{label: vector or [vectors applied together]}`` (or one vector / one list).
        pairs: held-out preference pairs (logodds, ab, open).
        ab_pairs: pairs for ``ab`` instead of ``pairs`` (e.g. ``workbench.data.formats.as_ab_pairs(pairs)``,
            the same pairs as A/B questions).
        metrics: any of ``"logodds", "ab", "open", "truthfulqa", "utility", "refusal"``.
        truthfulqa: a path to TruthfulQA's ``mc_task.json`` or ``(mc1, mc2)`` question lists.
        neutral_texts: passages for ``utility`` (default: the embedded neutral text).
        refusal_prompts: harmful requests for ``refusal`` (``load_refusal_prompts``).
        on_inapplicable: a metric whose data is missing or of the wrong kind (``ab`` on free-text
            pairs, ``truthfulqa`` without questions ...) is skipped with a warning (recorded under
            ``"skipped"``) or raises ``ValueError``.
        strict_model_name: a vector made on a model of another name is an error, not a warning.
        sources: ``{label: path}`` recorded in ``vectors[].path``.
        data_info: recorded as ``"data"`` (e.g. path, format, split); pair count and fingerprint are added.

    Returns:
        ``{"kind": "eval", "schema_version": 2, "workbench_version", "model": name, "model_config":
        {n_layers, d_model}, "multipliers": [...], "vectors": [{label, path, method, hook_name, layer,
        norm, model_name, data_fingerprint, version}], "data": {...}, "config": {...},
        "metrics": {table: [row, ...]}, "generations": {"open": [...], "refusal": [...]},
        "validation": {"open_scorer": [...]}, "skipped": {metric: reason}, "warnings": [...],
        "timings": {metric: seconds}}``. Metric tables (every row has ``vector``; those with a
        ``multiplier`` column are curves with ``mean, ci_low, ci_high``): ``logodds`` and
        ``logodds_per_token`` (+ ``win_rate``), ``steerability`` (slope per vector), ``ab``
        (+ ``p_letters, matching_rate``), ``open`` (+ ``decoding, match_rate``), ``mc1``, ``mc2``,
        ``perplexity``, ``top1_agreement``, ``kl_from_unsteered`` (+ ``n_tokens``), ``refusal``.
    """
    from workbench.data.pairs import fingerprint

    specs = label_vectors(vectors)
    mults = check_multipliers(multipliers)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if on_inapplicable not in ("skip", "error"):
        raise ValueError(f"on_inapplicable={on_inapplicable!r}: use 'skip' or 'error'")
    warnings = check_vectors(model, specs, strict_model_name)
    if pairs is not None:
        pairs = check_pairs(pairs)
    skipped: dict[str, str] = {}

    def inapplicable(metric: str, reason: str) -> None:
        if on_inapplicable == "error":
            raise ValueError(f"metric {metric!r}: {reason}")
        logger.warning("skipping metric %r: %s", metric, reason)
        skipped[metric] = reason

    runner = precision_runner(model, precision)  # shared by every metric
    common = dict(batch_size=batch_size, progress=progress)
    tables: dict[str, pd.DataFrame] = {}
    generations: dict[str, list[dict[str, Any]]] = {}
    validation: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    for metric in dict.fromkeys(metrics):
        t0 = time.perf_counter()
        needs_pairs = metric in ("logodds", "open") or (metric == "ab" and ab_pairs is None)
        if needs_pairs and pairs is None:
            inapplicable(metric, "needs preference pairs (pass pairs=...)")
            continue
        if metric == "logodds":
            per = pair_logodds(model, specs, pairs, mults, system_prompt=system_prompt, precision=precision,
                               append_end_of_turn=append_end_of_turn, max_length=max_length, runner=runner, **common)
            curve = summarize_logodds(per, n_boot, seed)
            for norm, g in _split_by(curve, "normalization").items():
                tables["logodds" if norm == "sum" else "logodds_per_token"] = g
            tables["steerability"] = steerability(per, n_boot=n_boot, seed=seed)
        elif metric == "ab":
            ab_data = pairs if ab_pairs is None else check_pairs(ab_pairs)
            if not is_ab_data(ab_data):
                inapplicable("ab", "needs A/B pairs whose answers are letters like '(A)' (format 'ab-json', or "
                                   "ab_pairs=as_ab_pairs(pairs)); the first pair's matching "
                                   f"answer is {ab_data[0].matching[:40]!r}")
                continue
            tables["ab"] = ab_curve(model, specs, ab_data, mults, system_prompt=system_prompt, precision=precision,
                                    n_boot=n_boot, seed=seed, runner=runner, **common)
        elif metric == "open":
            from workbench.evaluate.generation import open_ended_eval, validate_open_scorer

            summary, gens = open_ended_eval(model, specs, pairs, mults, system_prompt=system_prompt,
                                            decodings=decodings, max_new_tokens=max_new_tokens, seed=seed,
                                            n_boot=n_boot, **common)
            tables["open"] = summary
            generations["open"] = records(gens)
            if validate_open:
                validation["open_scorer"] = records(validate_open_scorer(model, pairs, system_prompt=system_prompt,
                                                                         batch_size=batch_size))
        elif metric == "truthfulqa":
            from workbench.evaluate.truthfulqa import load_truthfulqa, truthfulqa_mc

            if truthfulqa is None:
                inapplicable("truthfulqa", "needs TruthfulQA questions (truthfulqa=path to mc_task.json)")
                continue
            mc1, mc2 = load_truthfulqa(truthfulqa) if isinstance(truthfulqa, (str, Path)) else truthfulqa
            tqa = truthfulqa_mc(model, specs, mc1, mc2, mults, system_prompt=system_prompt, precision=precision,
                                n_boot=n_boot, seed=seed, runner=runner, **common)
            tables.update(_split_by(tqa, "targets"))
        elif metric == "utility":
            from workbench.evaluate.utility import utility_curve

            u = utility_curve(model, specs, neutral_texts, mults, max_tokens=utility_max_tokens, precision=precision,
                              n_boot=n_boot, seed=seed, runner=runner, **common)
            tables.update(_split_by(u, "measure"))
        elif metric == "refusal":
            from workbench.evaluate.generation import refusal_eval

            if not refusal_prompts:
                inapplicable("refusal", "needs harmful-request prompts (refusal_prompts=..., e.g. "
                                        "load_refusal_prompts(path to a CSV with a 'goal' column))")
                continue
            summary, gens = refusal_eval(model, specs, refusal_prompts, mults, system_prompt=system_prompt,
                                         max_new_tokens=max_new_tokens, n_boot=n_boot, seed=seed, **common)
            tables["refusal"] = summary
            generations["refusal"] = records(gens)
        timings[metric] = round(time.perf_counter() - t0, 3)
    data = dict(data_info or {})
    if pairs is not None:
        data |= {"n_pairs": len(pairs), "fingerprint": fingerprint(pairs)}
    if ab_pairs is not None:
        data |= {"ab_n_pairs": len(ab_pairs), "ab_fingerprint": fingerprint(ab_pairs)}
    return result(
        EVAL, workbench_version=__version__,
        model=str(model.cfg.model_name),
        model_config={"n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model},
        multipliers=mults,
        vectors=[_vector_info(k, v, (sources or {}).get(k)) for k, v in specs.items()],
        data=data,
        config={"metrics": list(dict.fromkeys(metrics)), "system_prompt": system_prompt,
                "append_end_of_turn": append_end_of_turn, "batch_size": batch_size, "precision": precision,
                "max_length": max_length, "n_boot": n_boot, "seed": seed, "decodings": list(decodings),
                "max_new_tokens": max_new_tokens, "utility_max_tokens": utility_max_tokens},
        metrics=tables,
        generations=generations, validation=validation, skipped=skipped, warnings=warnings,
        timings=timings,
    )


# --------------------------------------------------------------------------- terminal tables
_HIDE = {"normalization", "measure", "targets"}
_TITLES = {"logodds": "log-odds  log p(matching) - log p(not matching)  [mean, 95% bootstrap CI]",
           "logodds_per_token": "log-odds per answer token",
           "steerability": "steerability: slope of log-odds per unit multiplier",
           "ab": "A/B: p(matching letter), normalised over the two letters",
           "open": "open-ended: likelihood-judge score",
           "mc1": "TruthfulQA MC1 accuracy", "mc2": "TruthfulQA MC2 score",
           "perplexity": "perplexity on neutral text", "top1_agreement": "top-1 next-token agreement with unsteered",
           "kl_from_unsteered": "KL(unsteered || steered) per token", "refusal": "refusal rate (keyword rule)"}


def format_eval(results: Mapping[str, Any], max_generations: int = 2, width: int = 100) -> str:
    """Text tables of an ``evaluate_vectors`` result, one per metric, plus a few generations."""
    lines = [f"model {results.get('model')}: " + ", ".join(
        f"{v['label']} = {v['method']}@{v['hook_name']} (norm {v['norm']:.3g})" if not isinstance(v["norm"], list)
        else f"{v['label']} = {v['method']}" for v in results.get("vectors", []))]
    for name, rows in results.get("metrics", {}).items():
        if not rows:
            continue
        df = pd.DataFrame(rows).drop(columns=[c for c in _HIDE if c in rows[0]])
        if "multiplier" in df.columns and "vector" in df.columns and "mean" in df.columns and len(df) > 1:
            df = df.sort_values(["vector", "multiplier"], kind="stable")
        lines += ["", f"== {name}: {_TITLES.get(name, name)}",
                  df.to_string(index=False, float_format=lambda x: f"{x:.4g}")]
    for name, rows in results.get("validation", {}).items():
        lines += ["", f"== validation of the {name}",
                  pd.DataFrame(rows).to_string(index=False, float_format="{:.3f}".format)]
    for name, rows in results.get("generations", {}).items():
        lines += ["", f"== {name} generations (first {max_generations} per vector and multiplier)"]
        seen: dict[tuple, int] = {}
        for r in rows:
            key = (r["vector"], r["multiplier"], r.get("decoding"))
            if seen.get(key, 0) >= max_generations:
                continue
            seen[key] = seen.get(key, 0) + 1
            text = " ".join(str(r["generation"]).split())
            tag = f"[{r['vector']} m={r['multiplier']:+g}{' ' + r['decoding'] if r.get('decoding') else ''}]"
            extra = f" score={r['score']:+.2f}" if r.get("score") is not None else (
                " REFUSED" if r.get("refused") else "")
            lines.append(f"{tag}{extra} {text[: max(20, width - len(tag))]}")
    for metric, reason in results.get("skipped", {}).items():
        lines.append(f"(skipped {metric}: {reason})")
    for w in results.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


__all__ = ["DEFAULT_MULTIPLIERS", "METRICS", "ab_curve", "ab_pair_probs",
           "check_vectors", "evaluate_vectors", "format_eval", "logodds_curve", "pair_logodds", "steerability",
           "summarize_logodds"]
