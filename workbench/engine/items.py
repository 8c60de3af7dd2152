"""Items: prompts with their answers, tokenised with the engine's one truncation rule.

The unit of work of the scoring engine (``workbench.engine.scoring``) is an *item*: one prompt with
one or more answers (a preference pair of BiPO, Cao et al. 2024, arXiv 2406.00045, is a prompt with
two answers; a TruthfulQA question, Lin et al. 2021, arXiv 2109.07958, a prompt with all its choices;
a neutral passage its first token with the rest as the answer). ``tokenize_items`` encodes each part
on its own (exact boundary), prepends BOS when the model's config asks for it, and, with
``max_length``, cuts the prompt from the left by the most any of its answers needs (answers are
never cut), so all answers of an item are scored in the same context (``prompt_cut`` is that rule,
for every caller: the scorer, the trainer and the CAA/PCA/ActAdd baselines). ``tokenize_completions``
lays the same rows out as one right-padded batch (for the mean-difference baselines and the logit lens).

``forward_bytes`` estimates the memory a forward pass over a batch needs (its attention scores grow
with the square of the length), and ``check_forward_memory`` refuses a batch that needs more than the
machine has, before the pass runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from workbench.core.backend import Model

#: the engine's default token bound on prompt + answer (the scorer's, the trainer's and the baselines')
DEFAULT_MAX_LENGTH = 256


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


class AnswerTooLongError(ValueError):
    """An answer that does not fit in ``max_length`` tokens (answers are never cut).

    Attributes:
        index: the row of the answer (its position in the flattened ``(prompt, answer)`` rows:
            for items of two answers each, ``divmod(index, 2)`` is ``(item, answer)``).
        n_tokens: the answer's tokens.
        max_length: the limit it exceeds.

        where: what the answer is, for the message (``"data.jsonl:3, the matching answer"``); None:
            ``"answer {index}"``.
    """

    def __init__(self, index: int, n_tokens: int, max_length: int, where: str | None = None) -> None:
        what = where or f"answer {index}"
        super().__init__(f"{what} has {n_tokens} tokens, more than max_length={max_length}"
                         + (" (answers are never cut)" if where else ""))
        self.index, self.n_tokens, self.max_length, self.where = index, n_tokens, max_length, where

    def __reduce__(self) -> tuple[type, tuple[int, int, int, str | None]]:  # picklable (cells run in subprocesses)
        return type(self), (self.index, self.n_tokens, self.max_length, self.where)


def _encode(model: Model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_id(model: Model) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def prompt_cut(n_prompt: int, n_answer: int, max_length: int | None) -> int:
    """Prompt tokens to drop from the left so that ``n_prompt + n_answer <= max_length`` (the one rule).

    ``n_answer`` is 0 for a bare prompt (ActAdd). Answers are never cut: the caller refuses an answer
    that does not fit (``AnswerTooLongError``). ``max_length=None``: no bound, nothing is cut.
    """
    if max_length is None:
        return 0
    return min(n_prompt, max(0, n_prompt + n_answer - max_length))


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
            raise AnswerTooLongError(i, len(a_ids), max_length)
        encoded.append((p_ids, a_ids))
        cuts.append(prompt_cut(len(p_ids), len(a_ids), max_length))
    if groups is not None:
        most: dict[int, int] = {}
        for g, c in zip(groups, cuts):
            most[g] = max(most.get(g, 0), c)
        cuts = [most[g] for g in groups]
    return [(p_ids[min(cut, len(p_ids)):], a_ids) for (p_ids, a_ids), cut in zip(encoded, cuts)]


def encode_rows(model: Model, prompts: Sequence[str], answers: Sequence[str], max_length: int | None = None,
                groups: Sequence[int] | None = None) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, answer ids)`` of each row under the engine's rule (as ``tokenize_completions``), unpadded.

    For callers that tokenize everything first (to check lengths and memory before any forward pass)
    and batch later with ``pad_rows``.
    """
    return _encode_parts(model, prompts, answers, max_length, groups)


