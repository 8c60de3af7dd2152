"""A local Hugging Face directory of any family TransformerLens converts, streamed into a ``HookedTransformer``.

The architecture comes from the directory's own ``config.json`` (never from its path), the
``HookedTransformerConfig`` from that config (``workbench.core.hf_config.tl_config_dict``), and the
weights go through TransformerLens' own per-family converter (``convert_gpt2_weights``,
``convert_gemma_weights``, ... in ``transformer_lens.pretrained.weight_conversions``), without ever
holding a second copy of the model:

1. a transformers model of the architecture is built on the ``meta`` device (no memory);
2. the ``HookedTransformer`` is allocated once, in the target dtype, uninitialised (``allocate_model``:
   no ``nn.Linear`` initialisation, one rotary table per distinct table);
3. the safetensors tensors are read one *transformers tensor* at a time (Mixtral's experts merged into
   one, as transformers merges them; the vocabulary matrices in row slices) into one reused buffer of
   the target dtype, set into the meta model, and the family's converter is run: the outputs that are
   real (not meta) are exactly that tensor's TransformerLens tensors, copied into the model before the
   next one is read. Small tensors (norms, biases) stay resident throughout.

Why this and not "a meta transformers model filled shard by shard": the converter needs a whole
transformers model, and a filled one is a second copy of the weights (the 3.2x the issue measured).
Host memory above the process before the load, as a formula (issue #26; ``bench/load_memory.py``,
``bench/load_memory_steps.py``), with W the weights in the target dtype:

    W                                       the model (each storage once)
    + max(largest transformers tensor, vocabulary slice) in the target dtype    the read buffer
    + weights.STAGE_BYTES                   only when the checkpoint's dtype is not the target's
    + tokenizer                             e.g. 13 MiB (32k WordLevel) .. ~300 MiB (Gemma's 262k)
    + ~25 MiB                               imports done in the load, the meta model, Python objects
    + 2 * distinct tables * min(n_ctx, 2048) * rotary_dim * itemsize        the rotary tables

TransformerLens 3.9 allocates no ``n_ctx x n_ctx`` mask any more (a ``0 x 0`` buffer per layer). Tied
input/output embeddings share one storage in the ``HookedTransformer`` too (for Gemma, which scales its
embedding by sqrt(d_model), the final norm's weight carries the inverse scale: logits unchanged), so a
262k-vocabulary model is not doubled.
Nothing is ever unpickled: ``*.bin`` checkpoints are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench.core.backend import HookedTransformer, HookedTransformerConfig
from workbench.core.devices import ModelLoadError, place_model
from workbench.core.hf_config import (GEMMA_ARCHITECTURES, STREAMED_ARCHITECTURES, check_converter_fields,
                                      check_core_fields, supported_architectures, tl_config_dict)
from workbench.core.prompts import default_prepend_bos
from workbench.core import weights
from workbench.core.weights import (TensorReader, allocate_model, index_tensors, release_freed_memory,
                                    safetensors_files)

_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
_SKIPPED = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")  # buffers some checkpoints carry
_VOCAB_ROWS = 256  # fewest rows of an embedding / unembedding read at a time


def _converter(architecture: str) -> Callable[[Any, Any], dict[str, torch.Tensor]]:
    """The family's TransformerLens converter. Where it refuses tensors without values
    (``require_readable_weight``: Mixtral's router and experts), a ``meta`` tensor is let through for
    the call (its outputs stay ``meta`` and are dropped); any other tensor is checked as before."""
    import sys

    import transformer_lens.pretrained.weight_conversions as wc

    fn = getattr(wc, STREAMED_ARCHITECTURES[architecture])
    module = sys.modules[fn.__module__]
    check = getattr(module, "require_readable_weight", None)
    if check is None:
        return fn

    def readable(weight: Any, *args: Any, **kwargs: Any) -> Any:
        return weight if getattr(weight, "device", None) == torch.device("meta") else check(weight, *args, **kwargs)

    def convert(hf: Any, cfg: Any) -> dict[str, torch.Tensor]:
        module.require_readable_weight = readable
        try:
            return fn(hf, cfg)
        finally:
            module.require_readable_weight = check

    return convert


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


def _conversion_rules(hf: torch.nn.Module) -> list[Any]:
    """transformers' checkpoint-conversion rules of this model class (none on a transformers without them)."""
    try:
        from transformers.conversion_mapping import extract_weight_conversions_for_model
    except ImportError:
        return []
    return list(extract_weight_conversions_for_model(hf) or [])


def _renamings(hf: torch.nn.Module) -> list[tuple[str, str]]:
    """transformers' own renamings of this class's checkpoint keys (``embed_out.`` -> ``lm_head.`` for GPT-NeoX)."""
    out = []
    for rule in _conversion_rules(hf):
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


def _merges(hf: torch.nn.Module) -> list[tuple[list[re.Pattern[str]], str]]:
    """transformers' own merges of per-expert checkpoint tensors into one tensor of this class
    (``experts.{e}.w1/w3`` -> ``experts.gate_up_proj`` for Mixtral): ``[(source patterns, target)]`` of
    the rules that stack the experts (``MergeModulelist(dim=0)``), then, with several sources, join them
    row-wise per expert (``Concatenate(dim=1)``); other kinds of rule are not streamed."""
    out = []
    for rule in _conversion_rules(hf):
        ops = [(type(op).__name__, getattr(op, "dim", None)) for op in getattr(rule, "operations", []) or []]
        sources = rule.source_patterns if isinstance(rule.source_patterns, list) else [rule.source_patterns]
        target = rule.target_patterns[0] if isinstance(rule.target_patterns, list) else rule.target_patterns
        if ops in ([("MergeModulelist", 0)], [("MergeModulelist", 0), ("Concatenate", 1)]) and \
                (len(sources) == 1) == (len(ops) == 1) and all("*" in s for s in sources):
            out.append(([re.compile(re.escape(s).replace(r"\*", r"(\d+)")) for s in sources], str(target)))
    return out


def _merged(name: str, merges: list[tuple[list[re.Pattern[str]], str]]) -> tuple[str, int, int, int] | None:
    """``(target name, expert, source index, number of sources)`` of a checkpoint tensor some merge takes."""
    for sources, target in merges:
        for i, pattern in enumerate(sources):
            m = pattern.search(name)
            if m:
                return name[: m.start()] + target + name[m.end():], int(m.group(1)), i, len(sources)
    return None


def _fill(model: HookedTransformer, hf: torch.nn.Module, entries: dict[str, tuple[Path, int, dict[str, Any]]],
          architecture: str, dtype: torch.dtype, path: Path) -> None:
    """Stream ``entries`` through the family's converter into ``model`` (see the module docstring)."""
    convert = _converter(architecture)
    slots = _hf_slots(hf)
    meta = {name: places[0][0]._parameters[places[0][1]] for name, places in slots.items()}
    prefix = getattr(hf, "base_model_prefix", "model")
    renamings, merges = _renamings(hf), _merges(hf)
    params = dict(model.named_parameters())
    vocab = model.cfg.d_vocab
    # sources[hf name] = [(checkpoint name, first row in the hf tensor seen as [rows, ...])]
    sources: dict[str, list[tuple[str, int]]] = {}
    merged: set[str] = set()
    for name, (_, _, info) in entries.items():
        if name.endswith(_SKIPPED):
            continue
        hf_name, merge = _match(name, slots, prefix, renamings), None
        if hf_name is None:
            renamed = [re.sub(a, b, name) for a, b in renamings if re.search(a, name)] or [name]
            merge = _merged(renamed[0], merges)
            hf_name = merge and _match(merge[0], slots, prefix, [])
        if hf_name is None:
            raise ModelLoadError(f"{path}: weight {name!r} is not part of a {architecture} model")
        shape = list(meta[hf_name].shape)
        if merge is not None:  # expert e, source i of n: rows [(e * n + i) * r, ... + r) of [E * n * r, ...]
            _, e, i, n = merge
            r = shape[1] // n if len(shape) == 3 else -1
            if shape[1:] != [n * r, *info["shape"][1:]] or info["shape"][0] != r or not 0 <= e < shape[0]:
                raise ModelLoadError(f"{path}: weight {name} has shape {tuple(info['shape'])}, the config implies "
                                     f"{(r, *shape[2:])} (expert {e} of {tuple(shape)})")
            sources.setdefault(hf_name, []).append((name, (e * n + i) * r))
            merged.add(hf_name)
            continue
        if shape != info["shape"]:
            raise ModelLoadError(f"{path}: weight {name} has shape {tuple(info['shape'])}, the config implies "
                                 f"{tuple(shape)}")
        sources.setdefault(hf_name, []).append((name, 0))
    for hf_name, srcs in sources.items():
        if hf_name in merged:  # every expert's every source once
            rows = sum(_rows(entries[n]) for n, _ in srcs)
            complete = len({r for _, r in srcs}) == len(srcs) and rows == meta[hf_name].shape[:2].numel()
        else:
            complete = len(srcs) == 1
        if not complete:
            raise ModelLoadError(f"{path}: weights for {hf_name} given twice or in part "
                                 f"({', '.join(n for n, _ in srcs[:3])} ...)")
    given = {id(slots[h]) for h in sources}
    missing = [h for h in slots if id(slots[h]) not in given]
    if missing:
        raise ModelLoadError(f"{path}: weights missing for {missing[:5]}")
    resident, vocab_mats, groups = [], [], {}
    for h in sources:
        shape = list(meta[h].shape)
        layer = _LAYER.search(f".{h}")
        if len(shape) <= 1 or (layer is None and shape[0] != vocab):
            resident.append(h)
        elif layer is None:
            vocab_mats.append(h)
        else:
            groups.setdefault(int(layer.group(1)), []).append(h)
    tied_to = {h for h, places in slots.items() if len(places) > 1}

    def part(h: str, a: int | None = None, b: int | None = None) -> tuple[list[int], list[tuple[str, int, int, int]]]:
        shape = list(meta[h].shape)
        if a is not None:  # rows [a, b) of a vocabulary matrix (one source)
            return [b - a, *shape[1:]], [(sources[h][0][0], a, b, 0)]
        if h in merged:  # experts stacked: read as [E * n * r, ...], then seen as [E, n * r, ...]
            return [shape[0] * shape[1], *shape[2:]], [(n, 0, _rows(entries[n]), row) for n, row in sources[h]]
        return shape, [(sources[h][0][0], 0, _rows(entries[sources[h][0][0]]), 0)]

    def put(hf_name: str, value: torch.Tensor) -> None:
        p = torch.nn.Parameter(value, requires_grad=False)
        for module, attr in slots[hf_name]:
            module._parameters[attr] = p

    def run() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {k: v for k, v in convert(hf, model.cfg).items() if v.device.type != "meta"}

    reader = TensorReader(entries, dtype)
    for h, t in zip(resident, reader.read([part(h) for h in resident])):
        put(h, t.clone().view(meta[h].shape))
    loaded: set[str] = set()
    # tied embeddings: one storage for W_E and W_U (Gemma: the embedding is scaled, so W_U = W_E.T / s,
    # folded into the final norm's weight instead)
    tied = bool(tied_to) and any(len(slots[h]) > 1 for h in vocab_mats) and "unembed.W_U" in params
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

    def stream(names: list[str], chunks: list[tuple[list[int], list[tuple[str, int, int, int]]]],
               rows: tuple[int, int] | None = None) -> None:
        try:
            for h, t in zip(names, reader.read(chunks)):
                put(h, t if rows is not None else t.view(meta[h].shape))
            copy(run(), skip, rows)
        finally:
            for h in names:
                put(h, meta[h])

    # one hf tensor at a time (its converter outputs are the only real ones); a converter that combines
    # two tensors of a layer (none of the supported ones does) fails on the meta one: then the whole layer
    largest = max((int(meta[h].numel()) for hs in groups.values() for h in hs), default=0)
    reader.reserve(largest)
    for layer in sorted(groups):
        try:
            for h in groups[layer]:
                stream([h], [part(h)])
        except (RuntimeError, NotImplementedError):
            stream(groups[layer], [part(h) for h in groups[layer]])
    if vocab_mats:
        n_rows = int(meta[vocab_mats[0]].shape[0])
        step = max(_VOCAB_ROWS, largest // max(sum(int(meta[h].shape[1:].numel()) for h in vocab_mats), 1))
        for a in range(0, n_rows, step):
            b = min(a + step, n_rows)
            stream(vocab_mats, [part(h, a, b) for h in vocab_mats], rows=(a, b))
    reader.buf = torch.empty(0, dtype=dtype)
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
    bos = default_prepend_bos(tokenizer)
    cfg_dict.update(default_prepend_bos=bos, tokenizer_prepends_bos=bos)
    cfg = HookedTransformerConfig(**cfg_dict, device="cpu", dtype=dtype, init_weights=False)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    hf.requires_grad_(False)
    model = allocate_model(cfg, tokenizer)
    del tokenizer  # TransformerLens keeps its own (loaded again with add_bos_token=True): this one is freed
    release_freed_memory()
    _fill(model, hf, index_tensors(files), architecture, dtype, path)
    model.cfg.device = device
    model = place_model(model, device, n_devices)
    model.eval()
    model.requires_grad_(False)
    return model


def _rows(entry: tuple[Path, int, dict[str, Any]]) -> int:
    shape = entry[2]["shape"]
    return shape[0] if shape else 1
