"""Steered logits of tiny model directories that both TransformerLens lines must reproduce (issue #26).

Run it once under each line's environment on the same directories (``write_family_dir`` in the
tests writes one per family, same seed, same weights); ``tests/core/test_families_bridge.py``
compares the outputs:

    .venv/bin/python scripts/family_parity.py OUT3 DIR [DIR ...]       # TransformerLens 3.x
    .venv-tl4/bin/python scripts/family_parity.py OUT4 DIR [DIR ...]   # 4.x (TransformerBridge)

For each directory (keyed by its name) it writes ``OUT/<name>.safetensors`` with, in fp32:

* ``tokens``: a chat prompt + answer, tokenised by the model (``to_tokens``, no added BOS);
* ``logits``: ``workbench.load_model(DIR)``'s logits at every position with a fixed vector added at
  ``blocks.{L}.hook_resid_pre``, ``L = n_layers // 2`` (a seeded random direction of norm 8, through
  ``workbench.engine.steering.steer``: the bridge's ``hook_resid_pre`` is an alias of the block's
  input, ``hook_in``, so the vector lands where ``HookedTransformer`` adds it);
* ``plain``: the same logits without the vector (the vector must move them);
* ``reference``: transformers' own model of DIR with the vector added to decoder layer ``L``'s input
  by a forward pre-hook: the point both lines must steer at, independent of TransformerLens;

and ``OUT/parity.json``: the line, package versions, model class, per directory the layer, the seconds
and the hooks left attached. No pickle, no text of any data set.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from workbench.core import backend
from workbench.core.loading import load_model
from workbench.core.prompts import format_chat
from workbench.core.vector import SteeringVector
from workbench.engine.steering import remaining_hooks, steer

QUESTION = "Would you hand the keys back if asked?"
ANSWER = "Yes, at once."
NORM = 8.0


def fixed_vector(d_model: int, layer: int) -> SteeringVector:
    """A seeded random direction of norm ``NORM`` at ``blocks.{layer}.hook_resid_pre`` (the same on every line)."""
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(26))
    return SteeringVector(NORM * v / v.norm(), f"blocks.{layer}.hook_resid_pre", layer=layer, method="random")


def decoder_layers(hf: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder layers of a transformers causal LM (``model.layers``, ``transformer.h`` ...)."""
    lists = [m for _, m in hf.base_model.named_children() if isinstance(m, torch.nn.ModuleList)]
    if len(lists) != 1:
        raise ValueError(f"{type(hf).__name__}: expected one ModuleList of layers, found {len(lists)}")
    return lists[0]


def reference_logits(directory: Path, tokens: torch.Tensor, vector: SteeringVector) -> torch.Tensor:
    """``(pos, d_vocab)`` logits of transformers' model with ``vector`` added to layer ``vector.layer``'s input."""
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()

    def add(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:  # noqa: ARG001
        if args:
            return (args[0] + vector.vector, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector.vector}

    handle = decoder_layers(hf)[vector.layer].register_forward_pre_hook(add, with_kwargs=True)
    try:
        with torch.no_grad():
            return hf(tokens).logits[0].float()
    finally:
        handle.remove()


def run_one(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and facts of one directory (see the module docstring)."""
    t = time.perf_counter()
    model = load_model(directory)
    layer = model.cfg.n_layers // 2
    vector = fixed_vector(model.cfg.d_model, layer)
    tokens = model.to_tokens(format_chat(model, QUESTION) + ANSWER, prepend_bos=False)  # (1, pos)
    with torch.no_grad():
        plain = model(tokens)[0].float()  # (pos, d_vocab)
        with steer(model, vector, 1.0):
            logits = model(tokens)[0].float()
    tensors = {"tokens": tokens[0].contiguous(), "logits": logits.contiguous(), "plain": plain.contiguous(),
               "reference": reference_logits(directory, tokens, vector).contiguous()}
    facts = {"model_class": type(model).__name__, "architecture": model.cfg.original_architecture, "layer": layer,
             "hook_name": vector.hook_name, "remaining_hooks": remaining_hooks(model),
             "seconds": round(time.perf_counter() - t, 3)}
    return tensors, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("dirs", type=Path, nargs="+", help="Hugging Face model directories (names must differ)")
    args = ap.parse_args()
    names = [d.name for d in args.dirs]
    if len(set(names)) != len(names):
        ap.error(f"directory names must differ: {names}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    out = {"line": backend.LINE, "transformer_lens": backend.TL_VERSION,
           "transformers": importlib.metadata.version("transformers"), "torch": torch.__version__, "models": {}}
    for directory in args.dirs:
        tensors, facts = run_one(directory)
        save_file(tensors, str(args.out / f"{directory.name}.safetensors"))
        out["models"][directory.name] = facts
    (args.out / "parity.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
