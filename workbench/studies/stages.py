"""The stages of the reproduction: each turns the study's vectors into one or a few results.

The study follows BiPO (Cao et al. 2024, arXiv 2406.00045, sections 4.2 to 4.5) on a small scale,
with CAA (Rimsky et al. 2023, arXiv 2312.06681) beside it. Each stage reads its settings from the
``StudyConfig`` (the stage's group of fields, or the study's own config from ``StudyConfig.*_config``),
calls one function of the layers below and returns results (``workbench.core.results``) that
``workbench.studies.reproduce.reproduce`` writes as ``<name>.json``:

* ``eval_stage``: held-out log-odds (and A/B, utility) curves (``workbench.evaluate.suite``);
* ``compare_stage``: matched cost of BiPO, RePS, CAA and PCA (``workbench.analysis.equal_cost``);
* ``sweep_stage``: a layer sweep of CAA and BiPO, and their cosine per layer (``workbench.analysis.sweep``);
* ``cosine_stage``: cosines between every method and behavior (``workbench.analysis.similarity``);
* ``logit_lens_stage``: top tokens of each vector and the steered per-layer lens (``workbench.analysis.logit_lens``);
* ``composition_stage``: two behaviors' vectors together (``workbench.analysis.composition``);
* ``transfer_stage``: the vector moved across layers and onto a fine-tuned copy (``workbench.analysis.transfer``);
* ``lora_transfer_stage``, ``refusal_stage``, ``truthfulness_stage``: the studies of this subpackage;
* ``prompting_stage``: asking instead of steering, beside the matched-cost vectors (``workbench.evaluate.prompting``);
* ``entanglement_stage``: each behavior's BiPO vector on every behavior (``workbench.analysis.entanglement``);
* ``conditional_stage``: the vectors gated by a CAST condition (``workbench.analysis.conditional``);
* ``mechanism_stage``: which components carry the vectors' effect (``workbench.analysis.patching``,
  ``attribution``, ``attention_shift``, ``routes``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from workbench.analysis.attention_shift import attention_shifts
from workbench.analysis.attribution import attribution_patching, steered_dla
from workbench.analysis.composition import composition_table
from workbench.analysis.conditional import conditional_steering
from workbench.analysis.entanglement import matched_multipliers, measure_entanglement
from workbench.analysis.equal_cost import matched_cost
from workbench.analysis.logit_lens import steered_logit_lens, vector_logit_lens
from workbench.analysis.patching import activation_patching
from workbench.analysis.routes import compare_routes
from workbench.analysis.similarity import cosine_table, method_cosines
from workbench.analysis.sweep import SweepResult, layer_sweep, parse_layers
from workbench.analysis.transfer import finetune_copy, layer_transfer, transfer_effect
from workbench.core.backend import Model
from workbench.core.results import SWEEP, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import load_neutral_text
from workbench.data.pairs import as_ab_pairs, is_ab_data
from workbench.data.refusal import load_refusal_requests
from workbench.evaluate.prompting import prompting_baseline
from workbench.evaluate.suite import evaluate_vectors
from workbench.studies.cells import StudySpec
from workbench.studies.config import StudyConfig
from workbench.studies.lora import lora_transfer
from workbench.studies.refusal import refusal_study
from workbench.studies.truthfulness import truthfulness_study
from workbench.studies.vectors import METHODS, study_pairs, study_vectors

logger = logging.getLogger(__name__)


def _neutral(config: StudyConfig, at_least_one: bool = False, cap: int | None = None) -> list[str]:
    """The neutral passages of the utility cost: the first ``utility_texts`` (None: all; 0: none, or the
    first one where a cost is needed, as in the matched-cost search), and at most ``cap``."""
    n = config.utility_texts
    if n is not None and at_least_one:
        n = max(n, 1)
    if cap is not None:
        n = cap if n is None else min(n, cap)
    return load_neutral_text()[:n]


# --------------------------------------------------------------------------- evaluation
def eval_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector],
               config: StudyConfig, progress: bool = False) -> dict[str, Any]:
    """Held-out log-odds (and A/B, utility) curves of BiPO vs CAA for one behavior (``evaluate_vectors``)."""
    _, test = study_pairs(behavior, config)
    metrics = ["logodds"] + (["ab"] if config.ab else []) + (["utility"] if config.utility_texts != 0 else [])
    texts = load_neutral_text()[: config.utility_texts] if config.utility_texts else None
    # A/B (CAA's protocol): the held-out pairs as A/B questions, the matching answer (A) for half of them
    ab_pairs = None if not config.ab or is_ab_data(test) else as_ab_pairs(test)
    res = evaluate_vectors(model, vectors, test, multipliers=config.multipliers, metrics=metrics,
                           neutral_texts=texts, ab_pairs=ab_pairs, precision=config.precision,
                           utility_max_tokens=config.utility_max_tokens, batch_size=config.eval_batch_size,
                           n_boot=config.n_boot, seed=config.seed, data_info={"behavior": behavior, "split": "test"},
                           progress=progress)
    return {**res, "behavior": behavior}


def compare_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector],
                  config: StudyConfig) -> dict[str, Any]:
    """The matched-cost comparison of ``vectors`` on the behavior's held-out pairs: at each KL budget
    on neutral text, both directions, the log-odds shift (``workbench.analysis.equal_cost``)."""
    _, test = study_pairs(behavior, config)
    used = {m: vectors[m] for m in config.compare_methods if m in vectors}
    texts = _neutral(config, at_least_one=True, cap=config.compare_texts)
    res = matched_cost(model, used, test, texts, cost="kl", budgets=config.budgets,
                       n_boot=config.n_boot, seed=config.seed,
                       utility_kw={"max_tokens": min(config.compare_max_tokens, config.utility_max_tokens),
                                   "batch_size": config.eval_batch_size, "precision": config.precision},
                       logodds_kw={"batch_size": config.eval_batch_size, "precision": config.precision})
    return {**res, "behavior": behavior, "data": {"behavior": behavior, "split": "test"}}


# --------------------------------------------------------------------------- layers and directions
def study_sweeps(model: Model, behavior: str, config: StudyConfig, runs_dir: str | Path,
                 cells: tuple[StudySpec, Path] | None = None) -> dict[str, SweepResult]:
    """CAA at every sweep layer and BiPO (``study_vectors``, cached in ``runs_dir``) at a few.

    Returns:
        ``{"caa": SweepResult, "bipo": SweepResult}`` (no ``"bipo"`` without ``bipo_sweep_layers``);
        BiPO's ``cos_ref`` is its cosine to the CAA vector of the same layer.
    """
    train, test = study_pairs(behavior, config)
    common = dict(multipliers=config.sweep_multipliers, hook=config.hook, batch_size=config.eval_batch_size)
    out = {"caa": layer_sweep(model, train, test, config.sweep_layers, method="caa", **common)}
    if config.bipo_sweep_layers:
        layers = parse_layers(config.bipo_sweep_layers, model.cfg.n_layers)
        bipo = {layer: study_vectors(model, behavior, config, runs_dir, layer=layer, cells=cells)["bipo"]
                for layer in layers}
        caa_ref = {layer: out["caa"].vectors[layer] for layer in layers if layer in out["caa"].vectors}
        out["bipo"] = layer_sweep(model, train, test, layers, method="bipo", vectors=bipo,
                                  reference=caa_ref or None, **common)
    return out


def sweep_stage(model: Model, behavior: str, config: StudyConfig, runs_dir: Path,
                cells: tuple[StudySpec, Path] | None = None) -> tuple[Result, Result | None]:
    """``study_sweeps`` as results: one ``sweep`` (rows of both methods) and BiPO's per-layer cosine
    to CAA (``cosine_methods``), or None without a BiPO sweep."""
    sweeps = study_sweeps(model, behavior, config, runs_dir, cells)
    rows = [dict(r, method=m) for m, s in sweeps.items() for r in s.records()]
    cosines = None
    if "bipo" in sweeps:
        caa_ref = {k: v for k, v in sweeps["caa"].vectors.items() if k in sweeps["bipo"].vectors}
        if caa_ref:
            cosines = method_cosines({k: sweeps["bipo"].vectors[k] for k in caa_ref}, caa_ref,
                                     names=("bipo", "caa")).with_info(behavior=behavior)
    info = {k: v for k, v in sweeps["caa"].info.items() if k not in ("method", "layers")}
    return result(SWEEP, behavior=behavior, **info, rows=rows), cosines


def cosine_stage(vectors: dict[str, dict[str, SteeringVector]]) -> Result:
    """Cosines between every (method, behavior) vector: a square ``cosine`` result."""
    labelled = {f"{m}:{b}": vecs[m] for m in METHODS for b, vecs in vectors.items()}
    return cosine_table(labelled)


def logit_lens_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector],
                     config: StudyConfig) -> dict[str, Result]:
    """Top tokens of each vector (one result) and the steered per-layer lens of each (one per method)."""
    _, test = study_pairs(behavior, config)
    tokens = vector_logit_lens(model, vectors, k=config.lens_k)
    out = {f"logit_lens_tokens_{behavior}": tokens.with_info(behavior=behavior)}
    for m, v in vectors.items():
        layers = steered_logit_lens(model, v, test, multiplier=1.0, batch_size=config.eval_batch_size)
        out[f"logit_lens_layers_{behavior}_{m}"] = layers.with_info(behavior=behavior, vector=m, multiplier=1.0,
                                                                    title=f"{m}, m = +1")
    return out


def composition_stage(model: Model, vectors: dict[str, dict[str, SteeringVector]],
                      config: StudyConfig) -> Result | None:
    """The BiPO vectors of ``config.composition`` applied together: a ``composition`` result."""
    names = [b for b in config.composition if b in vectors]
    if len(names) < 2:
        logger.info("composition needs two of %s among the study's behaviors; skipped", config.composition)
        return None
    vecs = {b: vectors[b]["bipo"] for b in names}
    pairs = {b: study_pairs(b, config)[1] for b in names}
    res = composition_table(model, vecs, pairs, multipliers=config.composition_multiplier,
                            batch_size=config.eval_batch_size)
    return res.with_info(method="bipo")


def transfer_stage(model: Model, behavior: str, vector: SteeringVector, config: StudyConfig) -> dict[str, Result]:
    """BiPO vector moved across layers, and applied to a fine-tuned copy of the model."""
    _, test = study_pairs(behavior, config)
    plus = [m for m in config.sweep_multipliers if m > 0] or [1.0]
    layers = layer_transfer(model, vector, test, offsets=config.transfer_offsets, multipliers=plus,
                            batch_size=config.eval_batch_size)
    out = {"transfer_layers": layers.with_info(behavior=behavior, method="bipo")}
    if config.finetune_steps > 0:
        target, losses = finetune_copy(model, load_neutral_text(), steps=config.finetune_steps, seed=config.seed,
                                       train_last=min(4, model.cfg.n_layers))
        table = transfer_effect(model, target, vector, test, multipliers=config.sweep_multipliers,
                                batch_size=config.eval_batch_size)
        out["transfer_model"] = table.with_info(behavior=behavior, method="bipo", source=str(model.cfg.model_name),
                                                target=str(target.cfg.model_name), finetune_losses=losses)
        del target
    return out


# --------------------------------------------------------------------------- the studies
def lora_transfer_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector], config: StudyConfig,
                        out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """BiPO and CAA vectors carried to LoRA fine-tunes of the model at ``config.lora_kl_targets``, and
    vectors made on each fine-tune carried back (``workbench.studies.lora``)."""
    train, test = study_pairs(behavior, config)
    res = lora_transfer(model, {m: vectors[m] for m in METHODS}, train, test, out_dir / "finetunes",
                        neutral_texts=_neutral(config, at_least_one=True), config=config.lora_config(),
                        progress=progress)
    return {**res, "behavior": behavior}


def refusal_stage(model: Model, vectors: dict[str, SteeringVector], config: StudyConfig) -> dict[str, Any]:
    """Refusal rate, likelihood signal and utility cost of the refusal vectors on the held-out requests,
    plain and inside ``config.refusal_templates`` (``workbench.studies.refusal.refusal_study``)."""
    requests = load_refusal_requests("test")[: config.n_test]
    res = refusal_study(model, {m: vectors[m] for m in METHODS}, requests, config.multipliers,
                        neutral_texts=_neutral(config) or None, config=config.refusal_config())
    return {**res, "data": {"behavior": "refusal", "split": "test"}}


def truthfulness_stage(model: Model, config: StudyConfig, runs_dir: Path,
                       progress: bool = False) -> dict[str, Any] | None:
    """A truthfulness vector (BiPO and CAA at the main layer) from TruthfulQA's ``mc2_targets`` pairs of
    the training questions, evaluated by MC1/MC2 (and held-out log-odds and utility) over multipliers on
    questions it never saw (``workbench.studies.truthfulness``). None without ``config.truthfulqa``."""
    if config.truthfulqa is None:
        logger.info("truthfulness: no TruthfulQA file (StudyConfig.truthfulqa / --truthfulqa); skipped")
        return None
    return truthfulness_study(model, config.truthfulqa, runs_dir / "truthfulness", config.bipo_config(),
                              neutral_texts=_neutral(config) or None, config=config.truthfulness_config(),
                              progress=progress)


# --------------------------------------------------------------------------- the reviewer's questions
def prompting_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector], config: StudyConfig,
                    compare: dict[str, Any] | None = None) -> Result:
    """The prompting baseline of one behavior: its instruction and k = 1, 2, 4, 8 shots from the training pairs
    (the k the training pairs allow), and, given the behavior's ``compare_stage`` result, the vectors as it
    found them and each with the instruction at its matched multipliers."""
    train, test = study_pairs(behavior, config)
    ks = tuple(k for k in (1, 2, 4, 8) if k <= len(train))
    return prompting_baseline(model, test, train, _neutral(config, at_least_one=True, cap=config.compare_texts),
                              behavior, vectors=vectors if compare is not None else None, matched=compare, ks=ks,
                              max_tokens=min(config.compare_max_tokens, config.utility_max_tokens),
                              batch_size=config.eval_batch_size, n_boot=config.n_boot, seed=config.seed)


def entanglement_stage(model: Model, vectors: dict[str, dict[str, SteeringVector]], config: StudyConfig,
                       compares: dict[str, dict[str, Any]] | None = None) -> Result:
    """Each behavior's BiPO vector on every behavior's held-out pairs, at its matched-cost multiplier at the
    study's second budget (its first when it has one) where ``compares`` has it, else at m = 1."""
    vecs = {b: v["bipo"] for b, v in vectors.items() if "bipo" in v}
    targets = {b: study_pairs(b, config)[1] for b in vectors}
    budget = config.budgets[min(1, len(config.budgets) - 1)]
    multipliers: dict[str, float] = {}
    for b, found in (compares or {}).items():
        if b in vecs:
            try:
                multipliers |= matched_multipliers({b: found}, "bipo", budget)
            except ValueError as exc:  # the budget not reached: this vector at m = 1
                logger.info("entanglement: %s; %s's vector at m = 1", exc, b)
    return measure_entanglement(model, vecs, targets, multipliers=multipliers or None,
                                batch_size=config.eval_batch_size, n_boot=config.n_boot,
                                seed=config.seed).with_info(budget=budget if multipliers else None)


