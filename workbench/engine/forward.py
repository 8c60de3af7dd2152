"""One batch through the model under steering: prefix sharing, prompt sharing, and the plain reference path.

How the scoring engine (``workbench.engine.scoring``) runs a batch of items. A vector at block ``L``
changes nothing before it, so for one batch:

* the residual stream is cached at each layer where a condition starts (``blocks.L.hook_resid_pre``
  and ``resid_mid``/``attn_out``/``mlp_out`` start at ``L``; ``resid_post`` at ``L + 1``), going up,
  each block run once for all conditions (prefix sharing, ``Stream``);
* vectors that enter exactly at a condition's start layer on the residual stream are added to the
  cached residual; all others are added by a hook while the remaining blocks run (``apply_deltas``);
* each prompt runs ONCE for all of its answers: the prompt pass fills a key/value cache and the
  answers run against it (prompt sharing, ``run_blocks``). Positions come from the attention mask
  (the padding between a short prompt and its answer is invisible), exact for rotary and learned
  positions.

On a ``TransformerBridge`` (TransformerLens 4) blocks cannot be skipped and keys/values cannot be
shared, so each condition runs one full forward pass over the prompt + answer rows
(``full_readout``), every delta added by a hook at its own hook point; it is also the plain
reference the fast path must match. With blocks split over several GPUs (TransformerLens'
``n_devices``), prompt keys and values are gathered on the device of the block that holds them and
read-out indices follow the final residual's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.core.backend import (Model, TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry,
                                    final_residual)
from workbench.engine.conditions import Delta, entry
from workbench.engine.items import Items, pad_id
from workbench.engine.packed import fits, packable, packed_blocks
from workbench.engine.readout import Readout

_SUPPORTED_POSITIONS = ("rotary", "standard")


@dataclass
class Batch:
    """One batch of items on the model's device; answers item-major, ``owner[a]`` = item row of answer a."""

    idx: Tensor  # (b,) item indices
    answer_idx: Tensor  # (n_a,) global answer indices
    tp: Tensor  # (b, P) prompt tokens
    m_p: Tensor  # (b, P) bool
    ta: Tensor  # (n_a, A) answer tokens
    m_a: Tensor  # (n_a, A) bool
    owner: Tensor  # (n_a,)


def _pad(seqs: Sequence[Tensor], pad: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)], mask[i, : len(s)] = s, True
    return out.to(device), mask.to(device)


def assemble(model: Model, items: Items, idx: Sequence[int]) -> Batch:
    """Items ``idx`` as one ``Batch`` on the model's device (prompts and answers right-padded apart)."""
    dev = model.cfg.device
    idx_t = torch.as_tensor(list(idx), dtype=torch.long)
    spans = [range(int(items.answer_offsets[i]), int(items.answer_offsets[i + 1])) for i in idx_t.tolist()]
    answer_idx = torch.tensor([a for s in spans for a in s], dtype=torch.long)
    owner = torch.tensor([j for j, s in enumerate(spans) for _ in s], dtype=torch.long, device=dev)
    pad = pad_id(model)
    tp, m_p = _pad([items.prompts[i] for i in idx_t.tolist()], pad, dev)
    ta, m_a = _pad([items.answers[a] for a in answer_idx.tolist()], pad, dev)
    return Batch(idx_t, answer_idx, tp, m_p, ta, m_a, owner)


def _shared_kv(kv: object, owner: Tensor, m_p: Tensor) -> object:
    """The prompt cache gathered for each answer's prompt (on each entry's own device), frozen
    (``HookedTransformer`` only)."""
    entries = []
    for e in kv.entries:
        idx = owner.to(e.past_keys.device)
        entries.append(TransformerLensKeyValueCacheEntry(e.past_keys[idx], e.past_values[idx], frozen=True))
    return TransformerLensKeyValueCache(entries, previous_attention_mask=m_p[owner].int(), frozen=True)


