"""Safetensors weights read lean into a ``HookedTransformer`` allocated once (both local-directory loaders).

``workbench.core.hf_dir`` (every family, through TransformerLens' converters) and
``workbench.core.llama_dir`` (Llama, without transformers) share what keeps a load at about the weights'
size: the shard list (``safetensors_files``: never a pickle), the tensor index of the shards' headers
(``index_tensors``), one reused read buffer in the target dtype (``TensorReader``: a cast goes through a
``STAGE_BYTES`` staging buffer, never a whole tensor in the checkpoint's dtype), the model allocated
uninitialised in the target dtype with its rotary tables shared (``allocate_model``,
``share_rotary_tables``), and the C heap's freed pages handed back (``release_freed_memory``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from workbench.core.backend import HookedTransformer, HookedTransformerConfig
from workbench.core.devices import ModelLoadError
from workbench.core.io import read_safetensors_header

ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
STAGE_BYTES = 1 << 20  # staging buffer of a cast (checkpoint dtype != target dtype)


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


class TensorReader:
    """Reads tensors (or row ranges of them) from safetensors files into ONE reused buffer of the target
    dtype: bytes already in that dtype go straight from the file into it; any other dtype is read in
    row chunks of at most ``STAGE_BYTES`` into a small staging buffer and cast from there (``copy_``,
    the same rounding as ``Tensor.to``), so no whole tensor ever exists in the checkpoint's dtype."""

    def __init__(self, entries: dict[str, tuple[Path, int, dict[str, Any]]], dtype: torch.dtype):
        self.entries, self.dtype = entries, dtype
        self.buf = torch.empty(0, dtype=dtype)
        self.stage = torch.empty(0, dtype=torch.uint8)

    def reserve(self, numel: int) -> None:
        """Grow the buffer to ``numel`` elements (the old one freed first)."""
        if numel > self.buf.numel():
            self.buf = torch.empty(0, dtype=self.dtype)
            self.buf = torch.empty(numel, dtype=self.dtype)

    def read(self, parts: list[tuple[list[int], list[tuple[str, int, int, int]]]]) -> list[torch.Tensor]:
        """One tensor of shape ``shape`` per ``(shape, sources)``, in the target dtype, as views of the
        buffer (valid until the next ``read``): each source ``(name, a, b, row)`` puts rows ``[a, b)`` of
        the named tensor at row ``row`` of it (several sources: experts merged into one tensor)."""
        sizes = [int(torch.Size(shape).numel()) for shape, _ in parts]
        self.reserve(sum(sizes))
        out, at = [], 0
        for (shape, sources), n in zip(parts, sizes):
            whole = self.buf[at: at + n]
            row_numel = n // shape[0] if shape else 1
            for name, a, b, row in sources:
                self._into(whole[row * row_numel: (row + b - a) * row_numel], name, a, b)
            out.append(whole.view(shape))
            at += n
        return out

    def _into(self, dst: torch.Tensor, name: str, a: int, b: int) -> None:
        file, base, info = self.entries[name]
        src = ST_DTYPES[info["dtype"]]
        row_numel = dst.numel() // max(b - a, 1)
        start = base + info["data_offsets"][0] + a * row_numel * src.itemsize
        with open(file, "rb") as f:
            f.seek(start)
            if src == self.dtype:
                chunks = [(dst.view(torch.uint8), None)]
            else:
                rows = max(1, STAGE_BYTES // max(row_numel * src.itemsize, 1))
                step = rows * row_numel
                if self.stage.numel() < min(step, dst.numel()) * src.itemsize:
                    self.stage = torch.empty(min(step, dst.numel()) * src.itemsize, dtype=torch.uint8)
                chunks = [(self.stage[: (min(i + step, dst.numel()) - i) * src.itemsize], dst[i: i + step])
                          for i in range(0, dst.numel(), step)]
            for raw, target in chunks:
                if f.readinto(memoryview(raw.numpy())) != raw.numel():
                    raise ModelLoadError(f"{file}: tensor {name} is truncated")
                if target is not None:
                    target.copy_(raw.view(src))


def index_tensors(files: list[Path]) -> dict[str, tuple[Path, int, dict[str, Any]]]:
    entries = {}
    for file in files:
        header = read_safetensors_header(file, ModelLoadError, dtypes=tuple(ST_DTYPES))
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        for name, info in header.items():
            entries[name] = (file, 8 + n, info)
    return entries


def allocate_model(cfg: HookedTransformerConfig, tokenizer: Any) -> HookedTransformer:
    """A ``HookedTransformer`` of ``cfg`` whose parameters are allocated, uninitialised, in ``cfg.dtype``
    and whose rotary tables are shared (``share_rotary_tables``).

    ``init_weights=False`` skips TransformerLens' own initialisation but not ``torch.nn.Linear``'s, which
    its mixture-of-experts layers (Mixtral's router and experts) use, in float32 whatever ``cfg.dtype``:
    initialised there, the experts would be resident in float32 (2x the weights of a bf16 model) before
    the first weight is read. So ``nn.Linear.reset_parameters`` is skipped while the model is built, and
    every parameter of another floating dtype is replaced by an empty one in ``cfg.dtype`` (the loader
    writes every parameter, or zeroes it).
    """
    reset = torch.nn.Linear.reset_parameters
    torch.nn.Linear.reset_parameters = lambda self: None  # type: ignore[method-assign]
    try:
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    finally:
        torch.nn.Linear.reset_parameters = reset  # type: ignore[method-assign]
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and p.is_floating_point() and p.dtype != cfg.dtype:
                module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=cfg.dtype),
                                                              requires_grad=p.requires_grad)
    share_rotary_tables(model)
    return model


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    A tokenizer freed after ``HookedTransformer`` loaded its own copy (``get_tokenizer_with_bos``: a
    second ``AutoTokenizer.from_pretrained``) leaves its pages in the heap, resident, under the weights
    streamed next: for a 262k-token vocabulary that is a few hundred MB of the peak.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def share_rotary_tables(model: HookedTransformer) -> None:
    """Let every attention layer with the same rotary table hold one tensor of it, not a copy each.

    TransformerLens builds ``rotary_sin`` / ``rotary_cos`` (``min(n_ctx, 2048) x rotary_dim`` in the
    model's dtype) in every layer: ``2 * n_layers * min(n_ctx, 2048) * rotary_dim * itemsize`` bytes, the
    same values per attention type. It only ever replaces them (``_extend_rotary_embeddings``), never
    writes into them, so layers can share one; ``model.to`` copies them apart again.
    """
    seen: dict[tuple[Any, ...], Any] = {}
    for block in getattr(model, "blocks", []):
        attn = block.attn
        sin, cos = attn._buffers.get("rotary_sin"), attn._buffers.get("rotary_cos")
        if sin is None or cos is None:
            continue
        key = (tuple(sin.shape), sin.dtype, sin.device)
        for other_sin, other_cos in seen.get(key, []):
            if torch.equal(sin, other_sin) and torch.equal(cos, other_cos):
                attn.rotary_sin, attn.rotary_cos = other_sin, other_cos
                break
        else:
            seen.setdefault(key, []).append((sin, cos))


__all__ = ["ST_DTYPES", "STAGE_BYTES", "TensorReader", "allocate_model", "index_tensors", "release_freed_memory",
           "safetensors_files", "share_rotary_tables"]
