"""Loading real-model directories: devices, dtypes, rope_scaling, streamed weights, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_llama_dir
from workbench.core.loading import ModelLoadError, load_model, llama_config_from_json, resolve_device, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]


def test_rope_scaling_config_matches_transformer_lens(tmp_path):
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    d = write_llama_dir(tmp_path / "tiny")
    ours = llama_config_from_json(json.loads((d / "config.json").read_text()), "tiny")
    theirs = convert_hf_model_config(str(d))
    assert ours["use_NTK_by_parts_rope"] is True
    for key in ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "eps", "d_vocab", "act_fn", "n_key_value_heads",
                "rotary_dim", "rotary_base", "use_NTK_by_parts_rope", "NTK_original_ctx_len",
                "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor"):
        assert ours[key] == theirs[key], key


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


def test_unknown_config_field_is_named(tmp_path):
    d = write_llama_dir(tmp_path / "tiny", rope=False)
    raw = json.loads((d / "config.json").read_text())
    raw["sliding_window"] = 4096
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="sliding_window"):
        load_model(d)


def test_generic_config_fields_pass_only_at_their_defaults(tmp_path):
    from workbench.core.loading import llama_config_from_json

    d = write_llama_dir(tmp_path / "tiny", rope=False)
    raw = json.loads((d / "config.json").read_text()) | {"chunk_size_feed_forward": 0, "problem_type": None}
    assert llama_config_from_json(raw, "tiny")["d_model"] == raw["hidden_size"]
    with pytest.raises(ModelLoadError, match="chunk_size_feed_forward"):
        llama_config_from_json(raw | {"chunk_size_feed_forward": 64}, "tiny")


def test_kwargs_checked_and_devices():
    with pytest.raises(TypeError, match="n_devicez"):
        load_model(None, n_devicez=2)
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda")
    assert resolve_dtype("bf16") is torch.bfloat16
    for bad in ("cuda:x", "gpu", "cpu:0:1"):
        with pytest.raises(ModelLoadError, match="device"):
            resolve_device(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_offline_hub_name_and_bad_device():
    r = _cli("info", "--model", "meta-llama/Llama-2-7b-chat-hf")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0] and "Llama-2-7b-chat-hf" in lines[0], r.stderr
    r = _cli("info", "--device", "cuda:x")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda:x" in lines[0], r.stderr


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