@contextlib.contextmanager
def _delta_hooks(runner: Model, hooked: Sequence[Delta], rows: dict[str, Tensor]) -> Iterator[None]:
    """Hooks adding each delta at every position; per-item deltas read ``rows["now"]`` (the pass's items)."""
    if not hooked:
        yield
        return

    def make(delta: Tensor):
        def add(act: Tensor, hook: object) -> Tensor:  # noqa: ARG001
            d = delta if delta.ndim == 1 else delta[rows["now"]][:, None, :]
            return act + d.to(act.device, act.dtype)
        return add

    with runner.hooks(fwd_hooks=[(name, make(delta)) for name, delta in hooked]):
        yield


def run_blocks(runner: Model, start: int, stop: int, x_p: Float[Tensor, "batch prompt_pos d_model"],
               x_a: Float[Tensor, "n_answers answer_pos d_model"], batch: Batch,
               hooked: Sequence[Delta] = ()) -> tuple[Tensor, Tensor]:
    """Blocks ``start..stop-1`` on the prompts, then on their answers against the prompts' key/value cache.

    Where the blocks run packed (``workbench.engine.packed``), leading prompt positions equal bit for bit in
    every item run once; a gradient in ``x_p`` then reaches the first item's rows of them (the sum over
    items, what one delta for every item receives, is the same).
    """
    if start >= stop:
        return x_p, x_a
    b = x_p.shape[0]
    dtype = runner.cfg.dtype
    x_p, x_a = x_p.to(dtype), x_a.to(dtype)
    if not hooked and packable(runner) and fits(runner, batch.m_p, batch.m_a, batch.owner):
        return packed_blocks(runner, start, stop, x_p, x_a, batch.m_p, batch.m_a, batch.owner)
    kv = TransformerLensKeyValueCache.init_cache(runner.cfg, runner.cfg.device, batch_size=b)
    full_mask = torch.cat([batch.m_p[batch.owner], batch.m_a], dim=1).long()  # (n_a, P + A)
    rows = {"now": torch.arange(b, device=x_p.device)}
    with _delta_hooks(runner, hooked, rows):
        r_p = runner(x_p, start_at_layer=start, attention_mask=batch.m_p.long(), past_kv_cache=kv,
                     stop_at_layer=stop)
        rows["now"] = batch.owner
        r_a = runner(x_a, start_at_layer=start, attention_mask=full_mask,
                     past_kv_cache=_shared_kv(kv, batch.owner, batch.m_p), stop_at_layer=stop)
    return r_p, r_a


