"""Every family of ``test_families`` on TransformerLens 4: ``load_model(dir)`` boots a ``TransformerBridge``
(transformers reads the architecture from config.json, never the path) whose logits are transformers'
own; one CAA + one BiPO step + one evaluation run on it; and, per family, the logits under a fixed
steering vector at a middle layer's ``hook_resid_pre`` agree with the 3.x line's ``HookedTransformer``
on the same directory (``scripts/family_parity.py`` run by each line's Python, as
``test_backend_parity`` runs ``line_parity.py``).

Without a 3.x Python the parity test skips, unless ``WORKBENCH_REQUIRE_PARITY=1`` (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, write_family_dir, write_llama_dir
from test_backend_parity import tl3_python
from test_families import assert_trains_and_evaluates
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from workbench.core.backend import LINE, remaining_hooks
from workbench.core.loading import load_model

pytestmark = pytest.mark.skipif(LINE != 4, reason="the TransformerBridge path is TransformerLens 4's")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "family_parity.py"
#: conftest's families, and Llama (on 3.x its own strict reader, ``llama_dir``; here llama3 rope scaling)
BRIDGE_FAMILIES = FAMILIES if "llama" in FAMILIES else (*FAMILIES, "llama")


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Each family saved under a name that would fool a path-based guess (``gemma-runs/qwen2`` ...)."""
    root = tmp_path_factory.mktemp("llama-models")
    dirs = {f: write_family_dir(root / ("gemma-runs" if f.startswith(("qwen", "llama")) else "llama-models") / f,
                                f, max_pos=512) for f in FAMILIES}
    if "llama" not in dirs:
        dirs["llama"] = write_llama_dir(root / "gemma-runs" / "llama", max_pos=512)
    return dirs


@pytest.mark.parametrize("family", BRIDGE_FAMILIES)
def test_bridge_matches_transformers_and_trains(family, family_dirs):
    model = load_model(family_dirs[family])
    assert type(model).__name__ == "TransformerBridge"
    hf = AutoModelForCausalLM.from_pretrained(family_dirs[family]).eval()
    assert model.cfg.model_name == family and type(model.original_model) is type(hf)
    tokens = torch.randint(3, model.cfg.d_vocab, (1, 256), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens).float(), hf(tokens).logits.float()
    assert _rel(ours, theirs) < 1e-4
    assert_trains_and_evaluates(model)


@pytest.fixture(scope="module")
def both_lines(family_dirs, tmp_path_factory):
    """The same directories through each line's Python, both at once: ``(OUT3, OUT4, parity.json of 3, of 4)``."""
    python3 = tl3_python()
    dirs = [str(family_dirs[f]) for f in BRIDGE_FAMILIES]
    outs = tmp_path_factory.mktemp("tl3"), tmp_path_factory.mktemp("tl4")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    pythons = python3, sys.executable
    logs = [out.with_name(out.name + ".stderr") for out in outs]
    procs = []
    for python, out, log in zip(pythons, outs, logs):
        with log.open("w") as err:
            procs.append(subprocess.Popen([python, str(SCRIPT), str(out), *dirs], env=env,
                                          stdout=subprocess.DEVNULL, stderr=err))
    for python, proc, log in zip(pythons, procs, logs):
        assert proc.wait(timeout=900) == 0, f"{python} {SCRIPT.name} failed:\n{log.read_text()[-3000:]}"
    out3, out4 = outs
    res3, res4 = (json.loads((out / "parity.json").read_text()) for out in outs)
    assert (res3["line"], res4["line"]) == (3, 4)
    return out3, out4, res3, res4


@pytest.mark.tl4
@pytest.mark.parametrize("family", BRIDGE_FAMILIES)
def test_steered_logits_match_across_lines(family, both_lines):
    out3, out4, res3, res4 = both_lines
    f3, f4 = res3["models"][family], res4["models"][family]
    assert (f3["model_class"], f4["model_class"]) == ("HookedTransformer", "TransformerBridge")
    assert f3["hook_name"] == f4["hook_name"] == f"blocks.{f3['layer']}.hook_resid_pre" and f3["layer"] >= 1
    assert f3["remaining_hooks"] == f4["remaining_hooks"] == 0
    a, b = load_file(str(out3 / f"{family}.safetensors")), load_file(str(out4 / f"{family}.safetensors"))
    assert torch.equal(a["tokens"], b["tokens"])
    assert _rel(a["plain"], a["logits"]) > 0.05  # the vector moves the logits
    # both lines steer where transformers' decoder layer L takes its input, and agree with each other
    assert _rel(a["logits"], a["reference"]) < 1e-4 and _rel(b["logits"], b["reference"]) < 1e-4
    assert _rel(b["logits"], a["logits"]) < 1e-4
