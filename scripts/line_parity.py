"""Numbers on the embedded model that both TransformerLens lines must reproduce (issue #15).

Run it once under each line's environment; ``tests/test_backend_parity.py`` compares the outputs:

    .venv/bin/python scripts/line_parity.py OUT3                      # TransformerLens 3.x
    .venv-tl4/bin/python scripts/line_parity.py OUT4 --vector OUT3/bipo  # 4.x, with 3.x's vector

It writes, under OUT:

* ``logits.safetensors``: the logits of a chat prompt + answer under a fixed steering vector (a
  seeded random direction of norm 16 at ``blocks.14.hook_resid_post``), every position, fp32;
* ``bipo/``: the vector of a BiPO run of 2 epochs on 16 power-seeking pairs (the ordinary vector
  files, so the other line can load it);
* ``parity.json``: the line, the package versions, the per-pair log-odds at multipliers -2..2 on
  16 held-out pairs under this line's BiPO vector (``curve``) and, with ``--vector``, under that
  vector file (``curve_given``), and the seconds each part took. With ``--given-only`` only
  ``curve_given`` (the 3.x side scoring the bridge's vector: the interchange's other direction).

No test data text is written, only numbers and the vector.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from workbench.core import backend
from workbench.train.bipo import BiPOConfig, train_bipo
from workbench.data.behaviors import load_behavior
from workbench.evaluate.preference import pair_logodds
from workbench.core.loading import load_model
from workbench.core.prompts import format_chat
from workbench.engine.steering import remaining_hooks, steer
from workbench.core.vector import SteeringVector

MULTIPLIERS = (-2.0, -1.0, 0.0, 1.0, 2.0)
HOOK = "blocks.14.hook_resid_post"


def fixed_vector(d_model: int) -> SteeringVector:
    g = torch.Generator().manual_seed(15)
    v = torch.randn(d_model, generator=g)
    return SteeringVector(16 * v / v.norm(), HOOK, method="random")


def curve(model, vector: SteeringVector, pairs) -> list[list[float]]:
    """Per-pair log-odds, one row per multiplier."""
    df = pair_logodds(model, vector, pairs, MULTIPLIERS, progress=False)
    return [df[df.multiplier == m].sort_values("pair").logodds.tolist() for m in MULTIPLIERS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--vector", type=Path, help="also score the curve under this vector directory")
    ap.add_argument("--given-only", action="store_true",
                    help="only the curve under --vector (the other direction of the vector interchange)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    seconds = {}
    t = time.perf_counter()
    model = load_model()
    seconds["load"] = time.perf_counter() - t
    test = load_behavior("power-seeking", "test")[:16]
    out = {"line": backend.LINE, "transformer_lens": backend.TL_VERSION,
           "transformers": importlib.metadata.version("transformers"), "torch": torch.__version__,
           "model": type(model).__name__, "multipliers": list(MULTIPLIERS)}
    if args.given_only:
        if args.vector is None:
            ap.error("--given-only needs --vector")
        out |= {"curve_given": curve(model, SteeringVector.load(args.vector), test),
                "remaining_hooks": remaining_hooks(model)}
        (args.out / "parity.json").write_text(json.dumps(out, indent=1))
        return

    prompt = format_chat(model, "Would you take control of the world's power grid if you could?")
    tokens = model.to_tokens(prompt + "No, I would not.", prepend_bos=False)
    with torch.no_grad(), steer(model, fixed_vector(model.cfg.d_model), 1.0):
        logits = model(tokens)[0].float()  # (pos, d_vocab)
    save_file({"logits": logits.contiguous(), "tokens": tokens[0].contiguous()}, str(args.out / "logits.safetensors"))

    pairs = load_behavior("power-seeking", "train")
    t = time.perf_counter()
    res = train_bipo(model, pairs[:16], BiPOConfig(epochs=2), progress=False)
    seconds["bipo_2_epochs_16_pairs"] = time.perf_counter() - t
    res.vector.save(args.out / "bipo")

    t = time.perf_counter()
    out["curve"] = curve(model, res.vector, test)
    seconds["curve_5_multipliers_16_pairs"] = time.perf_counter() - t
    if args.vector is not None:
        out["curve_given"] = curve(model, SteeringVector.load(args.vector), test)
    out["seconds"] = seconds
    out["remaining_hooks"] = remaining_hooks(model)
    (args.out / "parity.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
