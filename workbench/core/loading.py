"""Model loading: ``load_model`` for the embedded model, a local Hugging Face directory or a hub name.

Every analysis in workbench runs on a TransformerLens model (Nanda and Bloom 2022,
https://github.com/TransformerLensOrg/TransformerLens). ``load_model`` builds one from three kinds of
source, each in its own place:

* nothing (``load_model()``): the embedded SmolLM2-135M-Instruct, offline, from its GGUF and a
  checksummed cache (``workbench.core.embedded``).
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
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench.core.backend import LINE, HookedTransformer, Model, boot_bridge
from workbench.core.devices import ModelLoadError, place_model, resolve_device, resolve_dtype
from workbench.core.embedded import EMBEDDED_MODEL_NAME, load_embedded_model
from workbench.core.hf_config import (LLAMA_ARCHITECTURE, check_converter_fields, config_architecture,
                                      read_config_json)
from workbench.core.llama_dir import load_llama_dir
from workbench.core.prompts import has_chat_template

if LINE == 3:  # TransformerLens 3.x's converters (4.x converts through the bridge instead)
    import transformer_lens.loading_from_pretrained as lp


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
            # TransformerLens guesses the architecture from the path's *name* (a path containing
            # "llama" breaks it), so Llama directories are converted here from their own config.json.
            return load_llama_dir(path, device, dtype, n_devices, max_ctx)
        cfg = _converted_config(path, architecture, device, dtype, n_devices)
    except ModelLoadError as exc:  # "config.json field 'x' ..." -> the file's path
        if str(exc).startswith("config.json"):
            raise ModelLoadError(f"{path / 'config.json'}{str(exc).removeprefix('config.json')}") from None
        raise
    cfg.model_name = path.name
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    state_dict = lp.get_pretrained_state_dict(str(path), cfg, hf_model=hf, dtype=dtype)
    del hf
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(path), move_to_device=False)
    model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    del state_dict
    model = place_model(model, device, n_devices)
    model.eval()
    model.requires_grad_(False)
    return model


def _converted_config(path: Path, architecture: str, device: str, dtype: torch.dtype, n_devices: int) -> Any:
    """TransformerLens' config of a non-Llama directory, its fields checked first (``check_converter_fields``)."""
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path / 'config.json'}: transformers cannot read it as a {architecture} config "
                             f"({detail})") from None
    check_converter_fields(hf_config, architecture)
    try:
        return lp.get_pretrained_model_config(str(path), device=device, dtype=dtype, n_devices=n_devices)
    except (KeyError, AttributeError, TypeError) as exc:  # a field the converter reads in a way not checked above
        field = getattr(exc, "name", None) or (exc.args[0] if isinstance(exc, KeyError) and exc.args else None)
        what = f"field {field!r}" if field else f"a field ({type(exc).__name__}: {exc})"
        raise ModelLoadError(f"{path / 'config.json'}: {what} is missing or malformed for TransformerLens' "
                             f"{architecture} converter") from None


def _boot(name: str, label: str, tokenizer: Any, device: str, dtype: torch.dtype, n_devices: int,
          **kwargs: Any) -> Model:
    """A bridge (TransformerLens 4) for a local directory or hub name; BOS as ``load_llama_dir`` decides it."""
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
        return place_model(model, device, n_devices)
    if Path(name).exists():
        check(_LOCAL_KWARGS, "a local directory")
        return load_local_model(name, device=device, dtype=dtype, n_devices=n_devices, **kwargs)
    return _load_hub_model(str(name), device, dtype, n_devices, **kwargs)
