"""A local Llama directory read straight into a ``HookedTransformer``, one tensor at a time.

Llama-family checkpoints (Touvron et al. 2023, arXiv 2307.09288) are read here without transformers:
the config from ``config.json`` (``workbench.core.hf_config``), the weights from ``*.safetensors``,
streamed tensor by tensor into a model allocated once in the target dtype and mapped onto
TransformerLens' names and layouts as its ``convert_llama_weights`` does. Peak host memory is about
the weights in that dtype plus the largest tensor; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import einops
import torch
from transformers import AutoTokenizer

from workbench.core.backend import HookedTransformer, HookedTransformerConfig
from workbench.core.devices import ModelLoadError, place_model
from workbench.core.hf_config import llama_config_from_json, read_config_json
from workbench.core.io import read_safetensors_header
from workbench.core.prompts import has_chat_template

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


def _stream_safetensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
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


def _llama_tl_tensor(name: str, w: torch.Tensor, cfg: HookedTransformerConfig,
                     tied: bool) -> list[tuple[str, torch.Tensor]]:
    """TransformerLens names and layouts of one HF Llama tensor (``convert_llama_weights``, per tensor)."""
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


def load_llama_dir(path: Path, device: str, dtype: torch.dtype, n_devices: int, max_ctx: int) -> HookedTransformer:
    """The ``LlamaForCausalLM`` directory ``path`` as a frozen, unprocessed ``HookedTransformer``.

    Args:
        path: the directory (``config.json``, tokenizer files, ``*.safetensors``).
        device: a resolved device (``workbench.core.devices.resolve_device``).
        dtype: the weights' dtype (each tensor is cast as it is copied in).
        n_devices: split the blocks over this many CUDA devices.
        max_ctx: cap of ``n_ctx``.

    Raises:
        ModelLoadError: a config field the loader does not understand, or a weight that does not fit.
    """
    raw = read_config_json(path)
    cfg_kwargs = llama_config_from_json(raw, path.name, max_ctx=max_ctx)  # every field checked before the tokenizer
    tokenizer = AutoTokenizer.from_pretrained(path)
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
    model = place_model(model, device, n_devices)
    model.eval()
    model.requires_grad_(False)
    return model

