"""workbench: a TransformerLens workbench for steering vectors.

BiPO (bi-directional preference optimization, Cao et al. 2024, arXiv 2406.00045) and RePS
(reference-free preference steering, Wu et al. 2025, arXiv 2505.20809), mean-difference
baselines (CAA, ActAdd, PCA), evaluation across multipliers, and analysis (cosine similarity, layer
sweeps, logit lens, composition, transfer), on any ``HookedTransformer``; offline on the embedded
SmolLM2-135M-Instruct. ``import workbench as wb``; every name below is the public API (the rest
lives in the subpackages: ``core``, ``data``, ``engine``, ``train``, ``evaluate``, ``analysis``, ``viz``,
``studies``, ``cli``; docs/architecture.md draws the layers):

    model = wb.load_model()
    train, test = wb.load_behavior("power-seeking", "train"), wb.load_behavior("power-seeking", "test")
    bipo = wb.train_bipo(model, train, wb.BiPOConfig(layer=14)).vector
    curve = wb.logodds_curve(model, {"bipo": bipo, "caa": wb.caa(model, train, 14)}, test, [-1, 0, 1])
    wb.plot(curve)

The one lazy import of the package: names are imported on first use (PEP 562) so that
``workbench --help`` does not pay for importing torch and TransformerLens. The ``TYPE_CHECKING`` block
lists the same names as plain imports for static tools and editors (a test checks the two agree).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "workbench.core.backend": ["remaining_hooks"],
    "workbench.core.interchange": ["import_vector"],
    "workbench.core.loading": ["load_model"],
    "workbench.core.prompts": ["format_chat"],
    "workbench.core.results": ["Result", "ResultFormatError", "load_result", "result_table"],
    "workbench.core.vector": ["SteeringVector", "load_vector"],
    "workbench.data.behaviors": ["list_behaviors", "load_behavior", "load_neutral_text"],
    "workbench.data.formats": ["load_pairs"],
    "workbench.data.pairs": ["DataFormatError", "PreferencePair", "as_ab_pairs", "train_test_split"],
    "workbench.data.refusal": ["load_refusal_requests"],
    "workbench.engine.steering": ["GenerationConfig", "generate", "steer"],
    "workbench.train.baselines": ["actadd", "caa", "pca"],
    "workbench.train.bipo": ["BiPOConfig", "train_bipo"],
    "workbench.train.reps": ["RePSConfig", "train_reps"],
    "workbench.train.trainer": ["BiPOResult", "checkpoint_vectors"],
    "workbench.evaluate.effects": ["effect_vs_zero"],
    "workbench.evaluate.generation": ["steered_generations"],
    "workbench.evaluate.preference": ["ab_curve", "logodds_curve"],
    "workbench.evaluate.suite": ["EvalConfig", "evaluate_vectors", "format_eval"],
    "workbench.evaluate.truthfulqa": ["truthfulqa_mc"],
    "workbench.evaluate.utility": ["utility_curve"],
    "workbench.analysis.composition": ["CompositionResult", "composition_table"],
    "workbench.analysis.equal_cost": ["MatchedCostConfig", "matched_cost"],
    "workbench.analysis.logit_lens": ["steered_logit_lens", "vector_logit_lens"],
    "workbench.analysis.similarity": ["cosine_table", "layer_cosine_table", "method_cosines"],
    "workbench.analysis.sweep": ["SweepConfig", "SweepResult", "layer_sweep"],
    "workbench.analysis.transfer": ["finetune_copy", "layer_transfer", "transfer_effect"],
    "workbench.engine.gate": ["SteeringCondition"],
    "workbench.analysis.conditional": ["ConditionalConfig", "conditional_steering", "fit_condition"],
    "workbench.analysis.entanglement": ["EntanglementConfig", "measure_entanglement"],
    "workbench.evaluate.prompting": ["PromptingConfig", "prompting_baseline"],
    "workbench.analysis.patching": ["PatchingConfig", "activation_patching"],
    "workbench.analysis.attribution": ["attribution_patching", "steered_dla"],
    "workbench.analysis.attention_shift": ["attention_shifts"],
    "workbench.analysis.routes": ["compare_routes", "route_patching"],
    "workbench.viz.comparisons": ["plot_composition", "plot_lora_transfer", "plot_transfer"],
    "workbench.viz.curves": ["plot_cost_effect", "plot_multiplier_curves", "plot_refusal", "plot_training_curves"],
    "workbench.viz.figures": ["write_figures"],
    "workbench.viz.layers": ["plot_cosine_heatmap", "plot_layer_sweep", "plot_logit_lens_layers",
                             "plot_logit_lens_tokens", "plot_method_cosine"],
    "workbench.viz.plots": ["plot"],
    "workbench.viz.style": ["save_figure"],
    "workbench.viz.widgets": ["SteeringExplorer"],
    "workbench.studies.config": ["LoRAFinetuneConfig", "LoRATransferConfig", "RefusalConfig", "StudyConfig",
                                 "TruthfulnessConfig"],
    "workbench.studies.lora": ["lora_finetunes", "lora_transfer"],
    "workbench.studies.refusal": ["refusal_study"],
    "workbench.studies.reproduce": ["demo"],
    "workbench.studies.stages": ["study_sweeps"],
    "workbench.studies.truthfulness": ["truthfulness_study"],
    "workbench.studies.vectors": ["study_extra_vectors", "study_pairs", "study_vectors"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]

if TYPE_CHECKING:  # the same names, for static tools (tests/test_package.py keeps the two lists equal)
    from workbench.engine.gate import SteeringCondition
    from workbench.analysis.conditional import ConditionalConfig, conditional_steering, fit_condition
    from workbench.analysis.entanglement import EntanglementConfig, measure_entanglement
    from workbench.evaluate.prompting import PromptingConfig, prompting_baseline
    from workbench.analysis.patching import PatchingConfig, activation_patching
    from workbench.analysis.attribution import attribution_patching, steered_dla
    from workbench.analysis.attention_shift import attention_shifts
    from workbench.analysis.routes import compare_routes, route_patching
    from workbench.analysis.composition import CompositionResult, composition_table
    from workbench.analysis.equal_cost import MatchedCostConfig, matched_cost
    from workbench.analysis.logit_lens import steered_logit_lens, vector_logit_lens
    from workbench.analysis.similarity import cosine_table, layer_cosine_table, method_cosines
    from workbench.analysis.sweep import SweepConfig, SweepResult, layer_sweep
    from workbench.analysis.transfer import finetune_copy, layer_transfer, transfer_effect
    from workbench.core.backend import remaining_hooks
    from workbench.core.interchange import import_vector
    from workbench.core.loading import load_model
    from workbench.core.prompts import format_chat
    from workbench.core.results import Result, ResultFormatError, load_result, result_table
    from workbench.core.vector import SteeringVector, load_vector
    from workbench.data.behaviors import list_behaviors, load_behavior, load_neutral_text
    from workbench.data.formats import load_pairs
    from workbench.data.pairs import DataFormatError, PreferencePair, as_ab_pairs, train_test_split
    from workbench.data.refusal import load_refusal_requests
    from workbench.engine.steering import GenerationConfig, generate, steer
    from workbench.evaluate.effects import effect_vs_zero
    from workbench.evaluate.generation import steered_generations
    from workbench.evaluate.preference import ab_curve, logodds_curve
    from workbench.evaluate.suite import EvalConfig, evaluate_vectors, format_eval
    from workbench.evaluate.truthfulqa import truthfulqa_mc
    from workbench.evaluate.utility import utility_curve
    from workbench.studies.config import (LoRAFinetuneConfig, LoRATransferConfig, RefusalConfig, StudyConfig,
                                          TruthfulnessConfig)
    from workbench.studies.lora import lora_finetunes, lora_transfer
    from workbench.studies.refusal import refusal_study
    from workbench.studies.reproduce import demo
    from workbench.studies.stages import study_sweeps
    from workbench.studies.truthfulness import truthfulness_study
    from workbench.studies.vectors import study_extra_vectors, study_pairs, study_vectors
    from workbench.train.baselines import actadd, caa, pca
    from workbench.train.bipo import BiPOConfig, train_bipo
    from workbench.train.reps import RePSConfig, train_reps
    from workbench.train.trainer import BiPOResult, checkpoint_vectors
    from workbench.viz.comparisons import plot_composition, plot_lora_transfer, plot_transfer
    from workbench.viz.curves import plot_cost_effect, plot_multiplier_curves, plot_refusal, plot_training_curves
    from workbench.viz.figures import write_figures
    from workbench.viz.layers import (plot_cosine_heatmap, plot_layer_sweep, plot_logit_lens_layers,
                                      plot_logit_lens_tokens, plot_method_cosine)
    from workbench.viz.plots import plot
    from workbench.viz.style import save_figure
    from workbench.viz.widgets import SteeringExplorer


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
