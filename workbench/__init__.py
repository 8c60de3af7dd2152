"""workbench: a TransformerLens workbench for steering vectors.

BiPO (bi-directional preference optimization, Cao et al. 2024, arXiv 2406.00045), mean-difference
baselines (CAA, ActAdd, PCA), evaluation across multipliers, and analysis (cosine similarity, layer
sweeps, logit lens, composition, transfer), on any ``HookedTransformer``; offline on the embedded
SmolLM2-135M-Instruct.

Names are imported lazily (PEP 562), so that ``workbench --help`` and ``workbench convert`` do not
pay for importing TransformerLens.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "workbench.model": ["EMBEDDED_MODEL_NAME", "EmbeddedModelMissingError", "load_model"],
    "workbench.prompts": ["DEFAULT_SYSTEM_PROMPT", "end_of_turn", "format_chat", "prompts_and_answers"],
    "workbench.vector": ["IncompatibleVectorError", "SteeringVector", "VectorFileError", "cosine_matrix",
                         "hook_name", "load_vector", "valid_hook_names"],
    "workbench.steering": ["generate", "remaining_hooks", "steer"],
    "workbench.scoring": ["Items", "PrefixCache", "answer_logprobs", "make_runner", "preference_logodds",
                          "preference_logprobs", "run_conditions", "score_completions", "tokenize_completions",
                          "tokenize_items", "unembed"],
    "workbench.data": ["DataFormatError", "PreferencePair", "fingerprint", "list_behaviors", "load_behavior",
                       "load_pairs", "train_test_split"],
    "workbench.bipo": ["BiPOConfig", "BiPOResult", "train_bipo"],
    "workbench.baselines": ["actadd", "caa", "mean_difference_vectors", "pca"],
    "workbench.evaluate": ["evaluate_vectors", "format_tables"],
    "workbench.eval_preference": ["ab_curve", "logodds_curve"],
    "workbench.eval_utility": ["utility_curve"],
    "workbench.similarity": ["cosine_table", "layer_cosine_table"],
    "workbench.layer_sweep": ["layer_sweep", "parse_layers"],
    "workbench.logit_lens": ["steered_logit_lens", "vector_logit_lens"],
    "workbench.composition": ["composition_table"],
    "workbench.transfer": ["export_hf_llama", "layer_transfer", "transfer_effect"],
    "workbench.interchange": ["InterchangeError", "export_gguf", "import_bipo_vector", "import_gguf",
                              "import_vector"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
