"""Lean loading of local directories (issue #26): chunked reads and casts give exactly the values of a
whole-tensor read, rotary tables are shared, mixture-of-experts layers are allocated in the target dtype."""

from __future__ import annotations

import pytest
import torch
from conftest import write_family_dir, write_llama_dir

import workbench.core.hf_dir as hf_dir
import workbench.core.llama_dir as llama_dir
import workbench.core.weights as weights
from workbench.core.backend import LINE
from workbench.core.loading import load_model

pytestmark = pytest.mark.skipif(LINE != 3, reason="the streaming loaders are TransformerLens 3's")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["qwen2", "mixtral", "gemma2"])
def test_tiny_stage_and_vocabulary_chunks_change_no_value(family, tmp_path, monkeypatch):
    d = write_family_dir(tmp_path / family, family)
    for dtype in ("fp32", "bf16"):
        whole = _state(load_model(d, dtype=dtype))
        monkeypatch.setattr(weights, "STAGE_BYTES", 40)  # a cast in chunks of a few rows
        monkeypatch.setattr(hf_dir, "_VOCAB_ROWS", 3)
        chunked = load_model(d, dtype=dtype)
        monkeypatch.undo()
        assert whole.keys() == chunked.state_dict().keys()
        for k, v in chunked.state_dict().items():
            assert torch.equal(v, whole[k]), (family, dtype, k)


def test_llama_rows_read_in_chunks_change_no_value(tmp_path, monkeypatch):
    d = write_llama_dir(tmp_path / "tiny", tied=True, rope=False)
    whole = _state(load_model(d, dtype="bf16"))
    monkeypatch.setattr(llama_dir, "_CHUNK_BYTES", 100)  # one head (16 rows) at a time
    chunked = load_model(d, dtype="bf16")
    for k, v in chunked.state_dict().items():
        assert torch.equal(v, whole[k]), k
    assert chunked.unembed.W_U.data_ptr() == chunked.embed.W_E.data_ptr()  # a tied embedding is one storage


def test_rotary_tables_are_shared_and_experts_are_in_the_target_dtype(tmp_path):
    model = load_model(write_family_dir(tmp_path / "m", "mixtral"), dtype="bf16")
    sins = {b.attn.rotary_sin.data_ptr() for b in model.blocks}
    assert len(sins) == 1 and len(model.blocks) > 1
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # nn.Linear experts too
    gemma3 = load_model(write_family_dir(tmp_path / "g", "gemma3", layers=3))
    local, glob = gemma3.blocks[0].attn, gemma3.blocks[2].attn  # different bases: not shared
    assert local.rotary_sin.data_ptr() == gemma3.blocks[1].attn.rotary_sin.data_ptr()
    assert local.rotary_sin.data_ptr() != glob.rotary_sin.data_ptr()
