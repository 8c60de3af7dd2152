"""A local Llama directory read straight into a ``HookedTransformer``, one tensor at a time.

Llama-family checkpoints (Touvron et al. 2023, arXiv 2307.09288) are read here without transformers:
the config from ``config.json`` (``workbench.core.hf_config``), the weights from ``*.safetensors``,
streamed tensor by tensor into a model allocated once in the target dtype and mapped onto
TransformerLens' names and layouts as its ``convert_llama_weights`` does, in row chunks of at most
``_CHUNK_BYTES``. Peak host memory is about the weights in that dtype plus one chunk (2 MiB) and the
fixed costs of ``weights.allocate_model`` (a tied embedding is one storage); nothing is ever unpickled.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import einops
import torch
from transformers import AutoTokenizer

from workbench.core.backend import HookedTransformer, HookedTransformerConfig
from workbench.core.devices import ModelLoadError, place_model
from workbench.core.hf_config import llama_config_from_json, read_config_json
from workbench.core.weights import ST_DTYPES, allocate_model, release_freed_memory, safetensors_files
from workbench.core.io import read_safetensors_header
from workbench.core.prompts import default_prepend_bos

_CHUNK_BYTES = 2 << 20  # most bytes of a checkpoint tensor read at a time


def _stream_safetensors(file: Path, align: int = 1) -> Iterator[tuple[str, list[int], int, torch.Tensor]]:
    """Yield ``(name, shape, first row, rows)`` of a safetensors file: each tensor in row chunks of at most
    ``_CHUNK_BYTES`` (a multiple of ``align`` rows, or one ``align`` block if that is bigger), read with
    plain file reads.

    ``safetensors.safe_open`` memory-maps the whole file and every page it touches stays resident in
    the process until the file is closed, which doubles the peak of a one-shard load. Here every chunk
    is read into ONE reused buffer (a fresh buffer per tensor fragments the allocator's heap: measured
    1.5x the weights instead of 1.1x), so the peak stays at one chunk above the model, whatever the
    largest tensor (a vocabulary x d_model embedding). Each yielded chunk is a view of that buffer: valid
    until the next one is read.
    """
    header = read_safetensors_header(file, ModelLoadError, dtypes=tuple(ST_DTYPES))  # checked against the file size
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    buf = torch.empty(0, dtype=torch.uint8)
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        for name, info in entries:
            start, stop = info["data_offsets"]
            shape = list(info["shape"])
            n_rows = shape[0] if shape else 1
            row = (stop - start) // max(n_rows, 1)
            step = max(align, _CHUNK_BYTES // max(row, 1) // align * align) if len(shape) > 1 else n_rows
            if min(step, n_rows) * row > buf.numel():
                buf = torch.empty(0, dtype=torch.uint8)  # the old one freed first
                buf = torch.empty(min(step, n_rows) * row, dtype=torch.uint8)
            f.seek(8 + n + start)
            for a in range(0, max(n_rows, 1), max(step, 1)):
                rows = min(step, n_rows - a) if shape else 1
                view = buf[: rows * row]
                if f.readinto(memoryview(view.numpy())) != view.numel():
                    raise ModelLoadError(f"{file}: tensor {name} is truncated")
                yield name, shape, a, view.view(ST_DTYPES[info["dtype"]]).reshape([rows, *shape[1:]] if shape else [])


def _llama_tl_tensor(name: str, w: torch.Tensor, cfg: HookedTransformerConfig,
                     tied: bool, a: int = 0) -> list[tuple[str, torch.Tensor, int, int]]:
    """TransformerLens names and layouts of rows ``[a, a + len(w))`` of one HF Llama tensor
    (``convert_llama_weights``, per tensor): ``(name, value, dim, offset)``, the value going to
    ``offset ...`` along ``dim`` of the parameter (rows of a head-major tensor come in whole heads)."""
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    name = name.removeprefix("model.")
    if name == "embed_tokens.weight":
        out = [("embed.W_E", w, 0, a)]
        return out + ([("unembed.W_U", w.T, 1, a)] if tied else [])
    if name == "norm.weight":
        return [("ln_final.w", w, 0, a)]
    if name == "lm_head.weight":
        return [("unembed.W_U", w.T, 1, a)]
    parts = name.split(".")
    if parts[0] != "layers":
        raise ModelLoadError(f"weight {name!r} is not part of a Llama model")
    layer, rest = int(parts[1]), ".".join(parts[2:])
    b = f"blocks.{layer}."
    h = cfg.d_head
    heads = lambda: einops.rearrange(w, "(n h) m -> n m h", h=h)  # noqa: E731 -- rows (n h): whole heads
    table = {
        "input_layernorm.weight": lambda: [(b + "ln1.w", w, 0, a)],
        "post_attention_layernorm.weight": lambda: [(b + "ln2.w", w, 0, a)],
        "self_attn.q_proj.weight": lambda: [(b + "attn.W_Q", heads(), 0, a // h)],
        "self_attn.k_proj.weight": lambda: [(b + f"attn.{gqa}W_K", heads(), 0, a // h)],
        "self_attn.v_proj.weight": lambda: [(b + f"attn.{gqa}W_V", heads(), 0, a // h)],
        "self_attn.o_proj.weight": lambda: [(b + "attn.W_O", einops.rearrange(w, "m (n h) -> n h m", n=cfg.n_heads),
                                             2, a)],
        "mlp.up_proj.weight": lambda: [(b + "mlp.W_in", w.T, 1, a)],
        "mlp.gate_proj.weight": lambda: [(b + "mlp.W_gate", w.T, 1, a)],
        "mlp.down_proj.weight": lambda: [(b + "mlp.W_out", w.T, 1, a)],
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
    if default_prepend_bos(tokenizer):
        cfg_kwargs.update(default_prepend_bos=True, tokenizer_prepends_bos=True)
    # the model is allocated once, in the target dtype and uninitialised; every weight is then read
    # from disk in row chunks, cast and copied in (no staging copy of a tensor, no transformers model)
    cfg = HookedTransformerConfig(**cfg_kwargs, device="cpu", dtype=dtype, init_weights=False)
    tied = bool(raw.get("tie_word_embeddings", False))
    model = allocate_model(cfg, tokenizer)
    del tokenizer  # TransformerLens keeps its own (loaded again with add_bos_token=True): this one is freed
    release_freed_memory()
    if tied:  # one storage for W_E and W_U, as a tied checkpoint has one matrix (hf_dir does the same)
        model.unembed.W_U = torch.nn.Parameter(model.embed.W_E.detach().T, requires_grad=False)
    params = dict(model.named_parameters())
    if tied:
        params["unembed.W_U"] = model.unembed.W_U
    loaded: set[str] = set()
    with torch.no_grad():
        for file in safetensors_files(path):
            for name, shape, a, w in _stream_safetensors(file, align=cfg.d_head):
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                if a == 0:  # the whole tensor's layout against the model's, before any of it is copied
                    for tl_name, value, _, _ in _llama_tl_tensor(name, torch.empty(shape, device="meta"), cfg, tied):
                        if tl_name not in params:
                            raise ModelLoadError(f"{file}: weight {name} maps to {tl_name}, which the model lacks")
                        if params[tl_name].shape != value.shape:
                            raise ModelLoadError(f"{file}: weight {name} has shape {tuple(shape)}, the config "
                                                 f"implies {tuple(params[tl_name].shape)} for {tl_name}")
                for tl_name, value, dim, at in _llama_tl_tensor(name, w, cfg, tied, a):
                    if tied and tl_name == "unembed.W_U":
                        continue  # the same storage as W_E
                    params[tl_name].narrow(dim, at, value.shape[dim]).copy_(value)
                    loaded.add(tl_name)
                del w
    # biases (zeros in Llama) and RMSNorm scales not in the files are TransformerLens' own initial values
    loaded |= {"unembed.W_U"} if tied and "embed.W_E" in loaded else set()
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

