"""workbench: a TransformerLens workbench for steering vectors.

BiPO (bi-directional preference optimization, Cao et al. 2024, arXiv 2406.00045), mean-difference
baselines (CAA, ActAdd, PCA), evaluation across multipliers, and analysis (cosine similarity, layer
sweeps, logit lens, composition, transfer), on any ``HookedTransformer``; offline on the embedded
SmolLM2-135M-Instruct.
"""

from workbench.model import (EMBEDDED_MODEL_NAME, EmbeddedModelMissingError, end_of_turn, format_chat,
                             load_model)
from workbench.scoring import TokenizedBatch, answer_logprobs, score_completions, tokenize_completions
from workbench.steering import generate, remaining_hooks, steer
from workbench.vector import (IncompatibleVectorError, SteeringVector, VectorFileError, __version__,
                              cosine_matrix, hook_name, load_vector, valid_hook_names)

__all__ = [
    "EMBEDDED_MODEL_NAME", "EmbeddedModelMissingError", "IncompatibleVectorError", "SteeringVector",
    "TokenizedBatch", "VectorFileError", "__version__", "answer_logprobs", "cosine_matrix", "end_of_turn",
    "format_chat", "generate", "hook_name", "load_model", "load_vector", "remaining_hooks",
    "score_completions", "steer", "tokenize_completions", "valid_hook_names",
]