def conditional_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector], config: StudyConfig) -> Result:
    """The behavior's vectors gated by a CAST condition fitted on the embedded questions (``conditional_steering``)."""
    return conditional_steering(model, vectors, topic=behavior, n_boot=config.n_boot, seed=config.seed)


def mechanism_stage(model: Model, behavior: str, vectors: dict[str, SteeringVector], config: StudyConfig,
                    pairs: int = 20) -> dict[str, Result]:
    """Which components carry each vector's effect at m = 1 on the first ``pairs`` held-out pairs: exact patching
    of every MLP, block and the direct path (heads: the gradient approximation, ``attribution_patching``, with
    its agreement with the exact rows), the direct logit attribution, the attention shift of the top 5 heads,
    and the routes of the vectors compared. Exact patching of every head as well is ``workbench mechanism``'s."""
    _, test = study_pairs(behavior, config)
    test = test[:pairs]
    out: dict[str, Result] = {}
    exact = {}
    for name, v in vectors.items():
        exact[name] = activation_patching(model, v, test, 1.0, components=("mlp", "block", "direct"),
                                          n_boot=config.n_boot, seed=config.seed)
        approx = attribution_patching(model, v, test, 1.0, exact=exact[name], n_boot=config.n_boot, seed=config.seed)
        out[f"mechanism_{behavior}_{name}_activation_patching"] = exact[name]
        out[f"mechanism_{behavior}_{name}_attribution_patching"] = approx
        if v.hook_name.endswith(("hook_resid_post", "hook_resid_pre")):
            out[f"mechanism_{behavior}_{name}_direct_logit_attribution"] = steered_dla(
                model, v, test, 1.0, n_boot=config.n_boot, seed=config.seed)
        out[f"mechanism_{behavior}_{name}_attention_shift"] = attention_shifts(
            model, v, test, 1.0, heads=approx, top_k=5, n_boot=config.n_boot, seed=config.seed)
    if len(exact) > 1:
        out[f"mechanism_{behavior}_routes"] = compare_routes(exact)
    return out


__all__ = ["compare_stage", "composition_stage", "conditional_stage", "cosine_stage", "entanglement_stage",
           "eval_stage", "logit_lens_stage", "lora_transfer_stage", "mechanism_stage", "prompting_stage",
           "refusal_stage", "study_sweeps", "sweep_stage", "transfer_stage", "truthfulness_stage"]