def pad_rows(model: Model, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> TokenizedBatch:
    """``(prompt ids, answer ids)`` rows as one right-padded ``TokenizedBatch``."""
    n = max(len(p) + len(a) for p, a in rows)
    tokens = torch.full((len(rows), n), pad_id(model), dtype=torch.long)
    attn = torch.zeros((len(rows), n), dtype=torch.long)
    ans = torch.zeros((len(rows), n), dtype=torch.bool)
    for i, (p, a) in enumerate(rows):
        tokens[i, : len(p) + len(a)] = torch.tensor([*p, *a])
        attn[i, : len(p) + len(a)] = 1
        ans[i, len(p): len(p) + len(a)] = True
    return TokenizedBatch(tokens, attn, ans, torch.tensor([len(p) for p, _ in rows]),
                          torch.tensor([len(p) + len(a) for p, a in rows]))


def tokenize_completions(model: Model, prompts: Sequence[str], answers: Sequence[str],
                         max_length: int | None = None, groups: Sequence[int] | None = None) -> TokenizedBatch:
    """Tokenize ``prompt + answer`` rows into one right-padded batch (exact boundary).

    A BOS token is prepended when the model's config asks for one (``default_prepend_bos``) and the
    prompt does not already start with it. Sequences longer than ``max_length`` lose prompt tokens
    from the left (answers are never cut; an answer longer than ``max_length`` is an error). Rows
    with the same ``groups`` id (e.g. the two answers of one preference pair) lose the same number
    of prompt tokens, the most any of them needs, so that they are scored in the same context.
    """
    return pad_rows(model, _encode_parts(model, prompts, answers, max_length, groups))


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



# --------------------------------------------------------------------------- memory
#: bytes per element of the dtypes a model runs in
_DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8}


def forward_bytes(cfg: Any, n_rows: int, n_pos: int) -> int:
    """Estimated peak bytes of one no-grad forward pass over ``n_rows`` sequences of ``n_pos`` tokens.

    Without gradients one block's intermediates are alive at a time, so the peak is one block's:
    ``n_rows * (3 * n_heads * n_pos**2 + n_pos * (6 * d_model + 3 * d_mlp)) * dtype bytes``: the
    attention scores, their masked copy and the softmax pattern (each ``rows x heads x pos x pos``:
    the term that grows with the square of the length), and a few residual-stream and MLP activations.
    Measured on the embedded model (SmolLM2-135M, fp32), the resident peak of a pass over 2 rows of
    2000 tokens was 2.5 times one ``rows x heads x pos x pos`` tensor; the factor 3 covers it.
    """
    bytes_per = _DTYPE_BYTES.get(getattr(cfg, "dtype", torch.float32), 4)
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    per_row = 3 * cfg.n_heads * n_pos * n_pos + n_pos * (6 * cfg.d_model + 3 * d_mlp)
    return int(n_rows * per_row * bytes_per)


def available_memory(device: str | torch.device | None = "cpu") -> int | None:
    """Bytes free for a forward pass on ``device``: the host's available memory (psutil, else
    ``/proc/meminfo``'s ``MemAvailable``) or a CUDA device's free memory plus what PyTorch holds
    unused; None where it cannot be read (then nothing is refused)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        except Exception:  # noqa: BLE001 -- no CUDA runtime: no estimate, no refusal
            return None
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class InputTooLargeError(ValueError):
    """A batch whose forward pass would need more memory than the machine has (refused before it runs)."""


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_forward_memory(model: Model, n_rows: int, n_pos: int, where: str, advice: str = "",
                         available: int | None = None) -> int:
    """Refuse, naming ``where``, a forward pass over ``n_rows x n_pos`` tokens that needs more than is free.

    Args:
        model: the model (its ``cfg`` sizes the estimate; its device says which memory is free).
        n_rows, n_pos: the batch's shape.
        where: what the batch holds, for the message (``"data.jsonl:7"``).
        advice: what to change, appended to the message.
        available: bytes free (None: ``available_memory`` of the model's device).

    Returns:
        The estimate ``forward_bytes`` in bytes.

    Raises:
        InputTooLargeError: the estimate exceeds the memory available.
    """
    need = forward_bytes(model.cfg, n_rows, n_pos)
    have = available_memory(getattr(model.cfg, "device", None)) if available is None else available
    if have is not None and need > have:
        raise InputTooLargeError(
            f"{where}: a forward pass over {n_rows} sequence(s) of {n_pos} tokens needs about {_gb(need)} "
            f"(rows x heads x tokens^2 attention scores), more than the {_gb(have)} available"
            + (f"; {advice}" if advice else ""))
    return need
