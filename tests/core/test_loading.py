"""load_model: its keyword arguments per source, and the CLI's one-line errors for a model it cannot load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.core.embedded import embedded_gguf_path
from workbench.core.loading import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_keyword_arguments_are_named():
    with pytest.raises(TypeError, match="n_devicez"):
        load_model(None, n_devicez=2)
    with pytest.raises(TypeError, match="rebuild_cache"):
        load_model(Path(__file__).parent, rebuild_cache=True)  # an existing path: a local directory's options


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


@pytest.mark.embedded
def test_local_directory_loading(embedded_model, tmp_path):
    """The local-directory path (for users with weights on disk), on a directory written here."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    hf.hf_quantizer = None
    hf.config.quantization_config = None
    del hf.config.quantization_config
    hf.save_pretrained(tmp_path / "smol")
    embedded_model.tokenizer.save_pretrained(tmp_path / "smol")
    m = load_model(tmp_path / "smol")
    toks = torch.tensor([[1, 2, 3, 4, 5]])
    assert (m(toks) - embedded_model(toks)).abs().max() < 1e-3
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_cli_malformed_config_is_a_one_line_user_error(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "intermediate_size": 8}')
    r = _cli("info", "--model", str(d))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "internal error" not in lines[0] and "'hidden_size' is missing" in lines[0] and str(d) in lines[0]
