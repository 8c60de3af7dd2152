"""Transfer of steering vectors: to another model with the same width, and to other layers.

A steering vector is a direction in one model's residual stream. BiPO (Cao et al. 2024,
arXiv 2406.00045) reports that its vectors transfer from Llama-2-7b-chat to Vicuna-7b, a fine-tune
of the same base model. ``transfer_effect`` measures that for any two models with the same
``d_model``: the steering effect (change of the mean held-out log-odds
``log p(matching) - log p(not matching)`` against multiplier 0) on the target divided by the effect
on the source, at each multiplier. ``layer_transfer`` does the same across depth: the vector made at
layer L applied at L + k, as a table of effect against offset.

To have a related target model offline, ``finetune_copy`` trains a copy of a model for a few steps
of next-token prediction on some text (only the last blocks move), and ``export_hf_llama`` writes a
Llama-style ``HookedTransformer`` back to a Hugging Face ``LlamaForCausalLM`` directory
(``config.json`` + ``model.safetensors`` + tokenizer): the inverse of TransformerLens'
``convert_llama_weights``, so that ``workbench.load_model(path)`` opens it again.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import einops
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from workbench.evaluation_utils import mean_logodds  # noqa: F401  (placeholder, replaced below)
