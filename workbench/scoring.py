"""Scoring answers: the summed log-probability of answer tokens given a prompt.

BiPO (Cao et al. 2024, arXiv 2406.00045) and every log-odds evaluation compare
``log p(answer | prompt) = sum_t log p(answer_t | prompt, answer_<t)`` over the answer tokens only.
This module tokenizes prompt/answer pairs into one right-padded batch with an explicit attention mask
and an answer mask, and scores them with *answer-only unembedding*: the final residual stream is
gathered at the positions that predict answer tokens before the final norm and ``W_U`` are applied,
and each token's log-prob is ``logit - logsumexp(logits)`` there. No ``(batch, pos, d_vocab)``
log-softmax is ever built, and the sums are accumulated in fp32 whatever the model's dtype.

Padding is on the right and the attention mask is always passed explicitly: with SmolLM2 the pad
token is ``<|im_end|>``, the same token that ends every answer, so TransformerLens' pad detection
would otherwise mask real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class TokenizedBatch:
    """Prompt + answer sequences, right-padded.

    Attributes:
        tokens: ``(batch, pos)`` token ids (pad id after each sequence's end).
        attention_mask: ``(batch, pos)`` 1 on real tokens, 0 on padding.
        answer_mask: ``(batch, pos)`` True on answer tokens (the scored ones).
        prompt_lengths: ``(batch,)`` number of prompt tokens.
        lengths: ``(batch,)`` prompt + answer tokens.
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    answer_mask: Bool[Tensor, "batch pos"]
    prompt_lengths: Int[Tensor, " batch"]
    lengths: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, index: Tensor | slice | Sequence[int]) -> TokenizedBatch:
        """Rows ``index``, trimmed to their longest sequence."""
        lengths = self.lengths[index]
        n = int(lengths.max())
        return TokenizedBatch(self.tokens[index][:, :n], self.attention_mask[index][:, :n],
                              self.answer_mask[index][:, :n], self.prompt_lengths[index], lengths)

    def to(self, device: str | torch.device) -> TokenizedBatch:
        return TokenizedBatch(*(t.to(device) for t in (self.tokens, self.attention_mask, self.answer_mask,
                                                      self.prompt_lengths, self.lengths)))


