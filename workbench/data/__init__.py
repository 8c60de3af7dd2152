"""Preference pairs and every format they are read from; the embedded default data.

Layer 2 of the package (above ``workbench.core``): the data types and their checks (``pairs``), every
file loader (``formats`` for pair files and TruthfulQA, ``refusal`` for harmful requests,
``behaviors`` for the embedded data). Nothing here imports ``workbench.evaluate`` or above.
"""

from workbench.data.behaviors import list_behaviors, load_behavior, load_neutral_text
from workbench.data.formats import (PAIR_FORMATS, load_pairs, load_truthfulqa, load_truthfulqa_mc,
                                    load_truthfulqa_questions, save_pairs_jsonl)
from workbench.data.instructions import behavior_instructions, load_instructions
from workbench.data.pairs import (DataFormatError, MCQuestion, PreferencePair, as_ab_pairs, check_ab_pairs, check_pairs,
                                  check_questions, fingerprint, is_ab_data, split_questions, train_test_split)
from workbench.data.refusal import (JAILBREAK_TEMPLATES, HarmfulRequest, load_advbench, load_refusal_prompts,
                                    load_refusal_requests, refusal_pairs)

__all__ = ["DataFormatError", "HarmfulRequest", "JAILBREAK_TEMPLATES", "MCQuestion", "PAIR_FORMATS", "PreferencePair",
           "as_ab_pairs", "behavior_instructions", "check_ab_pairs", "check_pairs", "check_questions", "fingerprint", "is_ab_data",
           "list_behaviors", "load_advbench", "load_behavior", "load_instructions", "load_neutral_text", "load_pairs", "load_refusal_prompts",
           "load_refusal_requests", "load_truthfulqa", "load_truthfulqa_mc", "load_truthfulqa_questions",
           "refusal_pairs", "save_pairs_jsonl", "split_questions", "train_test_split"]
