"""The scoring engine: log-probabilities of answers to prompts under steering conditions.

Everything in the workbench that scores text under a steering vector goes through this module:
BiPO training (Cao et al. 2024, arXiv 2406.00045), log-odds curves, CAA's A/B probability,
TruthfulQA MC1/MC2, utility (perplexity, KL), layer sweeps, composition and transfer.

**Items.** The unit of work is an *item*: one prompt with one or more answers (a preference pair is
a prompt with two answers, a TruthfulQA question a prompt with all its choices, a neutral passage its
first token with the rest as the answer). ``tokenize_items`` encodes each part on its own (exact
boundary), prepends BOS when the model's config asks for it, and, with ``max_length``, cuts the
prompt from the left by the most any of its answers needs (answers are never cut), so all answers of
an item are scored in the same context.

**Conditions.** A condition is the vectors applied together, each with its multiplier:
``((v, 1.0),)``, ``((v_a, 1.0), (v_b, 0.5))``, or ``()`` for the unsteered model. Each vector is added
at every position of its hook point (``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out`` or
``mlp_out`` of any block).

**What runs.** A vector at block ``L`` changes nothing before it, so for one batch of items:

* the residual stream is cached at each layer where a condition starts (``blocks.L.hook_resid_pre``
  and ``resid_mid``/``attn_out``/``mlp_out`` start at ``L``; ``resid_post`` at ``L + 1``), going up,
  each block run once for all conditions (prefix sharing);
* vectors that enter exactly at a condition's start layer on the residual stream are added to the
  cached residual; all others are added by a hook while the remaining blocks run;
* each prompt runs ONCE for all of its answers: the prompt pass fills a key/value cache and the
  answers run against it (prompt sharing). Positions come from the attention mask (the padding
  between a short prompt and its answer is invisible), exact for rotary and learned positions;
* log-probs use *answer-only unembedding* (``unembed``): ``ln_final`` and ``W_U`` are applied only at
  the rows that predict answer tokens, in fp32, whatever dtype ran the blocks.

**On a TransformerBridge** (TransformerLens 4) blocks cannot be skipped and keys/values cannot be
shared (``start_at_layer`` runs every block, ``past_kv_cache`` is ignored), so each condition runs
one full forward pass over the prompt + answer rows (``_full_readout``), every delta added by a hook
at its own hook point and the final residual read before ``ln_final`` (``backend.final_residual``);
the ``Readout`` and everything after it are the same. ``PrefixCache`` then keeps only the items and
the reference log-probs, and ``logprobs`` runs the full forward (still differentiable in the delta).

Every tensor the engine creates lives on the model's device; vectors are moved to the activation's
device and dtype where they are added. With blocks split over several GPUs (TransformerLens'
``n_devices``), ``block_device`` is the one layer-to-device map: prompt keys and values are gathered on
the device of the block that holds them, and read-out indices follow the final residual's device.

**Memory.** With ``b`` items per batch, ``T`` their prompt + answer tokens (``T <= b * (P + k * A)``
for prompts of ``P`` and ``k`` answers of ``A`` tokens), ``S`` distinct start layers and model width
``d``, one batch holds ``S * T * d`` cached residual values in the model's dtype, the activations of
one forward pass, and ``n_answer_tokens * d_vocab`` fp32 logits. No weight is copied, except by
``make_runner`` (see there: on CPU, the blocks after the vector, re-laid out for speed; in another
dtype, those blocks in that dtype). ``PrefixCache`` (training) keeps ``(n_prompt_tokens +
n_answer_tokens) * d`` values of all items on the model's device, plus ``n_items * k`` fp32 reference
log-probs.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from workbench.core.backend import Model, final_residual, is_bridge, to_dtype
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
from workbench.core.vector import SteeringVector, parse_hook_name

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("fp32", "bf16")
#: One vector, or several applied together with the same multiplier (composition).
VectorSpec = SteeringVector | Sequence[SteeringVector]
#: The vectors applied together, each with its multiplier; ``()`` is the unsteered model.
Condition = Sequence[tuple[SteeringVector, float]]
_SUPPORTED_POSITIONS = ("rotary", "standard")
# weight -> the permutation TransformerLens makes contiguous before its matmul (see make_runner)
_KERNEL_LAYOUT = {"W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_Q": (0, 2, 1), "W_K": (0, 2, 1),
                  "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1), "W_O": (2, 0, 1), "W_U": (1, 0)}


# =========================================================================== tokenisation
@dataclass(frozen=True)
class TokenizedBatch:
    """Prompt + answer sequences, right-padded (one row per (prompt, answer)).

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


