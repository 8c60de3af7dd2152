"""Runners: the model, or a copy of its upper blocks, that runs the steered part of a forward pass.

A steering vector at block ``L`` (Turner et al. 2023, arXiv 2308.10248) changes nothing below
``L``, so the scoring engine runs the blocks from ``L`` on with a *runner*: the model itself, or a
copy of those blocks laid out for TransformerLens' matmuls on CPU, or converted to bf16
(``precision="bf16"``). The caller's model is never modified.
"""

from __future__ import annotations

import copy
import itertools
from typing import Literal

import torch
from torch import nn

from workbench.core.backend import Model, is_bridge, to_dtype

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("fp32", "bf16")
# weight -> the permutation TransformerLens makes contiguous before its matmul (see make_runner)
_KERNEL_LAYOUT = {"W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_Q": (0, 2, 1), "W_K": (0, 2, 1),
                  "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1), "W_O": (2, 0, 1), "W_U": (1, 0)}


def make_runner(model: Model, start_layer: int, dtype: torch.dtype | None = None, *,
                unembed: bool = False, stop_layer: int | None = None) -> Model:
    """The model that runs blocks ``start_layer..``: ``model`` itself, or a copy of those blocks only.

    * Same dtype, not on CPU: ``model`` itself (no copy).
    * Same dtype on CPU: TransformerLens copies most block weights into a transposed contiguous
      tensor at every forward call (``W_in.T.contiguous()``); the runner stores them so that view is
      already contiguous, which skips those copies with bit-identical results (the speed of BiPO's
      step loop on CPU; ``bench/bipo_speed.py``). Memory: the parameters of blocks ``start_layer..``
      once more, in ``model``'s dtype.
    * Another dtype (``torch.bfloat16``): blocks ``start_layer..`` converted straight into that dtype
      (and laid out on CPU), never through an fp32 copy. Memory: those blocks' parameters and float
      buffers (rotary tables) in the new dtype.
    * A ``TransformerBridge`` (TransformerLens 4) runs every block on each call: ``model`` itself in
      its dtype, else a whole copy in ``dtype`` (no layout trick: its kernels are transformers').

    Everything else (embedding, earlier blocks, ``ln_final``, ``W_U``, tokenizer) is shared with
    ``model``; with ``unembed=True`` the runner also gets its own laid-out ``W_U`` (callers that
    unembed through TransformerLens, e.g. generation). With ``stop_layer`` only blocks
    ``start_layer..stop_layer - 1`` are copied (e.g. the blocks before a hook, laid out for one setup
    pass). The caller's model is never modified.
    """
    dtype = dtype or model.cfg.dtype
    on_cpu = torch.device(model.cfg.device or "cpu").type == "cpu"
    if is_bridge(model):  # runs every block anyway: itself, or a whole copy in the other dtype
        if dtype == model.cfg.dtype:
            return model
        return to_dtype(copy.deepcopy(model, {id(model.tokenizer): model.tokenizer}), dtype)
    if dtype == model.cfg.dtype and not on_cpu and not unembed:
        return model
    modules = list(model.blocks[start_layer:stop_layer]) + ([model.unembed] if unembed else [])
    memo: dict[int, object] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    for module in (sub for m in modules for sub in m.modules()):
        for name, w in module._parameters.items():
            if w is None:
                continue
            new = w.detach().to(dtype) if w.is_floating_point() else w.detach()  # copies only to change dtype
            perm = _KERNEL_LAYOUT.get(name)
            if on_cpu and perm is not None and new.ndim == len(perm):
                inverse = [perm.index(i) for i in range(len(perm))]
                new = new.permute(*perm).contiguous().permute(*inverse)
            if new.data_ptr() != w.data_ptr():
                memo[id(w)] = nn.Parameter(new, requires_grad=False)
        for name, b in module._buffers.items():  # rotary tables follow the dtype; masks are shared
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                memo[id(b)] = b.to(dtype)
    if model.tokenizer is not None:
        memo[id(model.tokenizer)] = model.tokenizer
    runner = copy.deepcopy(model, memo)  # copies the module tree; every tensor comes from memo
    runner.cfg.dtype = dtype
    return runner


def runner_bytes(model: Model, start_layer: int, dtype: torch.dtype | None = None, *,
                 stop_layer: int | None = None) -> int:
    """Bytes of the parameters and float buffers that ``make_runner(model, start_layer, dtype,
    stop_layer=stop_layer)`` copies (blocks ``start_layer..stop_layer - 1`` in ``dtype``); 0 where it
    copies nothing (same dtype off the CPU, a ``TransformerBridge`` in its own dtype)."""
    dtype = dtype or model.cfg.dtype
    on_cpu = torch.device(model.cfg.device or "cpu").type == "cpu"
    if (is_bridge(model) or not on_cpu) and dtype == model.cfg.dtype:
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    if is_bridge(model):  # a whole copy in the other dtype
        return sum(t.numel() * size for t in itertools.chain(model.parameters(), model.buffers())
                   if t.is_floating_point())
    total = 0
    for module in (sub for block in model.blocks[start_layer:stop_layer] for sub in block.modules()):
        for name, w in module._parameters.items():  # same dtype: only the re-laid-out weights are new
            if w is not None and (w.dtype != dtype and w.is_floating_point() or name in _KERNEL_LAYOUT):
                total += w.numel() * size
        total += sum(b.numel() * size for b in module._buffers.values()
                     if b is not None and b.is_floating_point() and b.dtype != dtype)
    return total


def precision_runner(model: Model, precision: Precision | str, start_layer: int = 0) -> Model:
    """The runner of blocks ``start_layer..`` for ``precision`` (``"fp32"``: ``model`` itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or model.cfg.dtype == torch.bfloat16:
        return model
    return make_runner(model, start_layer, torch.bfloat16)

