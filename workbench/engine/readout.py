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


def unembed(model: Model, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
    """fp32 logits of final residuals ``h`` (before ``ln_final``): ``ln_final``, ``W_U``, ``b_U``, soft cap.

    Only the given rows are unembedded (answer-only unembedding); ``model`` (the caller's model, in
    its own dtype) unembeds whatever dtype ran the blocks.
    """
    h = model.ln_final(h.to(model.cfg.dtype).unsqueeze(0)).squeeze(0)
    b_U = getattr(model, "b_U", None)
    if b_U is not None and model.cfg.dtype == torch.float32:
        logits = torch.addmm(b_U, h, model.W_U)  # (n, d_vocab); the bias added in the matmul, not a pass more
    else:
        logits = (h @ model.W_U).float()
        if b_U is not None:
            logits = logits + b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def token_logprobs(model: Model, h: Float[Tensor, "n d_model"],
                   targets: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """fp32 ``log p(targets[i])`` predicted from final residual row ``h[i]``."""
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

    def logprobs(self, model: Model, n_answers: int) -> Float[Tensor, " n_answers"]:
        """Summed fp32 log-prob of each answer's tokens."""
        lp = token_logprobs(model, self.h, self.targets)
        return torch.zeros(n_answers, dtype=lp.dtype, device=lp.device).index_add(0, self.answer, lp)

