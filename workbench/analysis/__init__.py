"""Analyses of vectors as pure functions returning results (``workbench.core.results.Result``):
similarity, layer sweeps, logit lens, composition, transfer, the effect at matched cost."""

from workbench.analysis.composition import CompositionResult, composition_table
from workbench.analysis.conditional import ConditionalConfig, conditional_steering
from workbench.analysis.entanglement import EntanglementConfig, matched_multipliers, measure_entanglement
from workbench.analysis.equal_cost import MatchedCostConfig, matched_cost
from workbench.analysis.logit_lens import steered_logit_lens, vector_logit_lens
from workbench.analysis.similarity import cosine_table, layer_cosine_table, method_cosines
from workbench.analysis.sweep import SweepConfig, SweepResult, layer_sweep
from workbench.analysis.transfer import finetune_copy, layer_transfer, transfer_effect
from workbench.analysis.patching import PatchingConfig, activation_patching
from workbench.analysis.attribution import attribution_patching, rank_agreement, steered_dla
from workbench.analysis.attention_shift import attention_shifts, top_heads
from workbench.analysis.routes import compare_routes, profile_cosines, route_multipliers, route_patching

__all__ = ["ConditionalConfig", "conditional_steering", "EntanglementConfig", "matched_multipliers", "measure_entanglement",
           "CompositionResult", "MatchedCostConfig", "SweepConfig", "SweepResult", "composition_table", "cosine_table",
           "finetune_copy", "layer_cosine_table", "layer_sweep", "layer_transfer", "matched_cost", "method_cosines",
           "steered_logit_lens", "transfer_effect", "vector_logit_lens",
           "PatchingConfig", "activation_patching", "attribution_patching", "rank_agreement", "steered_dla",
           "attention_shifts", "top_heads", "compare_routes", "profile_cosines", "route_multipliers", "route_patching"]
