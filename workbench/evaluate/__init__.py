"""Evaluation across multipliers: statistics, preference log-odds, utility, TruthfulQA, generation.

Layer 5 of the package (above ``workbench.train``): every public function checks its inputs once and
passes them, checked, to the private half that computes; ``evaluate_vectors`` runs the table of
metrics (``METRICS``) under one ``EvalConfig``.
"""

from workbench.evaluate.effects import Effect, effect_vs_zero, retained_vs_zero
from workbench.evaluate.generation import (DecodingConfig, is_refusal, open_ended_eval, refusal_eval,
                                           steered_generations)
from workbench.evaluate.prompting import PromptingConfig, prompting_baseline, prompting_table, with_prompting_points
from workbench.evaluate.preference import ab_curve, ab_pair_probs, logodds_curve, pair_logodds, steerability
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS, bootstrap_ci, summarize
from workbench.evaluate.suite import METRICS, EvalConfig, evaluate_vectors, format_eval
from workbench.evaluate.truthfulqa import truthfulqa_mc, truthfulqa_per_question
from workbench.evaluate.utility import (NeutralReference, kl_unsteered_to_steered, utility_curve, utility_passes,
                                       utility_per_text)

__all__ = ["DEFAULT_MULTIPLIERS", "METRICS", "Effect", "EvalConfig", "DecodingConfig", "ab_curve", "ab_pair_probs",
           "bootstrap_ci", "effect_vs_zero", "evaluate_vectors", "format_eval", "is_refusal", "kl_unsteered_to_steered",
           "logodds_curve", "open_ended_eval", "pair_logodds", "PromptingConfig", "prompting_baseline", "prompting_table",
           "with_prompting_points", "refusal_eval", "retained_vs_zero", "steerability",
           "steered_generations", "summarize", "truthfulqa_mc", "truthfulqa_per_question", "utility_curve",
           "utility_passes", "utility_per_text", "NeutralReference"]
