"""Prefix caching: score answers under a steering vector by running only the blocks after it.

A vector added at a hook point of block ``L`` of a frozen model changes nothing before that point,
so the residual stream entering the first block that must run is the same for every vector. BiPO
training (Cao et al. 2024, arXiv 2406.00045) and multiplier sweeps therefore cache it once and run
only the remaining blocks for each vector:

* ``blocks.L.hook_resid_pre``: cache the input of block ``L``, add the vector to it, run ``L..``;
* ``blocks.L.hook_resid_post``: cache the input of block ``L+1`` (the same tensor as
  ``resid_post[L]``), add the vector to it, run ``L+1..``;
* ``resid_mid``, ``attn_out``, ``mlp_out`` of block ``L``: cache the input of block ``L`` and run
  ``L..`` with a hook that adds the vector.

The vector is added at every position ("all", as in BiPO). Each prompt runs ONCE for all of its
answers: the prompt pass fills a TransformerLens key/value cache and the answers run against it, so
the prompt's keys and values (and their gradients) are shared. Prompts and answers are each
right-padded and the attention mask is always explicit; positions come from the mask, so the padding
between a short prompt and its answer is invisible (exact for rotary and learned absolute positions).
Building the cache runs the unsteered model once end to end and also yields the reference log-probs.
Log-probs use answer-only unembedding in fp32, optionally by a second model (``unembed_model``): a
bf16 runner computes the blocks while the caller's fp32 model unembeds.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from workbench.scoring import tokenize_completions
from workbench.vector import parse_hook_name

_SUPPORTED_POSITIONS = ("rotary", "standard")
# weight -> the permutation TransformerLens makes contiguous before its matmul (see make_runner)
_KERNEL_LAYOUT = {"W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_Q": (0, 2, 1), "W_K": (0, 2, 1),
                  "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1), "W_O": (2, 0, 1)}


@dataclass(frozen=True)
class SteeringSite:
    """Where a vector enters: the first block to run and whether it is added to that block's input."""

    hook_name: str
    start_layer: int  # first block that runs on the cached residual
    direct: bool  # True: add the vector to the cached residual; False: add it with a hook


def steering_site(model: HookedTransformer, hook_name: str) -> SteeringSite:
    """The cache point for a vector at ``hook_name`` (see the module docstring)."""
    layer, point = parse_hook_name(hook_name)
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook {hook_name!r} does not exist in model {model.cfg.model_name!r} "
                         f"({model.cfg.n_layers} layers)")
    if point == "hook_resid_pre":
        return SteeringSite(hook_name, layer, True)
    if point == "hook_resid_post":
        return SteeringSite(hook_name, layer + 1, True)
    return SteeringSite(hook_name, layer, False)


def make_runner(model: HookedTransformer, start_layer: int, dtype: torch.dtype | None = None, *,
                unembed: bool = False) -> HookedTransformer:
    """A copy of ``model`` whose blocks ``start_layer..`` are private, in ``dtype``, and laid out for speed.

    TransformerLens transposes or permutes most block weights into a contiguous copy before each
    matmul (``W_in.T.contiguous()``); the runner stores them so that view is already contiguous,
    which skips the copies and gives bit-identical results. Everything else (embedding, earlier
    blocks, unembedding, tokenizer) is shared with ``model``, never modified, and not used by the
    fast path. With ``unembed=True`` the runner also gets its own laid-out ``W_U`` (for callers
    that unembed through TransformerLens, e.g. generation). The caller's model is untouched.
    """
    dtype = dtype or model.cfg.dtype
    own = {id(t) for b in model.blocks[start_layer:] for t in itertools.chain(b.parameters(), b.buffers())}
    if unembed:
        own |= {id(t) for t in model.unembed.parameters()}
    memo: dict[int, object] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())
                               if id(t) not in own}
    if model.tokenizer is not None:
        memo[id(model.tokenizer)] = model.tokenizer
    runner = copy.deepcopy(model, memo)
    runner.cfg.dtype = dtype
    for block in runner.blocks[start_layer:]:
        block.to(dtype)
        for module in block.modules():
            for name, perm in _KERNEL_LAYOUT.items():
                w = module._parameters.get(name)
                if w is not None and w.ndim == len(perm):
                    inverse = [perm.index(i) for i in range(len(perm))]
                    laid_out = w.detach().permute(*perm).contiguous().permute(*inverse)
                    setattr(module, name, nn.Parameter(laid_out, requires_grad=False))
    if unembed:  # Unembed.forward uses W_U.T.contiguous()
        w = runner.unembed.W_U.detach()
        runner.unembed.W_U = nn.Parameter(w.T.contiguous().T, requires_grad=False)
    runner.requires_grad_(False)
    return runner