def _encode(model: Model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad_id(model: Model) -> int:
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def _encode_parts(model: Model, prompts: Sequence[str], answers: Sequence[str],
                  max_length: int | None, groups: Sequence[int] | None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per row: BOS prepended when the config asks, prompts cut per group."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if len(prompts) == 0:
        raise ValueError("nothing to tokenize: no prompts given")
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"{len(groups)} group ids for {len(prompts)} rows")
    bos = model.tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
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
    return [(p_ids[min(cut, len(p_ids)):], a_ids) for (p_ids, a_ids), cut in zip(encoded, cuts)]


def tokenize_completions(model: Model, prompts: Sequence[str], answers: Sequence[str],
                         max_length: int | None = None, groups: Sequence[int] | None = None) -> TokenizedBatch:
    """Tokenize ``prompt + answer`` rows into one right-padded batch (exact boundary).

    A BOS token is prepended when the model's config asks for one (``default_prepend_bos``) and the
    prompt does not already start with it. Sequences longer than ``max_length`` lose prompt tokens
    from the left (answers are never cut; an answer longer than ``max_length`` is an error). Rows
    with the same ``groups`` id (e.g. the two answers of one preference pair) lose the same number
    of prompt tokens, the most any of them needs, so that they are scored in the same context.
    """
    rows = _encode_parts(model, prompts, answers, max_length, groups)
    n = max(len(p) + len(a) for p, a in rows)
    tokens = torch.full((len(rows), n), _pad_id(model), dtype=torch.long)
    attn = torch.zeros((len(rows), n), dtype=torch.long)
    ans = torch.zeros((len(rows), n), dtype=torch.bool)
    for i, (p, a) in enumerate(rows):
        tokens[i, : len(p) + len(a)] = torch.tensor(p + a)
        attn[i, : len(p) + len(a)] = 1
        ans[i, len(p): len(p) + len(a)] = True
    return TokenizedBatch(tokens, attn, ans, torch.tensor([len(p) for p, _ in rows]),
                          torch.tensor([len(p) + len(a) for p, a in rows]))


@dataclass(frozen=True)
class Items:
    """Tokenised items: prompt ``i`` with answers ``answer_offsets[i] .. answer_offsets[i+1]-1``.

    Attributes:
        prompts: token ids of each prompt (CPU).
        answers: token ids of each answer, item-major (CPU).
        answer_offsets: ``(n_items + 1,)`` where each item's answers start.
    """

    prompts: tuple[Tensor, ...]
    answers: tuple[Tensor, ...]
    answer_offsets: Int[Tensor, " n_items_plus_1"]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_answers(self) -> int:
        return len(self.answers)

    def answer_lengths(self) -> Int[Tensor, " n_answers"]:
        return torch.tensor([len(a) for a in self.answers])

    def lengths(self) -> Int[Tensor, " n_items"]:
        """Prompt + longest answer of each item (for length-sorted batching)."""
        a = self.answer_lengths()
        return torch.tensor([len(self.prompts[i]) + int(a[self.answer_offsets[i]: self.answer_offsets[i + 1]].max())
                             for i in range(len(self))])

    @classmethod
    def from_ids(cls, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[Sequence[int]]]) -> Items:
        """Items from token ids: ``prompts[i]`` (non-empty) with answers ``answers[i]`` (each non-empty)."""
        if len(prompts) != len(answers) or not prompts:
            raise ValueError(f"need one list of answers per prompt: {len(prompts)} prompts, "
                             f"{len(answers)} answer lists")
        for i, (p, a) in enumerate(zip(prompts, answers)):
            if len(p) == 0 or len(a) == 0 or any(len(x) == 0 for x in a):
                raise ValueError(f"item {i}: the prompt and every answer need at least one token")
        offsets = torch.tensor([0, *(len(a) for a in answers)]).cumsum(0)
        return cls(tuple(torch.as_tensor(list(p), dtype=torch.long) for p in prompts),
                   tuple(torch.as_tensor(list(x), dtype=torch.long) for a in answers for x in a), offsets)


