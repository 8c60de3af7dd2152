"""Local Llama directories streamed tensor by tensor: logits, dtypes, tied weights, peak memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_llama_dir

from workbench.core.devices import ModelLoadError
from workbench.core.llama_dir import load_llama_dir
from workbench.core.loading import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_logits_match_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    d = write_llama_dir(tmp_path / "tiny")
    model = load_model(d)
    assert model.cfg.use_NTK_by_parts_rope
    hf = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 60))  # beyond original_max_position_embeddings 32
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_bf16_straight_and_tied(tmp_path):
    d = write_llama_dir(tmp_path / "tiny", dtype=torch.bfloat16, tied=True, rope=False)
    model = load_model(d, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(model.unembed.W_U, model.embed.W_E.T)


def test_loading_peak_memory_is_near_the_weights(tmp_path):
    """Peak host memory of loading a random Llama directory of a few hundred MB, in a fresh process
    (bench/load_memory.py): at most about 1.3x the weights in the target dtype."""
    sys.path.insert(0, str(ROOT / "bench"))
    from load_memory import measure, write_random_llama

    for ckpt, target in (("fp32", "fp32"), ("bf16", "bf16")):
        d = write_random_llama(tmp_path / ckpt, hidden=1024, layers=6, dtype=ckpt)
        r = measure(d, target)
        assert r["weights_bytes"] > 200 * 2**20 if target == "fp32" else r["weights_bytes"] > 100 * 2**20
        assert r["ratio"] <= 1.3, (ckpt, target, r)


@pytest.mark.tl3
def test_a_weight_that_does_not_fit_the_config_is_named(tmp_path):
    d = write_llama_dir(tmp_path / "tiny", rope=False)
    raw = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(raw | {"intermediate_size": 96}))
    with pytest.raises(ModelLoadError, match="shape"):
        load_llama_dir(d, "cpu", torch.float32, 1, 8192)
