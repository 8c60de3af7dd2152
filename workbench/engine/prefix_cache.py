"""BiPO's prefix cache: the unsteered residuals of every training item, kept where the vector enters.

BiPO (Cao et al. 2024, arXiv 2406.00045) and RePS (Wu et al. 2025, arXiv 2505.20809) score the same
items at every optimisation step with a changing vector at one hook. Nothing below that hook depends
on the vector, so ``PrefixCache.build`` runs the unsteered model once over every item and keeps the
residual stream where the vector enters (and the unsteered reference log-probs); each step then runs
only the blocks above it (``logprobs``, differentiable in the delta). The prompt tokens every item
starts with (the system prompt) are cached as the same residual in every item, so that a step computes
them once per batch (``workbench.engine.packed.shared_prefix``). Memory: ``(n_prompt_tokens +
n_answer_tokens) * d_model`` values on the model's device, plus ``n_items * k`` fp32 reference log-probs.
On a ``TransformerBridge`` only the reference is kept and every step runs the full forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from torch import Tensor

from workbench.core.backend import Model, is_bridge
from workbench.engine.conditions import entry
from workbench.engine.forward import (Stream, apply_deltas, assemble, check_positions, full_readout, length_batches,
                                      read_answers, run_blocks)
from workbench.engine.items import Items
from workbench.engine.packed import common_prefix, packable
from workbench.engine.readout import Scratch


#: A group of items costs this many padded tokens more than its tokens (two more passes through the
#: blocks, forward and backward): ``PrefixCache.logprobs`` splits a batch where padding costs more
#: (TransformerLens' padded blocks only: packed blocks, ``workbench.engine.packed``, compute no padding).
GROUP_OVERHEAD_TOKENS = 64


@dataclass
class PrefixCache:
    """Unsteered residuals of every item entering ``start``, for many steps on random batches (BiPO).

    Storage is flat (ragged items concatenated) on the model's device: prompt ``i`` is rows
    ``prompt_offsets[i]..`` of ``prompt_resid``, answer ``a`` rows ``answer_offsets[a]..`` of
    ``answer_resid``; item ``i``'s answers are ``items.answer_offsets[i]..``. ``reference`` holds
    the unsteered summed log-probs ``(n_items, k)`` (items with the same number ``k`` of answers).
    Build with ``PrefixCache.build``; score with ``logprobs`` (differentiable in the delta).
    """

    hook_name: str
    start: int
    items: Items
    prompt_resid: Float[Tensor, "n_prompt_tokens d_model"]
    prompt_offsets: Int[Tensor, " n_items_plus_1"]
    answer_resid: Float[Tensor, "n_answer_tokens d_model"]
    answer_offsets: Int[Tensor, " n_answers_plus_1"]
    reference: Float[Tensor, "n_items k"] | None
    n_answers: int

    def __len__(self) -> int:
        return len(self.items)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prompt_resid, self.answer_resid))

    def lengths(self) -> Int[Tensor, " n_items"]:
        return self.items.lengths()

    @classmethod
    @torch.no_grad()
    def build(cls, model: Model, items: Items, hook_name: str, *,
              runner: Model | None = None, reference: bool = True, batch_size: int = 8,
              dtype: torch.dtype | None = None, progress: bool = False) -> PrefixCache:
        """Run the unsteered model once over every item; keep the residual where ``hook_name``'s vector enters.

        Args:
            model: the frozen model; it runs the blocks before the cache point and unembeds.
            items: ``tokenize_items`` output; every item with the same number of answers.
            hook_name: where vectors will be added (``"blocks.14.hook_resid_post"``).
            runner: runs the blocks after the cache point for the reference log-probs (default
                ``model``; pass the runner that will score, e.g. a bf16 ``make_runner`` copy).
            reference: also keep the unsteered log-probs (``reference``).
            batch_size: items per forward pass (length-sorted; 8 measured fastest, packed or padded).
            dtype: storage dtype of the cached residuals (default ``runner``'s dtype).
        """
        check_positions(model)
        k = int(items.answer_offsets[1] - items.answer_offsets[0])
        if any(int(n) != k for n in items.answer_offsets.diff()):
            raise ValueError("PrefixCache needs the same number of answers for every item")
        start = entry(model, hook_name)[0]
        runner = runner or model
        dtype = dtype or runner.cfg.dtype
        dev = model.cfg.device
        n = len(items)
        p_res: list[Tensor | None] = [None] * n
        a_res: list[Tensor | None] = [None] * items.n_answers
        ref = torch.empty(n, k, device=dev) if reference else None
        a_len = items.answer_lengths()
        scratch = Scratch()  # one logits buffer for every batch
        if is_bridge(model):  # nothing to cache but the reference: every step runs the full forward
            for idx in length_batches(items, batch_size) if ref is not None else ():
                batch = assemble(model, items, idx)
                ref[batch.idx.to(dev)] = full_readout(runner, batch, []).logprobs(model, len(batch.owner), scratch).view(-1, k)
            empty = torch.empty(0, model.cfg.d_model, dtype=dtype, device=dev)
            return cls(hook_name, start, items, empty, torch.zeros(n + 1, dtype=torch.long), empty,
                       torch.zeros(items.n_answers + 1, dtype=torch.long), ref, k)
        for idx in tqdm(length_batches(items, batch_size), desc="prefix cache", disable=not progress, leave=False):
            batch = assemble(model, items, idx)
            x_p, x_a = Stream(model, batch).at(start)
            if ref is not None:
                r_p, r_a = run_blocks(runner, start, model.cfg.n_layers, x_p, x_a, batch)
                lp = read_answers(r_p, r_a, batch).logprobs(model, len(batch.owner), scratch).view(-1, k)
                ref[batch.idx.to(dev)] = lp.to(dev)
            for j, i in enumerate(batch.idx.tolist()):
                p_res[i] = x_p[j, : len(items.prompts[i])].to(dtype)
            for j, a in enumerate(batch.answer_idx.tolist()):
                a_res[a] = x_a[j, : int(a_len[a])].to(dtype)
        # the prompt tokens every item shares (a chat template's system prompt) hold item 0's residuals in every
        # item: batches built apart differ in the last bits there, and equal rows are what lets a training
        # batch compute them once (``workbench.engine.packed.shared_prefix``)
        span = common_prefix(items.prompts)
        for i in range(1, n):
            p_res[i][:span] = p_res[0][:span]
        offsets = lambda seqs: torch.tensor([0, *(len(t) for t in seqs)]).cumsum(0)  # noqa: E731
        return cls(hook_name, start, items, torch.cat(p_res), offsets(items.prompts), torch.cat(a_res),
                   offsets(items.answers), ref, k)

    def _gather(self, flat: Tensor, offsets: Tensor, rows: Tensor) -> Tensor:
        """Right-padded ``(len(rows), n_max, d)`` copy of ragged rows (padding repeats the last row)."""
        start, length = offsets[rows], offsets[rows + 1] - offsets[rows]
        pos = torch.arange(int(length.max()))
        index = start[:, None] + torch.minimum(pos[None, :], length[:, None] - 1)
        return flat[index.to(flat.device)]

    def logprobs(self, runner: Model, index: Sequence[int] | Int[Tensor, " batch"],
                 delta: Float[Tensor, "*items d_model"] | None = None, *,
                 unembed_model: Model | None = None) -> Float[Tensor, "batch k"]:
        """Summed fp32 answer log-probs of items ``index`` with ``delta`` added at ``hook_name``.

        Args:
            runner: runs the blocks from ``start`` (the model or a ``make_runner`` copy of it).
            index: items to score, one batch.
            delta: ``(d_model,)`` for every item or ``(batch, d_model)`` one per item (e.g.
                ``d_i * v``); None for the unsteered model. Differentiable.
            unembed_model: applies ``ln_final``/``W_U`` (default ``runner``).
        """
        head = unembed_model or runner
        rows = torch.as_tensor(index, dtype=torch.long).view(-1).cpu()
        # one pass: on the bridge, for repeated rows, and where the blocks run packed (no padding to save)
        one = is_bridge(runner) or len(set(rows.tolist())) < len(rows) or (
            packable(runner) and (delta is None or entry(head, self.hook_name)[1]))
        groups = [rows] if one else self._length_groups(rows)
        if len(groups) > 1:  # padding costs more than another pass: score groups of similar length apart
            position = {int(r): j for j, r in enumerate(rows)}
            parts = []
            for group in groups:
                at = torch.tensor([position[int(r)] for r in group])
                d = delta if delta is None or delta.ndim == 1 else delta[at.to(delta.device)]
                parts.append(self._logprobs(runner, head, group, d))
            order = torch.tensor([position[int(r)] for g in groups for r in g])
            return torch.cat(parts)[torch.argsort(order).to(parts[0].device)]
        return self._logprobs(runner, head, rows, delta)

    def _length_groups(self, rows: Tensor) -> list[Tensor]:
        """``rows`` split into groups of similar prompt length that minimise the padded tokens plus
        ``GROUP_OVERHEAD_TOKENS`` per group (dynamic programming over the length-sorted rows)."""
        p_len = (self.prompt_offsets[rows + 1] - self.prompt_offsets[rows]).tolist()
        a_len = (self.answer_offsets[1:] - self.answer_offsets[:-1]).view(-1, self.n_answers)[rows].amax(1).tolist()
        order = sorted(range(len(rows)), key=lambda j: p_len[j])
        best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
        for end in range(1, len(order) + 1):
            longest_answer = 0  # over order[begin:end] as begin moves left; the longest prompt: order[end - 1]'s
            for begin in range(end - 1, -1, -1):
                longest_answer = max(longest_answer, a_len[order[begin]])
                cost = best[begin] + GROUP_OVERHEAD_TOKENS + (end - begin) * (
                    p_len[order[end - 1]] + self.n_answers * longest_answer)
                if cost <= best[end]:  # on a tie the longer group (smallest begin), as an ascending scan keeps
                    best[end], cut[end] = cost, begin
        groups, end = [], len(order)
        while end > 0:
            groups.append(rows[order[cut[end]:end]])
            end = cut[end]
        return groups[::-1]

    def _logprobs(self, runner: Model, head: Model, rows: Tensor, delta: Tensor | None) -> Tensor:
        batch = assemble(head, self.items, rows.tolist())
        a_rows = batch.answer_idx
        if is_bridge(runner):
            readout = full_readout(runner, batch, [] if delta is None else [(self.hook_name, delta)])
            return readout.logprobs(head, len(a_rows)).view(len(rows), self.n_answers)
        x_p = self._gather(self.prompt_resid, self.prompt_offsets, rows)
        x_a = self._gather(self.answer_resid, self.answer_offsets, a_rows)
        deltas = [] if delta is None else [(self.hook_name, delta)]
        r_p, r_a = apply_deltas(head, runner, (x_p, x_a), self.start, deltas, batch)
        return read_answers(r_p, r_a, batch).logprobs(head, len(a_rows)).view(len(rows), self.n_answers)


    @torch.no_grad()
    def score(self, runner: Model, delta: Float[Tensor, " d_model"] | None = None, *, batch_size: int = 16,
              unembed_model: Model | None = None) -> Float[Tensor, "n_items k"]:
        """``logprobs`` of every item in length-sorted batches (no gradient), on the model's device."""
        out = None
        for idx in length_batches(self.items, batch_size):
            lp = self.logprobs(runner, idx, delta, unembed_model=unembed_model)
            out = lp.new_empty(len(self), self.n_answers) if out is None else out
            out[torch.as_tensor(idx, device=lp.device)] = lp
        return out