def _token_logprobs(model: HookedTransformer, h: Float[Tensor, "n d_model"],
                    targets: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """fp32 ``log p(target)`` from final residuals (before ``ln_final``): only these rows are unembedded."""
    h = model.ln_final(h.to(model.cfg.dtype).unsqueeze(0)).squeeze(0)
    logits = (h @ model.W_U).float()  # (n, d_vocab)
    if getattr(model, "b_U", None) is not None:
        logits = logits + model.b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def _gather_padded(flat: Tensor, offsets: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Right-padded ``(len(rows), n_max, ...)`` copy of ragged items ``rows`` and its ``(.., n_max)`` mask.

    Padding repeats each item's last row (finite values; masked out by the attention mask)."""
    start, length = offsets[rows], offsets[rows + 1] - offsets[rows]
    n_max = int(length.max())
    pos = torch.arange(n_max)
    mask = pos[None, :] < length[:, None]  # (rows, n_max)
    index = start[:, None] + torch.minimum(pos[None, :], length[:, None] - 1)
    return flat[index], mask


def _shared_kv(kv: TransformerLensKeyValueCache, k: int, mask: Tensor) -> TransformerLensKeyValueCache:
    """The prompt cache repeated for ``k`` answers each (answer-major rows), frozen."""
    entries = [TransformerLensKeyValueCacheEntry(e.past_keys.repeat(k, 1, 1, 1), e.past_values.repeat(k, 1, 1, 1),
                                                 frozen=True) for e in kv.entries]
    return TransformerLensKeyValueCache(entries, previous_attention_mask=mask.repeat(k, 1).int(), frozen=True)


def run_rest(model: HookedTransformer, start_layer: int, x_p: Float[Tensor, "b P d"], m_p: Bool[Tensor, "b P"],
             x_a: Float[Tensor, "kb A d"], m_a: Bool[Tensor, "kb A"]) -> tuple[Tensor, Tensor]:
    """Run blocks ``start_layer..`` on prompts, then on their ``k`` answers each against the prompt cache.

    Returns the final residuals (before ``ln_final``) of prompts ``(b, P, d)`` and answers ``(k*b, A, d)``.
    """
    b, k, n = x_p.shape[0], x_a.shape[0] // x_p.shape[0], model.cfg.n_layers
    kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=b)
    r_p = model(x_p, start_at_layer=start_layer, attention_mask=m_p.long(), past_kv_cache=kv, stop_at_layer=n)
    full_mask = torch.cat([m_p.repeat(k, 1), m_a], dim=1).long()  # (k*b, P + A)
    r_a = model(x_a, start_at_layer=start_layer, attention_mask=full_mask, past_kv_cache=_shared_kv(kv, k, m_p),
                stop_at_layer=n)
    return r_p, r_a


def answer_logprobs_shared(head: HookedTransformer, r_p: Tensor, m_p: Tensor, r_a: Tensor, m_a: Tensor,
                           t_a: Tensor) -> Float[Tensor, "b k"]:
    """Summed fp32 answer log-probs from ``run_rest`` outputs (answer-major rows -> ``(b, k)``)."""
    b = r_p.shape[0]
    k = r_a.shape[0] // b
    # answer token 0 is predicted by the last prompt position, token t > 0 by answer position t-1
    last = r_p[torch.arange(b, device=r_p.device), m_p.sum(1) - 1]  # (b, d)
    lp = _token_logprobs(head, last.repeat(k, 1), t_a[:, 0])  # (k*b,)
    pred = m_a[:, 1:]  # (k*b, A-1)
    if pred.any():
        r, c = pred.nonzero(as_tuple=True)
        lp = lp.index_add(0, r, _token_logprobs(head, r_a[r, c], t_a[r, c + 1]))
    return lp.view(k, b).T


def _tokenize(model: HookedTransformer, prompts: Sequence[str], answers: Sequence[Sequence[str]],
              max_length: int | None) -> tuple[list[Tensor], list[Tensor]]:
    """Prompt token ids per item and answer token ids per (item, answer), flat item-major.

    ``tokenize_completions`` encodes each part alone (exact boundary); with ``max_length`` the
    prompt is cut from the left as much as its longest answer requires, the same for all answers
    (its ``groups``).
    """
    k = len(answers[0])
    p_tok, a_tok = [], []
    for s in range(0, len(prompts), 64):
        items = range(s, min(s + 64, len(prompts)))
        batch = tokenize_completions(model, [prompts[i] for i in items for _ in range(k)],
                                     [a for i in items for a in answers[i]], max_length=max_length,
                                     groups=[i for i in items for _ in range(k)])
        starts, ends = batch.prompt_lengths.tolist(), batch.lengths.tolist()
        for j in range(len(items)):
            p_tok.append(batch.tokens[j * k, : starts[j * k]])
            a_tok.extend(batch.tokens[r, starts[r]: ends[r]] for r in range(j * k, j * k + k))
    return p_tok, a_tok


def _pad(seqs: Sequence[Tensor], pad: int = 0) -> tuple[Tensor, Tensor]:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)], mask[i, : len(s)] = s, True
    return out, mask


