"""A local Hugging Face directory of any family TransformerLens converts, streamed into a ``HookedTransformer``.

The architecture comes from the directory's own ``config.json`` (never from its path), the
``HookedTransformerConfig`` from that config (``workbench.core.hf_config.tl_config_dict``), and the
weights go through TransformerLens' own per-family converter (``convert_gpt2_weights``,
``convert_gemma_weights``, ... in ``transformer_lens.pretrained.weight_conversions``), without ever
holding a second copy of the model:

1. a transformers model of the architecture is built on the ``meta`` device (no memory);
2. the ``HookedTransformer`` is allocated once, in the target dtype, uninitialised;
3. the safetensors tensors are read one *layer* at a time (plus the vocabulary matrices in row
   slices) into one reused buffer, set into the meta model, and the family's converter is run: the
   outputs that are real (not meta) are exactly that layer's TransformerLens tensors, copied into the
   model before the next layer is read. Small tensors (norms, biases) stay resident throughout.

Why this and not "a meta transformers model filled shard by shard": the converter needs a whole
transformers model, and a filled one is a second copy of the weights (the 3.2x the issue measured);
here only one layer lives next to the model. Tied input/output embeddings share one storage in the
``HookedTransformer`` too (for Gemma, which scales its embedding by sqrt(d_model), the final norm's
weight carries the inverse scale: logits unchanged), so a 262k-vocabulary model is not doubled.
Nothing is ever unpickled: ``*.bin`` checkpoints are refused.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench.core.backend import HookedTransformer, HookedTransformerConfig
from workbench.core.devices import ModelLoadError, place_model
from workbench.core.hf_config import (GEMMA_ARCHITECTURES, STREAMED_ARCHITECTURES, check_converter_fields,
                                      check_core_fields, supported_architectures, tl_config_dict)
from workbench.core.io import read_safetensors_header
from workbench.core.prompts import has_chat_template

_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
_SKIPPED = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")  # buffers some checkpoints carry
_VOCAB_ROWS = 8192  # rows of an embedding / unembedding read at a time


def safetensors_files(path: Path) -> list[Path]:
    """The ``*.safetensors`` shards of directory ``path`` (its index when there is one)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(path.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found {', '.join(bins[:3])}: convert them to safetensors; workbench never unpickles)" if bins else ""
        raise ModelLoadError(f"{path}: no *.safetensors weights in the directory{hint}")
    return files


def _converter(architecture: str) -> Callable[[Any, Any], dict[str, torch.Tensor]]:
    import transformer_lens.pretrained.weight_conversions as wc

    return getattr(wc, STREAMED_ARCHITECTURES[architecture])


