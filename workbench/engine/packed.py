"""Packed blocks: a batch's prompts and answers run through the blocks as one row of real tokens, no padding.

``workbench.engine.forward.run_blocks`` runs the blocks after a vector twice per batch through
TransformerLens: the prompts right-padded to the longest, then the answers right-padded to the longest
against the prompts' key/value cache. Every padded position goes through every matmul (on BiPO's
power-seeking pairs, random batches of 4 carry 55 % more padded than real tokens), the answers'
attention repeats each prompt's keys once per answer and per grouped-query head, and each block
normalises its input three times (query, key, value inputs). ``packed_blocks`` computes the same
blocks on the real tokens only:

* the token-wise parts (the block's own ``ln1``, ``ln2`` and ``mlp`` modules, a gated MLP computed
  here from its weights; the query/key/value and output projections with the attention's own
  weights) run on all real tokens of the batch as one ``(1, n_tokens, d_model)`` row;
* attention runs per item (its prompt, then its answers) with
  ``torch.nn.functional.scaled_dot_product_attention``: a prompt token sees the prompt up to itself,
  an answer token the whole prompt and its own answer up to itself, at the positions
  ``run_blocks`` gives it (prompt ``0..p-1``, answer ``p..``), rotated with the attention's own
  rotary tables; grouped-query heads are not repeated (``enable_gqa``);
* the leading prompt positions that hold the same residual in every item (a chat template's system
  prompt under the same delta: ``shared_prefix``) run once, and every item attends to them: on BiPO's
  power-seeking pairs the 18-token system prompt is 16 % of a batch's tokens.

The result equals ``run_blocks``' at every real position up to float rounding (a different order of
the same sums; ``tests/engine/test_packed.py``). No weight is copied in ``make_runner``'s laid-out copy
(the trainer's runner on CPU); on a model in TransformerLens' own layout the query/key/value weights
are rearranged per call as TransformerLens does, and the gated MLP's and output projection's are used
as stored (TransformerLens' own forward copies them into a transposed layout at every call).

It runs where the blocks are the pre-norm rotary family (Llama, Mistral, Qwen2, SmolLM2: RMS or
layer norm, any MLP, grouped-query or full attention, biases or none) and nothing would change that
math (``packable``: no hook attached to the runner, one device, no sliding window, soft cap,
attention sink, QK norm, post-norms or parallel attention/MLP); elsewhere ``run_blocks`` runs
TransformerLens' blocks as before. The steering deltas that ``run_blocks`` adds by hooks inside the
blocks keep that path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
# blocks that normalise each sublayer's output (OLMo 2/3); both TransformerLens lines define the set here
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from workbench.core.backend import Model, is_bridge

_OFF_FLAGS = ("use_attn_in", "use_split_qkv_input", "use_normalization_before_and_after", "attn_only",
              "parallel_attn_mlp", "use_local_attn", "use_attention_sinks", "use_logn_attn",
              "use_dynamic_ntk_rope", "use_qk_norm", "load_in_4bit", "ungroup_grouped_query_attention")


def packable(runner: Model) -> bool:
    """Whether ``packed_blocks`` computes ``runner``'s blocks exactly (see the module docstring)."""
    cfg = runner.cfg
    if is_bridge(runner) or cfg.positional_embedding_type != "rotary" or (cfg.n_devices or 1) != 1:
        return False
    if any(getattr(cfg, flag, False) for flag in _OFF_FLAGS) or cfg.original_architecture in POST_NORM_ARCHITECTURES:
        return False
    if (cfg.attn_scores_soft_cap or 0) > 0 or getattr(cfg, "clip_qkv", None) is not None:
        return False
    if cfg.attention_dir != "causal" or cfg.rotary_dim is None:
        return False
    if any(getattr(block.attn, "q_norm", None) is not None or getattr(block.attn, "_attention_dir_override", None)
           for block in runner.blocks):
        return False
    # a hook anywhere (a user's, or run_blocks' own for a delta inside a block) needs TransformerLens' blocks
    return not any(hp._forward_hooks or hp._backward_hooks for hp in runner.hook_dict.values())


def _rotate(attn: torch.nn.Module, x: Tensor, pos: Tensor) -> Tensor:
    """TransformerLens' rotary embedding of ``x`` ``(n, heads, d_head)`` at positions ``pos`` ``(n,)``."""
    r = attn.cfg.rotary_dim
    x_rot, x_pass = x[..., :r], x[..., r:]
    cos = attn.rotary_cos[pos, None, :].to(x.dtype)
    sin = attn.rotary_sin[pos, None, :].to(x.dtype)
    x_rot = x_rot * cos + attn.rotate_every_two(x_rot) * sin
    return torch.cat([x_rot, x_pass], dim=-1) if x_pass.shape[-1] else x_rot


def _out_projection(attn: torch.nn.Module, z: Float[Tensor, "n heads_d_head"]) -> Tensor:
    """``z @ W_O + b_O`` with ``W_O`` as stored: ``(heads, d_head, d_model)`` contiguous (TransformerLens'
    layout) or laid out for ``F.linear`` (``make_runner``); neither is copied."""
    w_o = attn.W_O
    z = z.to(w_o.dtype)
    if w_o.is_contiguous():
        return torch.addmm(attn.b_O, z, w_o.reshape(-1, w_o.shape[-1]))
    return F.linear(z, w_o.permute(2, 0, 1).reshape(w_o.shape[-1], -1), attn.b_O)


