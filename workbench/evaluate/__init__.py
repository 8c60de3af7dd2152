"""Evaluation across multipliers: statistics, preference log-odds, utility, TruthfulQA, generation."""

from workbench.evaluate.generation import steered_generations
from workbench.evaluate.preference import ab_curve, logodds_curve
from workbench.evaluate.suite import evaluate_vectors, format_eval
from workbench.evaluate.truthfulqa import truthfulqa_mc
from workbench.evaluate.utility import utility_curve

__all__ = ["ab_curve", "evaluate_vectors", "format_eval", "logodds_curve", "steered_generations", "truthfulqa_mc", "utility_curve"]
