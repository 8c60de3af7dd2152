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
6. ``workbench.evaluate.generation.refusal_eval``: share of refused harmful requests (keyword rule).

Prompts are the chat template around the question with BiPO's system prompt
(``DEFAULT_SYSTEM_PROMPT``); answers get the end-of-turn token appended, as in BiPO's training.
Every metric is computed by the one scoring engine (``workbench.engine.scoring``): multipliers share the
blocks below the steered layer, and each prompt runs once for all of its answers.

``evaluate_vectors(model, vectors, pairs, EvalConfig)`` runs several metrics for several vectors and
returns one JSON-ready result (``kind: "eval"``, schema in its docstring); ``format_eval`` renders it
for the terminal. Its options are one ``EvalConfig`` (SAELens' config style: a dataclass validated in
``__post_init__``, with ``to_dict``/``from_dict``); the metrics are a table, ``METRICS``, of
functions from the checked inputs to result tables. Inputs are checked once, here, at the edge: the
metric functions call the private, trusting halves of the public metric functions.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from workbench.core.backend import Model
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
from workbench.core.options import with_options
from workbench.core.results import EVAL, result
from workbench.core.vector import SteeringVector, __version__
from workbench.data.formats import load_truthfulqa
from workbench.data.pairs import MCQuestion, PreferencePair, check_pairs, fingerprint, is_ab_data
from workbench.engine.conditions import VectorSpec, label_vectors
from workbench.engine.runners import Precision, precision_runner
from workbench.evaluate.generation import (DecodingConfig, _open_ended, _refusal_eval, _validate_open_scorer,
                                           check_prompts)