def _mlp(mlp: torch.nn.Module, x: Float[Tensor, "1 n d_model"]) -> Tensor:
    """The block's MLP on ``x``. A gated MLP is computed here with its weights as TransformerLens stores them
    (``x @ W_gate``): its own forward copies each weight into a transposed layout at every call."""
    if type(mlp).__name__ != "GatedMLP" or mlp.cfg.is_layer_norm_activation():
        return mlp(x)
    x2 = x[0]
    pre = mlp.act_fn(x2 @ mlp.W_gate) * (x2 @ mlp.W_in) + mlp.b_in  # (n, d_mlp)
    return torch.addmm(mlp.b_out, pre, mlp.W_out)[None]


def fits(runner: Model, m_p: Tensor, m_a: Tensor, owner: Tensor) -> bool:
    """Whether every position of the batch has a row in the rotary tables (TransformerLens extends them
    on demand; ``packed_blocks`` leaves such a batch to it)."""
    longest = int((m_p.sum(1)[owner] + m_a.sum(1)).max()) if len(owner) else int(m_p.sum(1).max())
    return longest <= runner.blocks[0].attn.rotary_cos.shape[0]


#: a shared prefix is computed once only where it saves at least this many token rows of a batch
#: (below it the extra attention call per block costs more than the rows it saves)
MIN_SHARED_ROWS = 16


def common_prefix(seqs: Sequence[Tensor]) -> int:
    """How many leading positions (dim 0) every sequence holds equal to the first's, bit for bit: token ids
    ``(len,)`` or residuals ``(len, d_model)``."""
    span = min((len(t) for t in seqs), default=0)
    for t in seqs[1:]:
        if span == 0:
            break
        same = (t[:span] == seqs[0][:span]).reshape(span, -1).all(1).to(torch.uint8)
        span = span if bool(same.all()) else int(same.argmin())
    return span


def shared_prefix(x_p: Float[Tensor, "batch prompt_pos d_model"], m_p: Tensor) -> int:
    """How many leading prompt positions hold the same residual, bit for bit, in every item of the batch.

    Capped one short of the shortest prompt (every item keeps a prompt token of its own); 0 where the
    rows it would save (``(batch - 1) * span``) are fewer than ``MIN_SHARED_ROWS``. Same residuals at
    the same positions give the same residuals in every later block (causal attention), so such a
    span (a chat template's system prompt; the same delta added to every item) is computed once.
    """
    b = x_p.shape[0]
    cap = int(m_p.sum(1).min()) - 1
    if b < 2 or (b - 1) * cap < MIN_SHARED_ROWS:
        return 0
    span = common_prefix(x_p[:, :cap])
    return span if (b - 1) * span >= MIN_SHARED_ROWS else 0