def _encode(model: HookedTransformer, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_completions(model: HookedTransformer, prompts: Sequence[str], answers: Sequence[str],
                         max_length: int | None = None, groups: Sequence[int] | None = None) -> TokenizedBatch:
    """Tokenize ``prompt + answer`` pairs; the boundary is exact (each part is encoded alone).

    A BOS token is prepended when the model's config asks for one (``default_prepend_bos``) and the
    prompt does not already start with it. Sequences longer than ``max_length`` lose prompt tokens
    from the left (answers are never cut; an answer longer than ``max_length`` is an error). Rows
    with the same ``groups`` id (e.g. the two answers of one preference pair) lose the same number
    of prompt tokens, the most any of them needs, so that they are scored in the same context.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if len(prompts) == 0:
        raise ValueError("nothing to tokenize: no prompts given")
    tok = model.tokenizer
    bos = tok.bos_token_id if model.cfg.default_prepend_bos else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"{len(groups)} group ids for {len(prompts)} rows")
    encoded, cuts = [], []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        p_ids, a_ids = _encode(model, p), _encode(model, a)
        if bos is not None and (not p_ids or p_ids[0] != bos):
            p_ids = [bos, *p_ids]
        if not a_ids:
            raise ValueError(f"answer {i} is empty after tokenization: {a!r}")
        if max_length is not None and len(a_ids) >= max_length and len(p_ids) + len(a_ids) > max_length:
            raise ValueError(f"answer {i} has {len(a_ids)} tokens, more than max_length={max_length}")
        encoded.append((p_ids, a_ids))
        cuts.append(0 if max_length is None else max(0, len(p_ids) + len(a_ids) - max_length))
    if groups is not None:
        most: dict[int, int] = {}
        for g, c in zip(groups, cuts):
            most[g] = max(most.get(g, 0), c)
        cuts = [most[g] for g in groups]
    rows, plens = [], []
    for (p_ids, a_ids), cut in zip(encoded, cuts):
        p_ids = p_ids[min(cut, len(p_ids)):]
        rows.append(p_ids + a_ids)
        plens.append(len(p_ids))
    n = max(len(r) for r in rows)
    tokens = torch.full((len(rows), n), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), n), dtype=torch.long)
    ans = torch.zeros((len(rows), n), dtype=torch.bool)
    for i, (r, pl) in enumerate(zip(rows, plens)):
        tokens[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        ans[i, pl: len(r)] = True
    return TokenizedBatch(tokens, attn, ans, torch.tensor(plens), torch.tensor([len(r) for r in rows]))


def answer_positions(batch: TokenizedBatch) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
    """``(row, predicting position, target token)`` for every answer token, in row-major order."""
    pred_mask = batch.answer_mask[:, 1:]  # position t-1 predicts answer token t
    rows, cols = pred_mask.nonzero(as_tuple=True)
    targets = batch.tokens[:, 1:][rows, cols]
    return rows, cols, targets


def token_logprobs_from_resid(model: HookedTransformer, resid_final: Float[Tensor, "batch pos d_model"],
                              batch: TokenizedBatch) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"]]:
    """Log-prob of each answer token from the final residual stream (before ``ln_final``).

    Returns:
        ``(logprobs, rows)``: fp32 log-prob of each answer token and the batch row it belongs to.
    """
    rows, cols, targets = answer_positions(batch)
    h = resid_final[rows, cols]  # (n, d_model): only positions that predict an answer token
    h = model.ln_final(h.unsqueeze(0)).squeeze(0)
    logits = (h @ model.W_U).float()  # (n, d_vocab) in fp32
    if getattr(model, "b_U", None) is not None:
        logits = logits + model.b_U.float()
    if model.cfg.output_logits_soft_cap and model.cfg.output_logits_soft_cap > 0:
        cap = model.cfg.output_logits_soft_cap
        logits = cap * torch.tanh(logits / cap)
    lp = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return lp, rows


def sum_by_row(values: Float[Tensor, " n"], rows: Int[Tensor, " n"], n_rows: int) -> Float[Tensor, " batch"]:
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def final_resid(model: HookedTransformer, batch: TokenizedBatch, *, residual: Tensor | None = None,
                start_at_layer: int | None = None) -> Float[Tensor, "batch pos d_model"]:
    """Residual stream after the last block (before ``ln_final``), from tokens or from a cached residual."""
    n_layers = model.cfg.n_layers
    if residual is None:
        return model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=n_layers)
    return model(residual, start_at_layer=start_at_layer, tokens=batch.tokens,
                 attention_mask=batch.attention_mask, stop_at_layer=n_layers)


def answer_logprobs(model: HookedTransformer, batch: TokenizedBatch, *, residual: Tensor | None = None,
                    start_at_layer: int | None = None, per_token: bool = False) -> Float[Tensor, " batch"]:
    """Summed (or mean, with ``per_token``) log-prob of each row's answer tokens, in fp32.

    Args:
        model: the model; hooks attached by the caller (``steer``) take effect.
        batch: from ``tokenize_completions``.
        residual: optional ``(batch, pos, d_model)`` residual entering block ``start_at_layer``
            (the prefix-cached fast path); without it the full model runs.
        per_token: divide by the number of answer tokens.
    """
    resid = final_resid(model, batch, residual=residual, start_at_layer=start_at_layer)
    lp, rows = token_logprobs_from_resid(model, resid, batch)
    total = sum_by_row(lp, rows, len(batch))
    if per_token:
        total = total / batch.answer_mask.sum(1).clamp_min(1).to(total.dtype)
    return total


@torch.no_grad()
def score_completions(model: HookedTransformer, prompts: Sequence[str], answers: Sequence[str],
                      batch_size: int = 16, per_token: bool = False) -> Float[Tensor, " n"]:
    """``log p(answer | prompt)`` for many pairs, batched (sorted by length to limit padding)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answers[i]))
    out = torch.empty(len(prompts), dtype=torch.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        batch = tokenize_completions(model, [prompts[i] for i in idx], [answers[i] for i in idx])
        out[idx] = answer_logprobs(model, batch.to(model.cfg.device), per_token=per_token).cpu()
    return out