def tokenize_items(model: Model, prompts: Sequence[str], answers: Sequence[Sequence[str]],
                   max_length: int | None = None) -> Items:
    """``Items`` from prompt strings and each prompt's answer strings (see the module docstring)."""
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need one list of answers per prompt: {len(prompts)} prompts, {len(answers)} answer lists")
    if any(len(a) == 0 for a in answers):
        raise ValueError("every prompt needs at least one answer")
    flat_p = [p for p, a in zip(prompts, answers) for _ in a]
    flat_a = [x for a in answers for x in a]
    groups = [i for i, a in enumerate(answers) for _ in a]
    rows = _encode_parts(model, flat_p, flat_a, max_length, groups)
    offsets = torch.tensor([0, *(len(a) for a in answers)]).cumsum(0)
    return Items(tuple(torch.tensor(rows[int(offsets[i])][0], dtype=torch.long) for i in range(len(prompts))),
                 tuple(torch.tensor(a, dtype=torch.long) for _, a in rows), offsets)


# =========================================================================== unembedding
def unembed(model: Model, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
    """fp32 logits of final residuals ``h`` (before ``ln_final``): ``ln_final``, ``W_U``, ``b_U``, soft cap.

    Only the given rows are unembedded (answer-only unembedding); ``model`` (the caller's model, in
    its own dtype) unembeds whatever dtype ran the blocks.
    """
    h = model.ln_final(h.to(model.cfg.dtype).unsqueeze(0)).squeeze(0)
    logits = (h @ model.W_U).float()  # (n, d_vocab)
    if getattr(model, "b_U", None) is not None:
        logits = logits + model.b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def token_logprobs(model: Model, h: Float[Tensor, "n d_model"],
                   targets: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """fp32 ``log p(targets[i])`` predicted from final residual row ``h[i]``."""
    logits = unembed(model, h)
    return logits.gather(1, targets[:, None].to(logits.device)).squeeze(1) - torch.logsumexp(logits, dim=-1)


# =========================================================================== runners
def entry(model: Model, hook_name: str) -> tuple[int, bool]:
    """``(start layer, direct)`` of a vector at ``hook_name``.

    The start layer is the first block whose input the vector can change; ``direct`` is True when
    the vector is added to that block's input (``resid_pre`` of ``L``: start ``L``; ``resid_post`` of
    ``L``: start ``L + 1``), False when it is added by a hook inside block ``L`` (``resid_mid``,
    ``attn_out``, ``mlp_out``).
    """
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook {hook_name!r} does not exist in model {model.cfg.model_name!r} "
                         f"({model.cfg.n_layers} layers)")
    layer, point = parse_hook_name(hook_name)
    if point == "hook_resid_pre":
        return layer, True
    if point == "hook_resid_post":
        return layer + 1, True
    return layer, False


def make_runner(model: Model, start_layer: int, dtype: torch.dtype | None = None, *,
                unembed: bool = False) -> Model:
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
    unembed through TransformerLens, e.g. generation). The caller's model is never modified.
    """
    dtype = dtype or model.cfg.dtype
    on_cpu = torch.device(model.cfg.device or "cpu").type == "cpu"
    if is_bridge(model):  # runs every block anyway: itself, or a whole copy in the other dtype
        if dtype == model.cfg.dtype:
            return model
        return to_dtype(copy.deepcopy(model, {id(model.tokenizer): model.tokenizer}), dtype)
    if dtype == model.cfg.dtype and not on_cpu and not unembed:
        return model
    modules = list(model.blocks[start_layer:]) + ([model.unembed] if unembed else [])
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


def precision_runner(model: Model, precision: Precision | str, start_layer: int = 0) -> Model:
    """The runner of blocks ``start_layer..`` for ``precision`` (``"fp32"``: ``model`` itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or model.cfg.dtype == torch.bfloat16:
        return model
    return make_runner(model, start_layer, torch.bfloat16)


# =========================================================================== conditions
def as_vector_list(spec: VectorSpec, what: str = "vectors") -> list[SteeringVector]:
    vecs = [spec] if isinstance(spec, SteeringVector) else list(spec)
    for i, v in enumerate(vecs):
        if not isinstance(v, SteeringVector):
            raise TypeError(f"{what}[{i}] is a {type(v).__name__}, not a workbench.SteeringVector")
    return vecs


def label_vectors(vectors: VectorSpec | Mapping[str, VectorSpec],
                  model: Model | None = None) -> dict[str, list[SteeringVector]]:
    """``{label: [vectors applied together]}`` from one vector, a list (one composition) or a dict.

    A single vector is labelled by its method (``"bipo"``); a composition by ``"bipo+caa"``. With
    ``model``, every vector is checked to fit it (``IncompatibleVectorError`` otherwise).
    """
    if isinstance(vectors, Mapping):
        out = {str(k): as_vector_list(v, f"vectors[{k!r}]") for k, v in vectors.items()}
    else:
        vecs = as_vector_list(vectors)
        out = {"+".join(v.method for v in vecs) or "none": vecs}
    if not out:
        raise ValueError("no vectors given: pass a SteeringVector, a list of them or a {label: vector} dict")
    if model is not None:
        for vecs in out.values():
            for v in vecs:
                v.check_compatible(model)
    return out


def sweep_conditions(specs: Mapping[str, Sequence[SteeringVector]], multipliers: Sequence[float],
                     ) -> tuple[list[Condition], list[tuple[str, float]]]:
    """Conditions for every (label, multiplier) of ``specs`` (one shared unsteered condition for m = 0).

    Returns ``(conditions, keys)``: ``keys[c]`` is the ``(label, multiplier)`` of condition ``c``;
    the unsteered condition, if any multiplier is 0, is listed once per label under that label.
    """
    conds: list[Condition] = []
    keys: list[tuple[str, float]] = []
    for label, vecs in specs.items():
        for m in multipliers:
            keys.append((label, float(m)))
            conds.append(() if m == 0 else tuple((v, float(m)) for v in vecs))
    return conds, keys


#: One added delta: ``(hook name, (d_model,) for every item or (b, d_model) one per item)``.
Delta = tuple[str, Tensor]


def condition_deltas(condition: Condition) -> list[Delta]:
    """``m * v`` per vector of a condition (fp32, on the vector's device; moved where it is added)."""
    return [(v.hook_name, v.vector.float() * float(m)) for v, m in condition if m != 0]


def start_layer(model: Model, deltas: Sequence[Delta]) -> int:
    """First block any delta changes (``n_layers`` for none)."""
    return min((entry(model, name)[0] for name, _ in deltas), default=model.cfg.n_layers)


# =========================================================================== one batch
@dataclass
class _Batch:
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


def _assemble(model: Model, items: Items, idx: Sequence[int]) -> _Batch:
    dev = model.cfg.device
    idx_t = torch.as_tensor(list(idx), dtype=torch.long)
    spans = [range(int(items.answer_offsets[i]), int(items.answer_offsets[i + 1])) for i in idx_t.tolist()]
    answer_idx = torch.tensor([a for s in spans for a in s], dtype=torch.long)
    owner = torch.tensor([j for j, s in enumerate(spans) for _ in s], dtype=torch.long, device=dev)
    pad = _pad_id(model)
    tp, m_p = _pad([items.prompts[i] for i in idx_t.tolist()], pad, dev)
    ta, m_a = _pad([items.answers[a] for a in answer_idx.tolist()], pad, dev)
    return _Batch(idx_t, answer_idx, tp, m_p, ta, m_a, owner)


def block_device(model: Model, layer: int) -> torch.device:
    """The device of block ``layer`` (TransformerLens' placement; the model's device on one device)."""
    from transformer_lens.utilities.devices import get_device_for_block_index

    return torch.device(get_device_for_block_index(layer, model.cfg))


def _shared_kv(kv: object, owner: Tensor, m_p: Tensor) -> object:
    """The prompt cache gathered for each answer's prompt (on each entry's own device), frozen
    (``HookedTransformer`` only)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

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


def _run_blocks(runner: Model, start: int, stop: int, x_p: Tensor, x_a: Tensor, batch: _Batch,
                hooked: Sequence[Delta] = ()) -> tuple[Tensor, Tensor]:
    """Blocks ``start..stop-1`` on the prompts, then on their answers against the prompts' key/value cache."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    if start >= stop:
        return x_p, x_a
    b = x_p.shape[0]
    dtype = runner.cfg.dtype
    x_p, x_a = x_p.to(dtype), x_a.to(dtype)
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


def _embed(model: Model, batch: _Batch) -> tuple[Tensor, Tensor]:
    """Residuals entering block 0: prompt and answer embedded together, so positions are right."""
    P = batch.tp.shape[1]
    full = torch.cat([batch.tp[batch.owner], batch.ta], dim=1)
    mask = torch.cat([batch.m_p[batch.owner], batch.m_a], dim=1).long()
    x = model(full, attention_mask=mask, stop_at_layer=0)  # (n_a, P + A, d)
    first = torch.searchsorted(batch.owner, torch.arange(batch.tp.shape[0], device=x.device))  # item-major
    return x[first, :P], x[:, P:]


class _Stream:
    """The unsteered residual stream of one batch at increasing layers; each block runs at most once."""

    def __init__(self, model: Model, batch: _Batch) -> None:
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
            self.cache[layer] = _run_blocks(self.model, k, layer, *self.cache[k], self.batch)
        return self.cache[layer]


def _apply(model: Model, runner: Model, stream_at: tuple[Tensor, Tensor], start: int,
           deltas: Sequence[Delta], batch: _Batch) -> tuple[Tensor, Tensor]:
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
    return _run_blocks(runner, start, model.cfg.n_layers, x_p, x_a, batch, hooked)


@dataclass(frozen=True)
class Readout:
    """Final residuals (before ``ln_final``) of one batch under one condition, where they are read.

    Attributes:
        h: ``(n_tokens, d_model)`` the rows that predict answer tokens (token 0 from the prompt's
            last position, token t from answer position t - 1).
        targets: ``(n_tokens,)`` the answer token each row predicts.
        answer: ``(n_tokens,)`` the batch-local answer each row belongs to.
        h_last: ``(n_answers, d_model)`` each answer's last position (predicts what follows it).
    """

    h: Float[Tensor, "n_tokens d_model"]
    targets: Int[Tensor, " n_tokens"]
    answer: Int[Tensor, " n_tokens"]
    h_last: Float[Tensor, "n_answers d_model"]

    def logprobs(self, model: Model, n_answers: int) -> Float[Tensor, " n_answers"]:
        """Summed fp32 log-prob of each answer's tokens."""
        lp = token_logprobs(model, self.h, self.targets)
        return torch.zeros(n_answers, dtype=lp.dtype, device=lp.device).index_add(0, self.answer, lp)


def _readout(r_p: Tensor, r_a: Tensor, batch: _Batch) -> Readout:
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


def _full_readout(runner: Model, batch: _Batch, deltas: Sequence[Delta]) -> Readout:
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


def _check_positions(model: Model) -> None:
    if model.cfg.positional_embedding_type not in _SUPPORTED_POSITIONS:
        raise NotImplementedError(f"the scoring engine supports {_SUPPORTED_POSITIONS} positions, not "
                                  f"{model.cfg.positional_embedding_type!r}")


def _batches(items: Items, batch_size: int) -> list[list[int]]:
    """Item indices in length-sorted batches (less padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.argsort(items.lengths(), stable=True).tolist()
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def run_conditions(model: Model, items: Items, conditions: Sequence[Condition], *,
                   batch_size: int = 16, precision: Precision = "fp32", runner: Model | None = None,
                   progress: bool = False, desc: str = "scoring",
                   ) -> Iterator[tuple[Tensor, Tensor, list[Readout]]]:
    """For each batch: ``(item indices, answer indices, one Readout per condition)``.

    The engine behind every metric (module docstring). ``runner`` (or ``precision="bf16"``) runs
    the blocks where the conditions start and after; ``model`` runs the shared prefix and unembeds.
    Conditions that are equal (e.g. every label's multiplier 0) are run once.
    """
    from tqdm.auto import tqdm

    _check_positions(model)
    for cond in conditions:
        for v, _ in cond:
            v.check_compatible(model)
    deltas = [condition_deltas(c) for c in conditions]
    starts = [start_layer(model, d) for d in deltas]
    first = min(starts, default=model.cfg.n_layers)
    if runner is None:
        runner = precision_runner(model, precision, first)
    if runner is not model:  # the unsteered condition runs through the same runner as the steered ones
        starts = [s if d else first for s, d in zip(starts, deltas)]
    keys = [tuple((id(v), float(m)) for v, m in c if m != 0) for c in conditions]
    order = sorted(range(len(conditions)), key=starts.__getitem__)  # going up: each block once
    bridge = is_bridge(runner)
    for idx in tqdm(_batches(items, batch_size), desc=desc, disable=not progress, leave=False):
        batch = _assemble(model, items, idx)
        stream = None if bridge else _Stream(model, batch)
        out: dict[int, Readout] = {}
        seen: dict[tuple, Readout] = {}
        for c in order:
            if keys[c] not in seen:
                seen[keys[c]] = (_full_readout(runner, batch, deltas[c]) if stream is None else
                                 _readout(*_apply(model, runner, stream.at(starts[c]), starts[c], deltas[c], batch),
                                          batch))
            out[c] = seen[keys[c]]
        yield batch.idx, batch.answer_idx, [out[c] for c in range(len(conditions))]


def answer_logprobs(model: Model, items: Items, conditions: Sequence[Condition], *,
                    batch_size: int = 16, precision: Precision = "fp32", runner: Model | None = None,
                    progress: bool = False) -> Float[Tensor, "n_conditions n_answers"]:
    """Summed fp32 log-prob of every answer under each condition (on the CPU)."""
    out = torch.empty(len(conditions), items.n_answers, dtype=torch.float32)
    for _, a_idx, readouts in run_conditions(model, items, conditions, batch_size=batch_size, precision=precision,
                                             runner=runner, progress=progress):
        for c, r in enumerate(readouts):
            out[c, a_idx] = r.logprobs(model, len(a_idx)).cpu()
    return out


def preference_logprobs(model: Model, pairs: Sequence[object], conditions: Sequence[Condition], *,
                        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, append_end_of_turn: bool = True,
                        max_length: int | None = 256, batch_size: int = 16, precision: Precision = "fp32",
                        runner: Model | None = None, progress: bool = False,
                        ) -> tuple[Float[Tensor, "n_conditions n_pairs 2"], Int[Tensor, "n_pairs 2"]]:
    """``log p(matching)`` and ``log p(not_matching)`` of every pair under each condition.

    The one definition of the preference metric: the chat prompt around the question
    (``workbench.core.prompts``), each answer closed by the end-of-turn string, prompts cut from the left
    beyond ``max_length`` tokens by the same amount for both answers. Log-odds are
    ``lp[..., 0] - lp[..., 1]``.

    Returns:
        ``(logprobs, n_tokens)``: ``(n_conditions, n_pairs, 2)`` fp32 and the answer token counts
        ``(n_pairs, 2)``.

    Example:
        >>> lp, _ = preference_logprobs(model, test_pairs, [(), ((v, 1.0),), ((v, -1.0),)])
        >>> effect_plus = ((lp[1, :, 0] - lp[1, :, 1]) - (lp[0, :, 0] - lp[0, :, 1])).mean()
    """
    from workbench.data.pairs import check_pairs

    pairs = check_pairs(pairs)
    prompts, answers = prompts_and_answers(model, pairs, system_prompt, append_end_of_turn=append_end_of_turn)
    items = tokenize_items(model, prompts, answers, max_length)
    lp = answer_logprobs(model, items, conditions, batch_size=batch_size, precision=precision, runner=runner,
                         progress=progress)
    return lp.view(len(conditions), len(pairs), 2), items.answer_lengths().view(len(pairs), 2)


def preference_logodds(model: Model, pairs: Sequence[object], conditions: Sequence[Condition],
                       **kwargs: object) -> Float[Tensor, "n_conditions n_pairs"]:
    """``log p(matching) - log p(not_matching)`` of every pair under each condition (``preference_logprobs``).

    Example:
        >>> lo = preference_logodds(model, test_pairs, [(), ((v, -1.0),), ((v, 1.0),)])
        >>> effect_plus = (lo[2] - lo[0]).mean()
    """
    lp, _ = preference_logprobs(model, pairs, conditions, **kwargs)
    return lp[..., 0] - lp[..., 1]


# =========================================================================== training cache
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
            batch_size: items per forward pass (length-sorted; larger batches pad more: 8 measured fastest).
            dtype: storage dtype of the cached residuals (default ``runner``'s dtype).
        """
        from tqdm.auto import tqdm

        _check_positions(model)
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
        if is_bridge(model):  # nothing to cache but the reference: every step runs the full forward
            for idx in _batches(items, batch_size) if ref is not None else ():
                batch = _assemble(model, items, idx)
                ref[batch.idx.to(dev)] = _full_readout(runner, batch, []).logprobs(model, len(batch.owner)).view(-1, k)
            empty = torch.empty(0, model.cfg.d_model, dtype=dtype, device=dev)
            return cls(hook_name, start, items, empty, torch.zeros(n + 1, dtype=torch.long), empty,
                       torch.zeros(items.n_answers + 1, dtype=torch.long), ref, k)
        for idx in tqdm(_batches(items, batch_size), desc="prefix cache", disable=not progress, leave=False):
            batch = _assemble(model, items, idx)
            x_p, x_a = _Stream(model, batch).at(start)
            if ref is not None:
                r_p, r_a = _run_blocks(runner, start, model.cfg.n_layers, x_p, x_a, batch)
                lp = _readout(r_p, r_a, batch).logprobs(model, len(batch.owner)).view(-1, k)
                ref[batch.idx.to(dev)] = lp.to(dev)
            for j, i in enumerate(batch.idx.tolist()):
                p_res[i] = x_p[j, : len(items.prompts[i])].to(dtype)
            for j, a in enumerate(batch.answer_idx.tolist()):
                a_res[a] = x_a[j, : int(a_len[a])].to(dtype)
        offsets = lambda seqs: torch.tensor([0, *(len(t) for t in seqs)]).cumsum(0)  # noqa: E731
        return cls(hook_name, start, items, torch.cat(p_res), offsets(items.prompts), torch.cat(a_res),
                   offsets(items.answers), ref, k)

    def _gather(self, flat: Tensor, offsets: Tensor, rows: Tensor) -> Tensor:
        """Right-padded ``(len(rows), n_max, d)`` copy of ragged rows (padding repeats the last row)."""
        start, length = offsets[rows], offsets[rows + 1] - offsets[rows]
        pos = torch.arange(int(length.max()))
        index = start[:, None] + torch.minimum(pos[None, :], length[:, None] - 1)
        return flat[index.to(flat.device)]

    def logprobs(self, runner: Model, index: Sequence[int] | Tensor, delta: Tensor | None = None, *,
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
        batch = _assemble(head, self.items, rows.tolist())
        a_rows = batch.answer_idx
        if is_bridge(runner):
            readout = _full_readout(runner, batch, [] if delta is None else [(self.hook_name, delta)])
            return readout.logprobs(head, len(a_rows)).view(len(rows), self.n_answers)
        x_p = self._gather(self.prompt_resid, self.prompt_offsets, rows)
        x_a = self._gather(self.answer_resid, self.answer_offsets, a_rows)
        deltas = [] if delta is None else [(self.hook_name, delta)]
        r_p, r_a = _apply(head, runner, (x_p, x_a), self.start, deltas, batch)
        return _readout(r_p, r_a, batch).logprobs(head, len(a_rows)).view(len(rows), self.n_answers)


    @torch.no_grad()
    def score(self, runner: Model, delta: Tensor | None = None, *, batch_size: int = 16,
              unembed_model: Model | None = None) -> Float[Tensor, "n_items k"]:
        """``logprobs`` of every item in length-sorted batches (no gradient), on the model's device."""
        out = None
        for idx in _batches(self.items, batch_size):
            lp = self.logprobs(runner, idx, delta, unembed_model=unembed_model)
            out = lp.new_empty(len(self), self.n_answers) if out is None else out
            out[torch.as_tensor(idx, device=lp.device)] = lp
        return out


# =========================================================================== convenience
@torch.no_grad()
def score_completions(model: Model, prompts: Sequence[str], answers: Sequence[str],
                      batch_size: int = 16, per_token: bool = False,
                      max_length: int | None = None) -> Float[Tensor, " n"]:
    """Unsteered ``log p(answer | prompt)`` of each (prompt, answer) row (mean per token with ``per_token``)."""
    items = tokenize_items(model, list(prompts), [[a] for a in answers], max_length)
    lp = answer_logprobs(model, items, [()], batch_size=batch_size)[0]
    return lp / items.answer_lengths().to(lp.dtype) if per_token else lp
