"""Answer-only unembedding: log-probs of answer tokens from final residuals, and the ``Readout``.

Every number the scoring engine returns is a log-probability of answer tokens. ``unembed`` is the
engine's one unembedding helper (TransformerLens' ``ln_final``, ``W_U``, ``b_U`` and the optional
logit soft cap, Gemma 2, arXiv 2408.00118), applied only to the rows that predict answer tokens and
always in fp32, whatever dtype ran the blocks. A ``Readout`` holds those rows for one batch under
one condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.backend import Model


class Scratch:
    """Reusable fp32 buffers for full-vocabulary rows (logits, log-probs) within one pass over many chunks.

    A ``(rows, d_vocab)`` temporary is tens to hundreds of MB: allocated afresh for every chunk, its pages are
    faulted in (and zeroed by the kernel) every time, which costs about as much as a sixth of the unembedding's
    matmul on CPU. A ``Scratch`` keeps each buffer (``slot``) from the first chunk on and hands out views of it;
    what it returns is overwritten by its next use of the same slot. Memory: the largest chunk of each slot.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, Tensor] = {}

    def rows(self, n: int, width: int, like: Tensor, slot: int = 0) -> Float[Tensor, "n width"]:
        """An uninitialised fp32 ``(n, width)`` view on ``like``'s device."""
        buf = self._buffers.get(slot)
        if buf is None or buf.numel() < n * width or buf.device != like.device:
            buf = self._buffers[slot] = torch.empty(n * width, dtype=torch.float32, device=like.device)
        return buf[: n * width].view(n, width)


def _recording(model: Model, h: Tensor) -> bool:
    """Whether autograd records the unembedding of ``h`` (then nothing is written in place)."""
    return torch.is_grad_enabled() and (h.requires_grad or model.W_U.requires_grad)


def unembed(model: Model, h: Float[Tensor, "n d_model"], scratch: Scratch | None = None) -> Float[Tensor, "n d_vocab"]:
    """fp32 logits of final residuals ``h`` (before ``ln_final``): ``ln_final``, ``W_U``, ``b_U``, soft cap.

    Only the given rows are unembedded (answer-only unembedding); ``model`` (the caller's model, in
    its own dtype) unembeds whatever dtype ran the blocks. ``scratch``: the logits are written into its slot 0
    (fp32 models without autograd recording; otherwise ignored), the same numbers.
    """
    h = model.ln_final(h.to(model.cfg.dtype).unsqueeze(0)).squeeze(0)
    b_U = getattr(model, "b_U", None)
    if b_U is not None and model.cfg.dtype == torch.float32:
        out = None
        if scratch is not None and not _recording(model, h):
            out = scratch.rows(len(h), model.W_U.shape[1], h)
        # the bias added in the matmul, not a pass more
        logits = torch.addmm(b_U, h, model.W_U) if out is None else torch.addmm(b_U, h, model.W_U, out=out)
    else:
        logits = (h @ model.W_U).float()
        if b_U is not None:
            logits = logits + b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def log_softmax_(logits: Float[Tensor, "n d_vocab"]) -> Float[Tensor, "n d_vocab"]:
    """``logits.log_softmax(-1)`` written over ``logits`` (the same kernel, the same numbers; no autograd)."""
    return torch._log_softmax(logits, -1, False, out=logits)


def token_logprobs(model: Model, h: Float[Tensor, "n d_model"],
                   targets: Int[Tensor, " n"], scratch: Scratch | None = None) -> Float[Tensor, " n"]:
    """fp32 ``log p(targets[i])`` predicted from final residual row ``h[i]``.

    ``scratch`` (where autograd is not recording): the logits and log-probs live in its buffer, the same
    numbers bit for bit.
    """
    if scratch is not None and not _recording(model, h):
        lp = log_softmax_(unembed(model, h, scratch))  # fp32, this call's own (scratch or fresh)
        return lp.gather(1, targets[:, None].to(lp.device)).squeeze(1)
    logits = unembed(model, h)
    # the fused log-softmax and gather (one pass over the vocabulary forward and backward)
    return -F.cross_entropy(logits, targets.to(logits.device), reduction="none")


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

    def logprobs(self, model: Model, n_answers: int, scratch: Scratch | None = None) -> Float[Tensor, " n_answers"]:
        """Summed fp32 log-prob of each answer's tokens (``scratch``: see ``token_logprobs``)."""
        lp = token_logprobs(model, self.h, self.targets, scratch)
        return torch.zeros(n_answers, dtype=lp.dtype, device=lp.device).index_add(0, self.answer, lp)

