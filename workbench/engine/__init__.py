"""The one scoring engine (items, steering conditions, runners, batches, answer-only unembedding,
BiPO's prefix cache) and steering hooks/generation."""

from workbench.engine.conditions import (Condition, Delta, VectorSpec, as_vector_list, condition_deltas, entry,
                                         label_vectors, start_layer, sweep_conditions)
from workbench.engine.gate import SteeringCondition, condition_scores
from workbench.engine.items import AnswerTooLongError, Items, TokenizedBatch, tokenize_completions, tokenize_items
from workbench.engine.prefix_cache import PrefixCache
from workbench.engine.readout import Readout, token_logprobs, unembed
from workbench.engine.runners import PRECISIONS, Precision, make_runner, precision_runner, runner_bytes
from workbench.engine.scoring import answer_logprobs, preference_logodds, preference_logprobs, run_conditions
from workbench.engine.steering import GenerationConfig, generate, steer

__all__ = ["PRECISIONS", "AnswerTooLongError", "Condition", "Delta", "GenerationConfig", "Items", "Precision",
           "PrefixCache", "Readout", "SteeringCondition", "TokenizedBatch", "VectorSpec", "answer_logprobs",
           "as_vector_list", "condition_deltas", "condition_scores", "entry", "generate", "label_vectors",
           "make_runner", "precision_runner", "runner_bytes",
           "preference_logodds", "preference_logprobs", "run_conditions", "start_layer", "steer", "sweep_conditions",
           "token_logprobs", "tokenize_completions", "tokenize_items", "unembed"]