class _Reader:
    """Reads tensors (or row slices of them) from safetensors files into one reused byte buffer."""

    def __init__(self, entries: dict[str, tuple[Path, int, dict[str, Any]]]):
        self.entries = entries
        self.buf = torch.empty(0, dtype=torch.uint8)

    def read(self, items: list[tuple[str, int, int]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` of rows ``[a, b)`` of each named tensor, cast to ``dtype``; views of the
        buffer (or casts of them), valid until the next ``read``."""
        spans = []
        for name, a, b in items:
            file, base, info = self.entries[name]
            shape = info["shape"]
            row = _ST_DTYPES[info["dtype"]].itemsize * (int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
            spans.append((name, file, base + info["data_offsets"][0] + a * row, (b - a) * row, info, b - a))
        total = sum(s[3] for s in spans)
        if total > self.buf.numel():
            self.buf = torch.empty(0, dtype=torch.uint8)  # free the old one first
            self.buf = torch.empty(total, dtype=torch.uint8)
        out, at = {}, 0
        for name, file, start, size, info, rows in spans:
            view = self.buf[at: at + size]
            with open(file, "rb") as f:
                f.seek(start)
                if f.readinto(memoryview(view.numpy())) != size:
                    raise ModelLoadError(f"{file}: tensor {name} is truncated")
            shape = [rows, *info["shape"][1:]] if info["shape"] else []
            t = view.view(_ST_DTYPES[info["dtype"]]).reshape(shape)
            out[name] = t if t.dtype == dtype else t.to(dtype)
            at += size
        return out


def _index(files: list[Path]) -> dict[str, tuple[Path, int, dict[str, Any]]]:
    entries = {}
    for file in files:
        header = read_safetensors_header(file, ModelLoadError, dtypes=tuple(_ST_DTYPES))
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        for name, info in header.items():
            entries[name] = (file, 8 + n, info)
    return entries


def _hf_slots(hf: torch.nn.Module) -> dict[str, list[tuple[torch.nn.Module, str]]]:
    """``{parameter name: [(module, attribute), ...]}``: every place a (possibly tied) parameter sits."""
    by_id: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    names: dict[str, int] = {}
    for mod_name, module in hf.named_modules():
        for attr, p in module._parameters.items():
            if p is None:
                continue
            by_id.setdefault(id(p), []).append((module, attr))
            names[f"{mod_name}.{attr}" if mod_name else attr] = id(p)
    return {name: by_id[i] for name, i in names.items()}


def _renamings(hf: torch.nn.Module) -> list[tuple[str, str]]:
    """transformers' own renamings of this class's checkpoint keys (``embed_out.`` -> ``lm_head.`` for GPT-NeoX)."""
    try:
        from transformers.conversion_mapping import extract_weight_conversions_for_model

        rules = extract_weight_conversions_for_model(hf) or []
    except ImportError:
        return []
    out = []
    for rule in rules:
        if type(rule).__name__ != "WeightRenaming":
            continue
        sources = rule.source_patterns if isinstance(rule.source_patterns, list) else [rule.source_patterns]
        targets = rule.target_patterns if isinstance(rule.target_patterns, list) else [rule.target_patterns]
        out += [(str(a), str(b)) for a, b in zip(sources, targets * len(sources))]
    return out


def _match(name: str, slots: dict[str, Any], prefix: str, renamings: list[tuple[str, str]]) -> str | None:
    names = [name] + [re.sub(a, b, name) for a, b in renamings if re.search(a, name)]
    for n in names:
        for cand in (n, f"{prefix}.{n}", n.removeprefix(f"{prefix}.")):
            if cand in slots:
                return cand
    return None


def load_hf_dir(path: Path, device: str, dtype: torch.dtype, n_devices: int, max_ctx: int) -> HookedTransformer:
    """The Hugging Face directory ``path`` (any of ``STREAMED_ARCHITECTURES``) as a frozen, unprocessed model.

    Args:
        path: the directory (``config.json``, tokenizer files, ``*.safetensors``).
        device: a resolved device (``workbench.core.devices.resolve_device``).
        dtype: the weights' dtype (each tensor is cast as it is read).
        n_devices: split the blocks over this many CUDA devices.
        max_ctx: cap of ``n_ctx``.

    Raises:
        ModelLoadError: an unsupported architecture, a config field missing or malformed, no
            safetensors weights, or a weight the model does not have or lacks.
    """
    raw = json.loads((path / "config.json").read_text())
    architecture = raw["architectures"][0]
    if architecture not in STREAMED_ARCHITECTURES:
        raise ModelLoadError(f"config.json: architecture {architecture!r} is not supported "
                             f"(supported: {', '.join(supported_architectures())})")
    model_type = str(raw.get("model_type"))
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(f"config.json field 'model_type' is {raw.get('model_type')!r}: transformers knows no "
                             f"such model type")
    check_core_fields(raw, CONFIG_MAPPING[model_type], architecture)  # before transformers fills in another model's defaults
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 -- transformers' validators raise several types
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"config.json: transformers cannot read it as a {architecture} config ({detail.strip()})") from None
    check_converter_fields(hf_config, architecture)
    files = safetensors_files(path)
    cfg_dict = tl_config_dict(hf_config, architecture, path.name, max_ctx)
    tokenizer = AutoTokenizer.from_pretrained(path)
    bos = not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None
    cfg_dict.update(default_prepend_bos=bos, tokenizer_prepends_bos=bos)
    cfg = HookedTransformerConfig(**cfg_dict, device="cpu", dtype=dtype, init_weights=False)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    hf.requires_grad_(False)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    _fill(model, hf, _index(files), architecture, dtype, path)
    model.cfg.device = device
    model = place_model(model, device, n_devices)
    model.eval()
    model.requires_grad_(False)
    return model


def _fill(model: HookedTransformer, hf: torch.nn.Module, entries: dict[str, tuple[Path, int, dict[str, Any]]],
          architecture: str, dtype: torch.dtype, path: Path) -> None:
    """Stream ``entries`` through the family's converter into ``model`` (see the module docstring)."""
    convert = _converter(architecture)
    slots = _hf_slots(hf)
    meta = {name: places[0][0]._parameters[places[0][1]] for name, places in slots.items()}
    prefix = getattr(hf, "base_model_prefix", "model")
    renamings = _renamings(hf)
    params = dict(model.named_parameters())
    vocab = model.cfg.d_vocab
    groups: dict[int, list[str]] = {}
    resident, vocab_mats = [], []
    for name, (_, _, info) in entries.items():
        if name.endswith(_SKIPPED):
            continue
        hf_name = _match(name, slots, prefix, renamings)
        if hf_name is None:
            raise ModelLoadError(f"{path}: weight {name!r} is not part of a {architecture} model")
        if list(meta[hf_name].shape) != info["shape"]:
            raise ModelLoadError(f"{path}: weight {name} has shape {tuple(info['shape'])}, the config implies "
                                 f"{tuple(meta[hf_name].shape)}")
        layer = _LAYER.search(f".{hf_name}")
        if len(info["shape"]) <= 1 or (layer is None and info["shape"][0] != vocab):
            resident.append((name, hf_name))
        elif layer is None:
            vocab_mats.append((name, hf_name))
        else:
            groups.setdefault(int(layer.group(1)), []).append((name, hf_name))
    given = {id(slots[h]) for items in [resident, vocab_mats, *groups.values()] for _, h in items}
    missing = [h for h in slots if id(slots[h]) not in given]
    if missing:
        raise ModelLoadError(f"{path}: weights missing for {missing[:5]}")
    tied_to = {h for h, places in slots.items() if len(places) > 1}

    def put(hf_name: str, value: torch.Tensor) -> None:
        p = torch.nn.Parameter(value, requires_grad=False)
        for module, attr in slots[hf_name]:
            module._parameters[attr] = p

    def run() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {k: v for k, v in convert(hf, model.cfg).items() if v.device.type != "meta"}

    reader = _Reader(entries)
    small = {h: t.clone() for (n, h), t in zip(resident, reader.read([(n, 0, _rows(entries[n])) for n, _ in resident],
                                                                    dtype).values())}
    for h, t in small.items():
        put(h, t)
    loaded: set[str] = set()
    # tied embeddings: one storage for W_E and W_U (Gemma: the embedding is scaled, so W_U = W_E.T / s,
    # folded into the final norm's weight instead)
    tied = bool(tied_to) and any(len(slots[h]) > 1 for _, h in vocab_mats) and "unembed.W_U" in params
    gemma_scale = model.cfg.d_model ** 0.5 if architecture in GEMMA_ARCHITECTURES else None
    if tied:
        model.unembed.W_U = torch.nn.Parameter(model.embed.W_E.detach().T, requires_grad=False)
        params = dict(model.named_parameters())
        params["unembed.W_U"] = model.unembed.W_U

    def copy(out: dict[str, torch.Tensor], skip: set[str], rows: tuple[int, int] | None = None) -> None:
        for key, value in out.items():
            if key in skip:
                continue
            if key not in params and not value.any():
                continue  # a zero bias the converter writes for a norm the model does not have (Phi-3)
            if key not in params:
                raise ModelLoadError(f"{path}: the converter gives {key}, which the model lacks")
            if tied and key == "unembed.W_U":
                continue
            target = params[key]
            if rows is not None and tuple(value.shape) != tuple(target.shape):
                axes = [i for i, (a, b) in enumerate(zip(value.shape, target.shape)) if a != b]
                target = target.narrow(axes[0], rows[0], rows[1] - rows[0])
            if tuple(value.shape) != tuple(target.shape):
                raise ModelLoadError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                                     f"{tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(value)
            loaded.add(key)

    base = run()
    copy(base, set())
    skip = set(base)
    for layer in sorted(groups):
        items = groups[layer]
        for h, t in zip([h for _, h in items], reader.read([(n, 0, _rows(entries[n])) for n, _ in items], dtype).values()):
            put(h, t)
        copy(run(), skip)
        for _, h in items:
            put(h, meta[h])
    if vocab_mats:
        n_rows = entries[vocab_mats[0][0]][2]["shape"][0]
        for a in range(0, n_rows, _VOCAB_ROWS):
            b = min(a + _VOCAB_ROWS, n_rows)
            for h, t in zip([h for _, h in vocab_mats], reader.read([(n, a, b) for n, _ in vocab_mats], dtype).values()):
                put(h, t)
            copy(run(), skip, rows=(a, b))
        for _, h in vocab_mats:
            put(h, meta[h])
    reader.buf = torch.empty(0, dtype=torch.uint8)
    if tied and gemma_scale is not None and "ln_final.w" in params:
        with torch.no_grad():
            params["ln_final.w"].div_(gemma_scale)
    # biases the converter does not write (none in the family) are zeros
    left = [k for k in params if k not in loaded and not (tied and k == "unembed.W_U")]
    bad = [k for k in left if not k.rsplit(".", 1)[-1].lstrip("_").startswith("b_")]
    if bad:
        raise ModelLoadError(f"{path}: weights missing for {bad[:5]}")
    with torch.no_grad():
        for k in left:
            params[k].zero_()


def _rows(entry: tuple[Path, int, dict[str, Any]]) -> int:
    shape = entry[2]["shape"]
    return shape[0] if shape else 1
