"""The converted-model cache (issue #19): keyed by the GGUF's content, every cached file checksummed.

A tiny fake conversion stands in for the 25 s de-quantisation, so these tests never touch the real
GGUF or the real cache.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

import workbench.core.loading as wm


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
    with caplog.at_level(logging.WARNING, logger="workbench.core.loading"):
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
    with caplog.at_level(logging.WARNING, logger="workbench.core.loading"):
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