@dataclass
class PrefixCache:
    """Residual streams entering ``site.start_layer`` for prompts with ``n_answers`` answers each.

    Item ``i`` has one prompt and answers ``(i, 0) .. (i, n_answers-1)``; storage is flat (ragged
    items concatenated) with offsets. ``reference`` holds the unsteered log-probs ``(n, n_answers)``.
    Build with ``PrefixCache.build``; score with ``logprobs`` (differentiable, for training) or
    ``score`` (all items, no grad, e.g. for multiplier sweeps).
    """

    site: SteeringSite
    n_answers: int
    prompt_resid: Float[Tensor, "n_prompt_tokens d_model"]
    prompt_offsets: Int[Tensor, " n_items_plus_1"]
    answer_tokens: Int[Tensor, " n_answer_tokens"]
    answer_resid: Float[Tensor, "n_answer_tokens d_model"]
    answer_offsets: Int[Tensor, " n_answers_plus_1"]  # answer (i, j) is number i * n_answers + j
    reference: Float[Tensor, "n_items n_answers"] | None  # unsteered log-probs (None if not computed)
    model_name: str | None = None

    def __len__(self) -> int:
        return int(self.prompt_offsets.shape[0]) - 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prompt_resid, self.answer_resid))

    def lengths(self) -> Int[Tensor, " n_items"]:
        """Prompt + longest answer tokens of each item (for length-sorted batching)."""
        return self.prompt_offsets.diff() + self.answer_offsets.diff().view(-1, self.n_answers).amax(1)

    # ------------------------------------------------------------------ building
    @classmethod
    @torch.no_grad()
    def build(cls, model: HookedTransformer, prompts: Sequence[str], answers: Sequence[Sequence[str]],
              hook_name: str, *, runner: HookedTransformer | None = None, reference: bool = True,
              max_length: int | None = None, batch_size: int = 8, dtype: torch.dtype | None = None,
              progress: bool = False) -> PrefixCache:
        """Run the unsteered model once over every prompt and answer; keep the residual at the cache point.

        Args:
            model: the frozen model; it computes the blocks before the cache point and unembeds.
            prompts: formatted prompts (``workbench.model.format_chat``).
            answers: for each prompt the same number of answers (end-of-turn appended by the caller).
            hook_name: where vectors will be added (``"blocks.14.hook_resid_post"``).
            runner: runs the blocks after the cache point for the reference log-probs (default
                ``model``; pass the same runner that will score, e.g. a bf16 ``make_runner`` copy).
            reference: also run the rest of the unsteered model and keep its log-probs in
                ``cache.reference`` (multiplier 0; False stops at the cache point, ``reference`` is None).
            max_length: prompts are cut from the left so that prompt + longest answer fit.
            dtype: storage dtype of the cached residuals (default ``runner``'s dtype).
        """
        from tqdm.auto import tqdm

        if len(prompts) != len(answers) or not prompts:
            raise ValueError(f"need one list of answers per prompt: {len(prompts)} prompts, "
                             f"{len(answers)} answer lists")
        k = len(answers[0])
        if k == 0 or any(len(a) != k for a in answers):
            raise ValueError("every prompt needs the same (non-zero) number of answers")
        if model.cfg.positional_embedding_type not in _SUPPORTED_POSITIONS:
            raise NotImplementedError(f"prefix caching supports {_SUPPORTED_POSITIONS} positions, not "
                                      f"{model.cfg.positional_embedding_type!r}")
        site = steering_site(model, hook_name)
        runner = runner or model
        dtype = dtype or runner.cfg.dtype
        device = model.cfg.device
        n = len(prompts)
        p_tok, a_tok = _tokenize(model, prompts, answers, max_length)
        p_res, a_res = [None] * n, [None] * (n * k)
        ref = torch.empty(n, k) if reference else None
        lengths = [len(p_tok[i]) + max(len(a_tok[i * k + j]) for j in range(k)) for i in range(n)]
        order = sorted(range(n), key=lengths.__getitem__)
        for s in tqdm(range(0, n, batch_size), desc="prefix cache", disable=not progress, leave=False):
            idx = order[s: s + batch_size]
            b = len(idx)
            tp, m_p = _pad([p_tok[i] for i in idx])  # (b, P)
            ta, m_a = _pad([a_tok[i * k + j] for j in range(k) for i in idx])  # (k*b, A) answer-major
            tp, m_p, ta, m_a = tp.to(device), m_p.to(device), ta.to(device), m_a.to(device)
            x_p, x_a = _embed_to(model, site.start_layer, tp, m_p, ta, m_a)
            if ref is not None:
                r_p, r_a = run_rest(runner, site.start_layer, x_p.to(runner.cfg.dtype), m_p,
                                    x_a.to(runner.cfg.dtype), m_a)
                ref[idx] = answer_logprobs_shared(model, r_p, m_p, r_a, m_a, ta).cpu()
            for n_i, i in enumerate(idx):
                p_res[i] = x_p[n_i, : len(p_tok[i])].to("cpu", dtype)
                for j in range(k):
                    a_res[i * k + j] = x_a[j * b + n_i, : len(a_tok[i * k + j])].to("cpu", dtype)
        offsets = lambda seqs: torch.tensor([0, *(len(t) for t in seqs)]).cumsum(0)  # noqa: E731
        return cls(site, k, torch.cat(p_res), offsets(p_tok), torch.cat(a_tok), torch.cat(a_res), offsets(a_tok),
                   ref, model_name=str(model.cfg.model_name))

    # ------------------------------------------------------------------ scoring
    def logprobs(self, model: HookedTransformer, index: Sequence[int] | Tensor,
                 delta: Float[Tensor, "... d_model"] | None = None, *,
                 unembed_model: HookedTransformer | None = None) -> Float[Tensor, "batch n_answers"]:
        """Summed fp32 answer log-probs of items ``index`` with ``delta`` added at the hook.

        Differentiable in ``delta`` (call under ``torch.no_grad()`` when no gradient is needed).

        Args:
            model: runs the remaining blocks (the cached model or a ``make_runner`` copy of it).
            index: items to score, one batch.
            delta: ``(d_model,)`` added at every position of every item, or ``(batch, d_model)``
                one per item (e.g. ``d_i * v``); None for the unsteered model.
            unembed_model: applies ``ln_final``/``W_U`` (default ``model``).
        """
        site, k = self.site, self.n_answers
        rows = torch.as_tensor(index, dtype=torch.long).view(-1)
        device, dtype = model.cfg.device, model.cfg.dtype
        x_p, m_p = _gather_padded(self.prompt_resid, self.prompt_offsets, rows)  # (b, P, d), (b, P)
        a_rows = (rows[None, :] * k + torch.arange(k)[:, None]).reshape(-1)  # answer-major: row j*b + i
        x_a, m_a = _gather_padded(self.answer_resid, self.answer_offsets, a_rows)  # (k*b, A, d)
        t_a, _ = _gather_padded(self.answer_tokens, self.answer_offsets, a_rows)  # (k*b, A)
        x_p, x_a = x_p.to(device, dtype), x_a.to(device, dtype)
        m_p, m_a, t_a = m_p.to(device), m_a.to(device), t_a.to(device)
        d_p = d_a = None
        if delta is not None:
            delta = delta.to(device, dtype)
            d_p = delta if delta.ndim == 1 else delta[:, None, :]  # (d,) or (b, 1, d)
            d_a = delta if delta.ndim == 1 else d_p.repeat(k, 1, 1)  # (d,) or (k*b, 1, d)
        if site.direct and delta is not None:
            x_p, x_a = x_p + d_p, x_a + d_a
            r_p, r_a = run_rest(model, site.start_layer, x_p, m_p, x_a, m_a)
        else:
            with self._hook(model, d_p, d_a, len(rows)):
                r_p, r_a = run_rest(model, site.start_layer, x_p, m_p, x_a, m_a)
        return answer_logprobs_shared(unembed_model or model, r_p, m_p, r_a, m_a, t_a)

    @contextlib.contextmanager
    def _hook(self, model: HookedTransformer, d_p: Tensor | None, d_a: Tensor | None, b: int) -> Iterator[None]:
        if d_p is None:
            yield
            return

        def add(act: Tensor, hook: object) -> Tensor:  # noqa: ARG001
            return act + (d_p if act.shape[0] == b else d_a)  # prompt pass: b rows; answer pass: k*b

        with model.hooks(fwd_hooks=[(self.site.hook_name, add)]):
            yield

    @torch.no_grad()
    def score(self, model: HookedTransformer, delta: Float[Tensor, " d_model"] | None = None, *,
              batch_size: int = 16, unembed_model: HookedTransformer | None = None,
              ) -> Float[Tensor, "n_items n_answers"]:
        """``logprobs`` of every item (length-sorted batches), e.g. for a multiplier sweep.

        Example:
            >>> cache = PrefixCache.build(model, prompts, [[m, n] for m, n in answers], v.hook_name)
            >>> for mult in (-2, -1, 1, 2):
            ...     lp = cache.score(model, mult * v.vector)   # (n, 2); cache.reference is mult 0
            ...     print(mult, (lp[:, 0] - lp[:, 1]).mean())
        """
        out = torch.empty(len(self), self.n_answers, dtype=torch.float32)
        order = torch.argsort(self.lengths(), stable=True)
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            out[idx] = self.logprobs(model, idx, delta, unembed_model=unembed_model).cpu()
        return out


def _embed_to(model: HookedTransformer, stop: int, tp: Tensor, m_p: Tensor, ta: Tensor, m_a: Tensor,
              ) -> tuple[Tensor, Tensor]:
    """Residuals entering block ``stop`` for prompts ``(b, P)`` and their answers ``(k*b, A)``."""
    b, k = tp.shape[0], ta.shape[0] // tp.shape[0]
    if stop == 0:  # embeddings only: run prompt + answer together so positions are right for every model
        full = torch.cat([tp.repeat(k, 1), ta], dim=1)
        mask = torch.cat([m_p.repeat(k, 1), m_a], dim=1).long()
        x = model(full, attention_mask=mask, stop_at_layer=0)
        return x[:b, : tp.shape[1]], x[:, tp.shape[1]:]
    kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=b)
    x_p = model(tp, attention_mask=m_p.long(), past_kv_cache=kv, stop_at_layer=stop)
    x_a = model(ta, attention_mask=m_a.long(), past_kv_cache=_shared_kv(kv, k, m_p), stop_at_layer=stop)
    return x_p, x_a