def _embed(model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
    """Residuals entering block 0: prompt and answer embedded together, so positions are right."""
    P = batch.tp.shape[1]
    full = torch.cat([batch.tp[batch.owner], batch.ta], dim=1)
    mask = torch.cat([batch.m_p[batch.owner], batch.m_a], dim=1).long()
    x = model(full, attention_mask=mask, stop_at_layer=0)  # (n_a, P + A, d)
    first = torch.searchsorted(batch.owner, torch.arange(batch.tp.shape[0], device=x.device))  # item-major
    return x[first, :P], x[:, P:]


class Stream:
    """The unsteered residual stream of one batch at increasing layers; each block runs at most once."""

    def __init__(self, model: Model, batch: Batch) -> None:
        self.model, self.batch = model, batch
        self.cache: dict[int, tuple[Tensor, Tensor]] = {}

    def at(self, layer: int) -> tuple[Tensor, Tensor]:
        if layer not in self.cache:
            below = [k for k in self.cache if k < layer]
            if below:
                k = max(below)
            else:
                k = 0
                if 0 not in self.cache:
                    self.cache[0] = _embed(self.model, self.batch)
            self.cache[layer] = run_blocks(self.model, k, layer, *self.cache[k], self.batch)
        return self.cache[layer]


def apply_deltas(model: Model, runner: Model, stream_at: tuple[Tensor, Tensor], start: int,
           deltas: Sequence[Delta], batch: Batch) -> tuple[Tensor, Tensor]:
    """Final residuals (before ``ln_final``) of one batch with ``deltas`` added, from the residual at ``start``."""
    x_p, x_a = (x.to(runner.cfg.dtype) for x in stream_at)
    hooked = []
    for name, delta in deltas:
        layer, direct = entry(model, name)
        if direct and layer == start:
            d = delta.to(x_p.device, x_p.dtype)
            if d.ndim == 1:
                x_p, x_a = x_p + d, x_a + d
            else:
                x_p, x_a = x_p + d[:, None, :], x_a + d[batch.owner][:, None, :]
        else:
            hooked.append((name, delta))
    return run_blocks(runner, start, model.cfg.n_layers, x_p, x_a, batch, hooked)


def read_answers(r_p: Float[Tensor, "batch prompt_pos d_model"], r_a: Float[Tensor, "n_answers answer_pos d_model"],
                 batch: Batch) -> Readout:
    """The ``Readout`` of the final residuals of a batch's prompts ``r_p`` and answers ``r_a`` (``run_blocks``)."""
    n_a = len(batch.owner)
    dev = r_a.device  # the last block's device (several GPUs: not the first's)
    owner, m_p, m_a, ta = (t.to(dev) for t in (batch.owner, batch.m_p, batch.m_a, batch.ta))
    last_p = m_p.sum(1) - 1  # (b,)
    first = r_p.to(dev)[owner, last_p[owner]]  # (n_a, d): predicts answer token 0
    pred = m_a[:, 1:]  # answer position t-1 predicts token t
    r, c = pred.nonzero(as_tuple=True)
    h = torch.cat([first, r_a[r, c]])
    targets = torch.cat([ta[:, 0], ta[r, c + 1]])
    answer = torch.cat([torch.arange(n_a, device=dev), r])
    h_last = r_a[torch.arange(n_a, device=dev), m_a.sum(1) - 1]
    return Readout(h, targets, answer, h_last)


def full_readout(runner: Model, batch: Batch, deltas: Sequence[Delta]) -> Readout:
    """The ``Readout`` of one full forward pass per answer (prompt + answer, right-padded), ``deltas`` hooked.

    The bridge's path (``TransformerBridge`` cannot start at a layer or share keys/values); it is
    also the plain reference the fast path must match. Differentiable in the deltas.
    """
    dev = batch.ta.device
    n_a, P = len(batch.owner), batch.tp.shape[1]
    lp, la = batch.m_p.sum(1)[batch.owner], batch.m_a.sum(1)  # (n_a,) prompt and answer lengths
    pos = torch.arange(int((lp + la).max()), device=dev).expand(n_a, -1)  # (n_a, T)
    prompt = batch.tp[batch.owner].gather(1, pos.clamp(max=P - 1))
    answer = batch.ta.gather(1, (pos - lp[:, None]).clamp(0, batch.ta.shape[1] - 1))
    tokens = torch.where(pos < lp[:, None], prompt, answer)  # after its end a row repeats (right padding)
    mask = (pos < (lp + la)[:, None]).long()
    with _delta_hooks(runner, deltas, {"now": batch.owner}):
        x = final_residual(runner, tokens, mask)  # (n_a, T, d)
    rows = torch.arange(n_a, device=dev)
    r, c = batch.m_a[:, 1:].nonzero(as_tuple=True)  # answer position c predicts answer token c + 1
    h = torch.cat([x[rows, lp - 1], x[r, lp[r] + c]])
    targets = torch.cat([batch.ta[:, 0], batch.ta[r, c + 1]])
    return Readout(h, targets, torch.cat([rows, r]), x[rows, lp + la - 1])


def check_positions(model: Model) -> None:
    """Refuse a model whose positions the prompt sharing cannot reproduce (only rotary and learned ones)."""
    if model.cfg.positional_embedding_type not in _SUPPORTED_POSITIONS:
        raise NotImplementedError(f"the scoring engine supports {_SUPPORTED_POSITIONS} positions, not "
                                  f"{model.cfg.positional_embedding_type!r}")


def length_batches(items: Items, batch_size: int) -> list[list[int]]:
    """Item indices in length-sorted batches (less padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.argsort(items.lengths(), stable=True).tolist()
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]

