"""workbench: a TransformerLens workbench for steering vectors.

BiPO (bi-directional preference optimization, Cao et al. 2024, arXiv 2406.00045) and RePS
(reference-free preference steering, Wu et al. 2025, arXiv 2505.20809), mean-difference
baselines (CAA, ActAdd, PCA), evaluation across multipliers, and analysis (cosine similarity, layer
sweeps, logit lens, composition, transfer), on any ``HookedTransformer``; offline on the embedded
SmolLM2-135M-Instruct. ``import workbench as wb``; every name below is the public API (the rest
lives in its module):

    model = wb.load_model()
    train, test = wb.load_behavior("power-seeking", "train"), wb.load_behavior("power-seeking", "test")
    bipo = wb.train_bipo(model, train, wb.BiPOConfig(layer=14)).vector
    curve = wb.logodds_curve(model, {"bipo": bipo, "caa": wb.caa(model, train, 14)}, test, [-1, 0, 1])
    wb.plot_multiplier_curves(curve)

Names are imported on first use (PEP 562) so that ``workbench --help`` does not pay for importing
TransformerLens; the ``TYPE_CHECKING`` block lists the same names as explicit imports for static
tools and editors (a test checks the two agree).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # load and steer
    "workbench.model": ["load_model"],
    "workbench.prompts": ["format_chat"],
    "workbench.steering": ["generate", "steer"],
    "workbench.backend": ["remaining_hooks"],
    # data
    "workbench.data": ["DataFormatError", "PreferencePair", "as_ab_pairs", "list_behaviors", "load_behavior",
                       "load_neutral_text", "load_pairs", "train_test_split"],
    # the vector
    "workbench.vector": ["SteeringVector", "load_vector"],
    "workbench.interchange": ["import_vector"],
    # train
    "workbench.bipo": ["BiPOConfig", "BiPOResult", "train_bipo"],
    "workbench.reps": ["RePSConfig", "train_reps"],
    "workbench.baselines": ["actadd", "caa", "pca"],
    # evaluate
    "workbench.evaluate": ["evaluate_vectors", "format_eval"],
    "workbench.eval_preference": ["ab_curve", "logodds_curve"],
    "workbench.eval_truthfulqa": ["truthfulqa_mc"],
    "workbench.eval_utility": ["utility_curve"],
    "workbench.eval_generation": ["steered_generations"],
    # analyses
    "workbench.layer_sweep": ["SweepResult", "layer_sweep"],
    "workbench.similarity": ["cosine_table", "layer_cosine_table", "method_cosines"],
    "workbench.logit_lens": ["steered_logit_lens", "vector_logit_lens"],
    "workbench.composition": ["CompositionResult", "composition_table"],
    "workbench.transfer": ["finetune_copy", "layer_transfer", "transfer_effect"],
    "workbench.matched_cost": ["matched_cost"],
    "workbench.refusal": ["load_refusal_requests", "refusal_study"],
    "workbench.truthfulness": ["truthfulness_study"],
    "workbench.lora": ["lora_finetunes", "lora_transfer"],
    # the study: the workflows the CLI, `workbench reproduce` and the notebooks share (the whole study,
    # workbench.reproduce.reproduce, is not exported: its name is its module's)
    "workbench.reproduce": ["StudyConfig", "demo", "study_extra_vectors", "study_pairs", "study_sweeps",
                            "study_vectors"],
    # results and figures
    "workbench.results": ["ResultFormatError", "load_result", "result_table"],
    "workbench.plots": ["plot", "plot_composition", "plot_cosine_heatmap", "plot_cost_effect", "plot_layer_sweep",
                        "plot_logit_lens_layers", "plot_logit_lens_tokens", "plot_method_cosine",
                        "plot_lora_transfer", "plot_multiplier_curves", "plot_refusal", "plot_training_curves",
                        "plot_transfer", "save_figure"],
    "workbench.figures": ["write_figures"],
    # the explorer
    "workbench.widgets": ["SteeringExplorer"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]

#: API functions named like their module (``layer_sweep``, ``matched_cost``)
_SHADOWED = frozenset(n for n, module in _WHERE.items() if module == f"{__name__}.{n}")


class _Package(types.ModuleType):
    """The package, keeping ``wb.layer_sweep`` the function: importing a submodule binds its name on
    the package, which would otherwise hide the function of the same name (the module stays in
    ``sys.modules`` and ``from workbench.layer_sweep import ...`` works as usual)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # the same names, for static tools (tests/test_package.py keeps the two lists equal)
    from workbench.baselines import actadd, caa, pca
    from workbench.bipo import BiPOConfig, BiPOResult, train_bipo
    from workbench.composition import CompositionResult, composition_table
    from workbench.data import (DataFormatError, PreferencePair, as_ab_pairs, list_behaviors, load_behavior,
                                load_neutral_text, load_pairs, train_test_split)
    from workbench.eval_generation import steered_generations
    from workbench.eval_preference import ab_curve, logodds_curve
    from workbench.eval_truthfulqa import truthfulqa_mc
    from workbench.eval_utility import utility_curve
    from workbench.evaluate import evaluate_vectors, format_eval
    from workbench.figures import write_figures
    from workbench.interchange import import_vector
    from workbench.layer_sweep import SweepResult, layer_sweep
    from workbench.logit_lens import steered_logit_lens, vector_logit_lens
    from workbench.lora import lora_finetunes, lora_transfer
    from workbench.matched_cost import matched_cost
    from workbench.model import load_model
    from workbench.plots import (plot, plot_composition, plot_cosine_heatmap, plot_cost_effect, plot_layer_sweep,
                                 plot_logit_lens_layers, plot_logit_lens_tokens, plot_lora_transfer,
                                 plot_method_cosine, plot_multiplier_curves, plot_refusal, plot_training_curves,
                                 plot_transfer, save_figure)
    from workbench.prompts import format_chat
    from workbench.refusal import load_refusal_requests, refusal_study
    from workbench.reps import RePSConfig, train_reps
    from workbench.reproduce import StudyConfig, demo, study_extra_vectors, study_pairs, study_sweeps, study_vectors
    from workbench.results import ResultFormatError, load_result, result_table
    from workbench.similarity import cosine_table, layer_cosine_table, method_cosines
    from workbench.backend import remaining_hooks
    from workbench.steering import generate, steer
    from workbench.transfer import finetune_copy, layer_transfer, transfer_effect
    from workbench.truthfulness import truthfulness_study
    from workbench.vector import SteeringVector, load_vector
    from workbench.widgets import SteeringExplorer


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