def packed_blocks(runner: Model, start: int, stop: int, x_p: Float[Tensor, "batch prompt_pos d_model"],
                  x_a: Float[Tensor, "n_answers answer_pos d_model"], m_p: Tensor, m_a: Tensor,
                  owner: Tensor, *, share: bool = True) -> tuple[Tensor, Tensor]:
    """Blocks ``start..stop-1`` of ``runner`` on the real tokens of a batch; same shapes as ``run_blocks``.

    ``m_p`` ``(b, P)`` / ``m_a`` ``(n_a, A)`` mark real prompt / answer tokens (right padding), ``owner``
    ``(n_a,)`` each answer's item. Returns the residuals after block ``stop - 1``, zero at padded positions.
    Differentiable in ``x_p`` and ``x_a``.

    ``share``: the leading prompt positions that every item holds bit for bit (``shared_prefix``) run
    once, as the first item's, and every item's answers and later prompt tokens attend to them. The
    outputs are the same; the gradient of those positions then reaches the first item's rows of
    ``x_p`` only (their sum over items, what a delta added to every item receives, is unchanged). Pass
    ``share=False`` where each item's own gradient of them is wanted.
    """
    dev, dtype = x_p.device, runner.cfg.dtype
    b, n_a, d = x_p.shape[0], x_a.shape[0], x_p.shape[-1]
    S = shared_prefix(x_p, m_p) if share else 0
    own_p = m_p.clone()
    own_p[:, :S] = False  # each item's own prompt tokens (after the shared span)
    p_len, a_len = own_p.sum(1), m_a.sum(1)  # (b,), (n_a,)
    # token order: the shared span, then item by item its own prompt tokens and its answers (item-major)
    item_of_prompt_tok = torch.repeat_interleave(torch.arange(b, device=dev), p_len)
    item_of_answer_tok = torch.repeat_interleave(owner, a_len)
    seg_p = torch.zeros_like(item_of_prompt_tok)  # segment 0: the prompt; answer j of the batch: j + 1
    seg_a = torch.repeat_interleave(torch.arange(1, n_a + 1, device=dev), a_len)
    pos_p = (m_p.long().cumsum(1) - 1)[own_p]  # prompt token positions S..p-1
    pos_a = (m_a.long().cumsum(1) - 1 + m_p.sum(1)[owner][:, None])[m_a]  # answer positions p..
    item = torch.cat([item_of_prompt_tok, item_of_answer_tok])
    order = torch.argsort(item * 2 + (torch.arange(len(item), device=dev) >= len(item_of_prompt_tok)).long(),
                          stable=True)  # item-major, prompt before answers
    seg, pos = torch.cat([seg_p, seg_a])[order], torch.cat([pos_p, pos_a])[order]
    item = item[order]
    x = torch.cat([x_p[0, :S], x_p[own_p], x_a[m_a]]).to(dtype)  # (S + T, d)
    x = torch.cat([x[:S], x[S:][order]])
    pos_all = torch.cat([torch.arange(S, device=dev), pos])

    # per-item attention layout: (b, N) slots, N = the longest item's own tokens, gathered from the flat tokens
    n_tok = torch.bincount(item, minlength=b)  # (b,)
    first = torch.cumsum(n_tok, 0) - n_tok
    N = int(n_tok.max())
    slot = torch.arange(N, device=dev)
    valid = slot[None, :] < n_tok[:, None]  # (b, N)
    gather = (first[:, None] + torch.minimum(slot[None, :], (n_tok - 1).clamp(min=0)[:, None]))  # (b, N)
    s, q_pos = seg[gather], pos[gather]
    scatter = valid.view(-1).nonzero().squeeze(1)  # flat token t sits at slot scatter[t] of (b * N)

    def slots(t: Tensor) -> Tensor:  # (T, heads, d_head) -> (b, heads, N, d_head), zero at empty slots
        # index_copy / index_select, not indexing: their backward is a gather, not an accumulating index_put
        return t.new_zeros(b * N, *t.shape[1:]).index_copy(0, scatter, t).view(b, N, *t.shape[1:]).transpose(1, 2)

    allowed = ((s[:, None, :] == 0) | (s[:, None, :] == s[:, :, None])) & (q_pos[:, None, :] <= q_pos[:, :, None])
    allowed &= valid[:, None, :]
    allowed[:, :, 0] |= ~valid  # padded query slots see slot 0 (their output is dropped)
    # every own token comes after the shared span and sees all of it
    mask = torch.cat([allowed.new_ones(b, N, S), allowed], dim=2)[:, None]  # (b, 1, N, S + N)

    def attend(q: Tensor, k: Tensor, v: Tensor, attn: torch.nn.Module) -> Tensor:
        """Attention output ``(S + T, heads * d_head)`` of the shared span and every item's own tokens."""
        gqa = k.shape[1] != q.shape[1]
        scale = 1.0 / attn.attn_scale
        qs, ks, vs = slots(q[S:]), slots(k[S:]), slots(v[S:])  # (b, heads, N, d_head)
        if S:
            k_s, v_s = k[:S].transpose(0, 1)[None], v[:S].transpose(0, 1)[None]  # (1, heads, S, d_head)
            ks = torch.cat([k_s.expand(b, -1, -1, -1), ks], dim=2)
            vs = torch.cat([v_s.expand(b, -1, -1, -1), vs], dim=2)
        z = F.scaled_dot_product_attention(qs, ks, vs.to(qs.dtype), attn_mask=mask, scale=scale,
                                           enable_gqa=gqa)  # (b, H, N, d_head)
        z = z.transpose(1, 2).reshape(b * N, -1).index_select(0, scatter)  # (T, H * d_head)
        if not S:
            return z
        z_s = F.scaled_dot_product_attention(q[:S].transpose(0, 1)[None], k_s, v_s.to(q.dtype), is_causal=True,
                                             scale=scale, enable_gqa=gqa)  # (1, H, S, d_head)
        return torch.cat([z_s[0].transpose(0, 1).reshape(S, -1), z])

    h = x[None]  # (1, S + T, d)
    for block in runner.blocks[start:stop]:
        attn = block.attn
        normed = block.ln1(h)
        q, k, v = attn.calculate_qkv_matrices(normed, normed, normed)  # (1, S + T, heads, d_head)
        q, k = _rotate(attn, q[0], pos_all), _rotate(attn, k[0], pos_all)
        h = h + _out_projection(attn, attend(q, k, v[0], attn))[None]
        h = h + _mlp(block.mlp, block.ln2(h))

    out = h[0, S:][torch.argsort(order)]  # back to own prompt tokens, then answer tokens
    n_prompt_tok = len(item_of_prompt_tok)
    r_p = x_p.new_zeros(b, x_p.shape[1], d, dtype=out.dtype)
    r_a = x_a.new_zeros(n_a, x_a.shape[1], d, dtype=out.dtype)
    if S:
        r_p[:, :S] = h[0, :S]
    r_p[own_p] = out[:n_prompt_tok]
    r_a[m_a] = out[n_prompt_tok:]
    return r_p, r_a


__all__ = ["MIN_SHARED_ROWS", "common_prefix", "fits", "packable", "packed_blocks", "shared_prefix"]