from workbench.evaluate.preference import (_ab_pair_probs, _pair_logodds, ab_curve, logodds_curve, logodds_tables,
                                           steerability, summarize_ab, summarize_logodds)
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS, check_multipliers, records
from workbench.evaluate.truthfulqa import _score_questions, check_truthfulqa, summarize_truthfulqa
from workbench.evaluate.utility import KL_BOUND, _utility_per_text, check_texts, kl_beyond_bound, utility_tables

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the configuration
@dataclass(frozen=True)
class EvalConfig:
    """How ``evaluate_vectors`` evaluates: metrics, multipliers, prompts, sampling and statistics."""

    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS  # the m of m * v, for every metric
    metrics: tuple[str, ...] = ("logodds", "ab", "utility")  # names of METRICS, run in this order
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # system turn of every chat prompt (None: none)
    append_end_of_turn: bool = True  # logodds: close each answer with the end-of-turn token (BiPO)
    batch_size: int = 16  # items per forward pass
    precision: Precision = "fp32"  # "bf16": the blocks after the vector run in a bf16 copy
    max_length: int | None = 256  # logodds: prompts cut from the left beyond this many tokens
    decodings: tuple[str, ...] = ("greedy", "sampled")  # open: the decodings of the generations
    max_new_tokens: int = 48  # open, refusal: tokens generated per answer
    utility_max_tokens: int = 128  # utility: each neutral passage cut to this many tokens
    n_boot: int = 1000  # bootstrap resamples of every interval (0: no interval)
    seed: int = 0  # seed of the bootstrap and of sampled generations
    on_inapplicable: Literal["skip", "error"] = "skip"  # a metric without its data: skip it, or raise
    strict_model_name: bool = False  # a vector made on a model of another name is an error, not a warning
    validate_open: bool = True  # open: also validate the likelihood judge on the references
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # a frozen dataclass: normalise the sequences once, here
        set_(self, "multipliers", tuple(check_multipliers(self.multipliers)))
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(dict.fromkeys(self.metrics))
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
        set_(self, "metrics", metrics)
        if self.on_inapplicable not in ("skip", "error"):
            raise ValueError(f"on_inapplicable={self.on_inapplicable!r}: use 'skip' or 'error'")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}: use 'fp32' or 'bf16'")
        for name in ("batch_size", "max_new_tokens", "utility_max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_length is not None and (not isinstance(self.max_length, numbers.Integral) or self.max_length < 1):
            raise ValueError(f"max_length must be a positive integer or None, got {self.max_length!r}")
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, numbers.Integral) or self.n_boot < 0:
            raise ValueError(f"n_boot must be an integer >= 0, got {self.n_boot!r}")
        set_(self, "decodings", self.generation().decodings)  # validated by DecodingConfig

    def generation(self) -> DecodingConfig:
        """The decoding options of the ``open`` metric."""
        return DecodingConfig(decodings=self.decodings, max_new_tokens=self.max_new_tokens, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalConfig:
        """The inverse of ``to_dict``; an unknown key is a ``TypeError`` naming it."""
        return with_options(cls, None, dict(d), "EvalConfig.from_dict")

    def recorded(self) -> dict[str, Any]:
        """The ``"config"`` recorded in the result (the fields that change numbers; multipliers have their own key)."""
        d = self.to_dict()
        return {k: d[k] for k in ("metrics", "system_prompt", "append_end_of_turn", "batch_size", "precision",
                                  "max_length", "n_boot", "seed", "decodings", "max_new_tokens",
                                  "utility_max_tokens")}


# --------------------------------------------------------------------------- checked inputs
class _Inapplicable(Exception):
    """A metric whose data is missing or of the wrong kind (skipped or raised, ``on_inapplicable``)."""


@dataclass
class EvalInputs:
    """Everything a metric reads, checked once by ``evaluate_vectors``."""

    model: Model
    specs: dict[str, list[SteeringVector]]  # {label: vectors applied together}
    config: EvalConfig
    runner: Model  # the model that runs the steered blocks, shared by every metric (precision_runner)
    pairs: list[PreferencePair] | None = None
    ab_pairs: list[PreferencePair] | None = None
    truthfulqa: tuple[list[MCQuestion], list[MCQuestion]] | None = None
    neutral_texts: list[str] | None = None
    refusal_prompts: list[str] | None = None
    common: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.common = {"batch_size": self.config.batch_size, "progress": self.config.progress}

    def need_pairs(self) -> list[PreferencePair]:
        if self.pairs is None:
            raise _Inapplicable("needs preference pairs (pass pairs=...)")
        return self.pairs


#: What a metric returns: ``{"metrics": {table: DataFrame}, "generations": {...}, "validation": {...}}``.
MetricOutput = dict[str, dict[str, Any]]


def _split_by(df: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    return {str(k): g.drop(columns=column).reset_index(drop=True) for k, g in df.groupby(column, sort=False)}


# --------------------------------------------------------------------------- the metrics
def _logodds(x: EvalInputs) -> MetricOutput:
    c = x.config
    per = _pair_logodds(x.model, x.specs, x.need_pairs(), c.multipliers, system_prompt=c.system_prompt,
                        precision=c.precision, append_end_of_turn=c.append_end_of_turn, max_length=c.max_length,
                        runner=x.runner, **x.common)
    return {"metrics": logodds_tables(per, c.n_boot, c.seed)}


def _ab(x: EvalInputs) -> MetricOutput:
    c = x.config
    data = x.need_pairs() if x.ab_pairs is None else x.ab_pairs
    if not is_ab_data(data):
        raise _Inapplicable("needs A/B pairs whose answers are letters like '(A)' (format 'ab-json', or "
                            "ab_pairs=as_ab_pairs(pairs)); the first pair's matching "
                            f"answer is {data[0].matching[:40]!r}")
    per = _ab_pair_probs(x.model, x.specs, data, c.multipliers, system_prompt=c.system_prompt,
                         precision=c.precision, runner=x.runner, **x.common)
    return {"metrics": {"ab": summarize_ab(per, c.n_boot, c.seed)}}


def _open(x: EvalInputs) -> MetricOutput:
    c = x.config
    pairs = x.need_pairs()
    summary, gens = _open_ended(x.model, x.specs, pairs, c.multipliers, c.generation(),
                                system_prompt=c.system_prompt, n_boot=c.n_boot, **x.common)
    out: MetricOutput = {"metrics": {"open": summary}, "generations": {"open": records(gens)}}
    if c.validate_open:
        out["validation"] = {"open_scorer": records(_validate_open_scorer(
            x.model, pairs, system_prompt=c.system_prompt, batch_size=c.batch_size))}
    return out


def _truthfulqa(x: EvalInputs) -> MetricOutput:
    c = x.config
    if x.truthfulqa is None:
        raise _Inapplicable("needs TruthfulQA questions (truthfulqa=path to mc_task.json)")
    per = _score_questions(x.model, x.specs, *x.truthfulqa, c.multipliers, system_prompt=c.system_prompt,
                           precision=c.precision, runner=x.runner, **x.common)
    return {"metrics": _split_by(summarize_truthfulqa(per, c.n_boot, c.seed), "targets")}


def _utility(x: EvalInputs) -> MetricOutput:
    c = x.config
    per = _utility_per_text(x.model, x.specs, x.neutral_texts, c.multipliers, max_tokens=c.utility_max_tokens,
                            precision=c.precision, runner=x.runner, **x.common)
    return {"metrics": utility_tables(per, c.n_boot, c.seed)}


def _refusal(x: EvalInputs) -> MetricOutput:
    c = x.config
    if not x.refusal_prompts:
        raise _Inapplicable("needs harmful-request prompts (refusal_prompts=..., e.g. "
                            "load_refusal_prompts(path to a CSV with a 'goal' column))")
    summary, gens = _refusal_eval(x.model, x.specs, x.refusal_prompts, c.multipliers, system_prompt=c.system_prompt,
                                  max_new_tokens=c.max_new_tokens, n_boot=c.n_boot, seed=c.seed, **x.common)
    return {"metrics": {"refusal": summary}, "generations": {"refusal": records(gens)}}


#: The metric table: name -> function from the checked inputs to its tables (in this order in ``--help``).
METRICS: dict[str, Callable[[EvalInputs], MetricOutput]] = {
    # preference log-odds curve, per token, and per-example steerability (BiPO; Tan et al. 2024): the
    # steerability tables come from the same per-pair log-odds, so they cost no forward pass of their own
    "logodds": _logodds,
    "ab": _ab,  # CAA's A/B probability of the matching letter
    "open": _open,  # steered generations scored by the likelihood judge
    "truthfulqa": _truthfulqa,  # TruthfulQA MC1 and MC2
    "utility": _utility,  # perplexity, top-1 agreement and KL(unsteered || steered) on neutral text
    "refusal": _refusal,  # refusal rate of greedy answers to harmful requests
}


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


def evaluate_vectors(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec],
                     pairs: Sequence[Any] | None = None, config: EvalConfig | None = None, *,
                     ab_pairs: Sequence[Any] | None = None,
                     truthfulqa: tuple[Sequence[Any] | None, Sequence[Any] | None] | str | Path | None = None,
                     neutral_texts: Sequence[str] | None = None, refusal_prompts: Sequence[str] | None = None,
                     sources: Mapping[str, str] | None = None, data_info: Mapping[str, Any] | None = None,
                     **options: Any) -> dict[str, Any]:
    """Run several metrics for several vectors; return one JSON-ready result.

    Every input is checked here, once (pairs by ``check_pairs``, vectors by ``check_vectors``, the
    options by ``EvalConfig``); the metrics of ``METRICS`` trust what they are given.

    Args:
        model: the model (unchanged; no hook remains).
        vectors: ``{label: vector or [vectors applied together]}`` (or one vector / one list).
        pairs: held-out preference pairs (logodds, ab, open).
        config: the options (``EvalConfig``; default ``EvalConfig()``).
        ab_pairs: pairs for ``ab`` instead of ``pairs`` (e.g. ``workbench.data.as_ab_pairs(pairs)``,
            the same pairs as A/B questions).
        truthfulqa: a path to TruthfulQA's ``mc_task.json`` or ``(mc1, mc2)`` question lists.
        neutral_texts: passages for ``utility`` (default: the embedded neutral text).
        refusal_prompts: harmful requests for ``refusal`` (``workbench.data.load_refusal_prompts``).
        sources: ``{label: path}`` recorded in ``vectors[].path``.
        data_info: recorded as ``"data"`` (e.g. path, format, split); pair count and fingerprint are added.
        **options: ``EvalConfig`` fields replacing those of ``config`` (``multipliers``, ``metrics``
            of ``"logodds", "ab", "open", "truthfulqa", "utility", "refusal"``, ``n_boot``, ...); an
            unknown name is a ``TypeError``. With ``on_inapplicable="skip"`` a metric whose data is
            missing or of the wrong kind (``ab`` on free-text pairs, ``truthfulqa`` without
            questions ...) is skipped with a warning (recorded under ``"skipped"``); with
            ``"error"`` it raises ``ValueError``.

    Returns:
        ``{"kind": "eval", "schema_version": workbench.core.results.SCHEMA_VERSION, "workbench_version", "model": name, "model_config":
        {n_layers, d_model}, "multipliers": [...], "vectors": [{label, path, method, hook_name, layer,
        norm, model_name, data_fingerprint, version}], "data": {...}, "config": {...},
        "metrics": {table: [row, ...]}, "generations": {"open": [...], "refusal": [...]},
        "validation": {"open_scorer": [...]}, "skipped": {metric: reason}, "warnings": [...],
        "timings": {metric: seconds}}``. Metric tables (every row has ``vector``; those with a
        ``multiplier`` column are curves with ``mean, ci_low, ci_high``): ``logodds`` and
        ``logodds_per_token`` (+ ``win_rate``), ``steerability`` (per vector: mean slope, anti-steerable
        share and share moved by more than one nat at the largest ``|m|`` of each sign, with intervals),
        ``steerability_pairs`` (per pair: ``slope``, ``anti_steerable``, ``shift@<m>``), ``ab``
        (+ ``p_letters, matching_rate``), ``open`` (+ ``decoding, match_rate``), ``mc1``, ``mc2``,
        ``perplexity``, ``top1_agreement``, ``kl_from_unsteered`` (KL(unsteered || steered), + ``n_tokens``),
        ``refusal``.

    Example:
        >>> res = evaluate_vectors(model, {"bipo": v}, test, EvalConfig(metrics=("logodds", "utility")))
        >>> res = evaluate_vectors(model, {"bipo": v}, test, multipliers=[-1, 0, 1], n_boot=200)
    """
    cfg = with_options(EvalConfig, config, options, "evaluate_vectors")
    specs = label_vectors(vectors)
    warnings = check_vectors(model, specs, cfg.strict_model_name)
    pairs = None if pairs is None else check_pairs(pairs)
    ab_pairs = None if ab_pairs is None else check_pairs(ab_pairs, "ab_pairs")
    wanted = set(cfg.metrics)
    if "truthfulqa" in wanted and truthfulqa is not None:
        truthfulqa = check_truthfulqa(*(load_truthfulqa(truthfulqa) if isinstance(truthfulqa, (str, Path))
                                        else truthfulqa))
    inputs = EvalInputs(
        model, specs, cfg, precision_runner(model, cfg.precision), pairs=pairs, ab_pairs=ab_pairs,
        truthfulqa=truthfulqa if "truthfulqa" in wanted else None,
        neutral_texts=check_texts(neutral_texts) if "utility" in wanted else None,
        refusal_prompts=check_prompts(refusal_prompts) if "refusal" in wanted and refusal_prompts else None)
    out: MetricOutput = {"metrics": {}, "generations": {}, "validation": {}}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    for metric in cfg.metrics:
        t0 = time.perf_counter()
        try:
            got = METRICS[metric](inputs)
        except _Inapplicable as e:
            if cfg.on_inapplicable == "error":
                raise ValueError(f"metric {metric!r}: {e}") from None
            logger.warning("skipping metric %r: %s", metric, e)
            skipped[metric] = str(e)
            continue
        for section, tables in got.items():
            out[section].update(tables)
        timings[metric] = round(time.perf_counter() - t0, 3)
    extra: dict[str, Any] = {}
    if "kl_from_unsteered" in out["metrics"]:  # the utility metric ran: flag multipliers past the bound
        beyond = kl_beyond_bound(out["metrics"]["kl_from_unsteered"])
        extra["utility_beyond_bound"] = {"kl_bound": KL_BOUND, "rows": beyond}
        for r in beyond:
            logger.warning("%s at multiplier %+g: KL(unsteered || steered) = %.3g nats per token, beyond %g: its "
                           "numbers describe a model far from its own distribution", r["vector"], r["multiplier"],
                           r["kl"], KL_BOUND)
    data = dict(data_info or {})
    if pairs is not None:
        data |= {"n_pairs": len(pairs), "fingerprint": fingerprint(pairs)}
    if ab_pairs is not None:
        data |= {"ab_n_pairs": len(ab_pairs), "ab_fingerprint": fingerprint(ab_pairs)}
    return result(
        EVAL, workbench_version=__version__,
        model=str(model.cfg.model_name),
        model_config={"n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model},
        multipliers=list(cfg.multipliers),
        vectors=[_vector_info(k, v, (sources or {}).get(k)) for k, v in specs.items()],
        data=data, config=cfg.recorded(), metrics=out["metrics"],
        generations=out["generations"], validation=out["validation"], skipped=skipped, warnings=warnings,
        timings=timings, **extra,
    )


# --------------------------------------------------------------------------- terminal tables
_HIDE = {"normalization", "measure", "targets"}
_NOT_PRINTED = {"steerability_pairs"}  # one row per pair: for figures and files, not the terminal
_TITLES = {"logodds": "log-odds  log p(matching) - log p(not matching)  [mean, 95% bootstrap CI]",
           "logodds_per_token": "log-odds per answer token",
           "steerability": "steerability: slope of log-odds per unit multiplier; anti-steerable share (slope < 0) "
                           "and share moved > 1 nat at the largest |m| of each sign, with 95% bootstrap CIs",
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
    flags = results.get("utility_beyond_bound") or {}
    beyond = {(r["vector"], float(r["multiplier"])) for r in flags.get("rows", [])}
    for name, rows in results.get("metrics", {}).items():
        if not rows or name in _NOT_PRINTED:
            continue
        df = pd.DataFrame(rows).drop(columns=[c for c in _HIDE if c in rows[0]])
        if beyond and {"vector", "multiplier"} <= set(df.columns):  # "!" marks a multiplier past the KL bound
            df["!"] = ["!" if (str(v), float(m)) in beyond else "" for v, m in zip(df["vector"], df["multiplier"])]
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
    if beyond:
        lines.append(f"! KL(unsteered || steered) beyond {flags['kl_bound']:g} nats per token at: " + ", ".join(
            f"{r['vector']} m={r['multiplier']:+g} (KL {r['kl']:.3g})" for r in flags["rows"]))
    for metric, reason in results.get("skipped", {}).items():
        lines.append(f"(skipped {metric}: {reason})")
    for w in results.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


__all__ = ["DEFAULT_MULTIPLIERS", "METRICS", "EvalConfig", "EvalInputs", "ab_curve", "check_vectors",
           "evaluate_vectors", "format_eval", "logodds_curve", "steerability", "summarize_logodds"]
