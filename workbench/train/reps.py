"""RePS: reference-free preference steering of a steering vector (Wu et al. 2025, "Improved
Representation Steering for Language Models", arXiv 2505.20809; AxBench's line of work).

RePS is a bidirectional, SimPO-like objective: steering with the vector should make the matching
answer likelier than the not-matching one *per token*, and steering against it the reverse, with no
reference model inside the sigmoid (only as a weight). For a pair (prompt x, matching answer y_T,
not-matching answer y_O), with ``lp_s(y) = log p(y | x, h + s v)`` summed over y's tokens, ``|y|``
its token count and ``lp_0`` the unsteered model's summed log-prob:

    Delta+ = w+ * lp_{+a}(y_T) / |y_T|  -  lp_{+a}(y_O) / |y_O|,   w+ = max(lp_0(y_O) - lp_0(y_T), 1)
    Delta- = w- * lp_{-a}(y_O) / |y_O|  -  lp_{-a}(y_T) / |y_T|,   w- = max(lp_0(y_T) - lp_0(y_O), 1)
    loss   = ( -log sigmoid(Delta+)  -  log sigmoid(Delta-) ) / 2

The weight ``w`` (the paper's beta+/beta-) up-weights the winning answer's likelihood where the
unsteered model finds it unlikely; there is no temperature and no SimPO margin.

Where workbench's setting differs from the paper's, and what was chosen:

- **Data.** The paper's tuples are (instruction, original response y, concept-steered response y_c);
  here y_c is the matching answer and y the not-matching one, and both terms use the same chat
  prompt (BiPO's system prompt). AxBench's suppression term adds a concept-eliciting instruction;
  workbench pairs have none.
- **Interventions.** Positive steering adds ``a v`` at every position of one hook point, ``a``
  drawn once per batch from ``RePSConfig.factors`` (AxBench samples a steering factor per example
  from a list; the default here is ``(1.0,)``, the scale workbench evaluates at). The paper's
  suppression intervention for a steering vector (its "null" intervention; in the reference code
  the vector scaled by its own learned scalar and subtracted) has no counterpart for one bare
  vector, and removing v altogether would give the negative term no gradient, so the negative term
  is scored at ``h - a v`` (the same ``a``): the negative multiplier workbench evaluates.
- **Both terms every step**, as the paper's objective sums them; the loss is their mean (half the
  paper's sum: the same minimiser, and AdamW's step does not depend on the factor beyond its eps),
  so that it is on the scale of the held-out ``eval_loss`` (the mean over +v and -v).
- **Length normalisation** divides each summed log-prob by its answer's token count, end-of-turn
  token included (the paper's 1/|y|; the reference code divides by the whole sequence's unpadded
  length, prompt included). The weights use the summed unsteered log-probs, as the reference code
  does, with its scaler on their difference at 1.
- **Optimiser and defaults** are BiPO's (``workbench.train.trainer.TrainConfig``: AdamW on v alone, linear
  warm-up then cosine decay, lr 5e-2, 5 epochs at layer 14 ``resid_post``); they were not tuned for
  RePS.

Training runs on the preference trainer BiPO also uses (``workbench.train.trainer.train_preference_vector``): the prefix
cache, the exact fast path, bf16, checkpoints and resume are the same; only the per-batch loss
differs, and each step scores the batch twice (at +a v and -a v) where BiPO scores it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from workbench.core.backend import Model
from workbench.train.trainer import Objective, Score, TrainConfig, TrainResult, train_preference_vector


@dataclass(frozen=True)
class RePSConfig(TrainConfig):
    """Hyperparameters of a RePS run: ``TrainConfig``'s (BiPO's defaults) and the steering factors."""

    factors: tuple[float, ...] = (1.0,)  # positive steering factors a, one drawn per batch

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))  # JSON gives a list
        super().__post_init__()

    def _checks(self) -> dict[str, bool]:
        return {"factors": bool(self.factors) and all(math.isfinite(f) and f > 0 for f in self.factors)}


def reps_loss(policy_win: Float[Tensor, " b"], policy_lose: Float[Tensor, " b"],
              len_win: Float[Tensor, " b"], len_lose: Float[Tensor, " b"],
              ref_win: Float[Tensor, " b"], ref_lose: Float[Tensor, " b"]) -> tuple[Tensor, Tensor]:
    """One RePS term per pair: ``-logsigmoid(margin)`` and the margin.

    ``margin = max(ref_lose - ref_win, 1) * policy_win / len_win - policy_lose / len_lose``, with
    summed log-probs (``policy_*`` under the intervention, ``ref_*`` unsteered) and token counts.

    Returns:
        ``(losses, margins)``, both ``(b,)``; a pair is won when its margin is positive.
    """
    weight = (ref_lose - ref_win).clamp(min=1.0)  # (b,), constant in v
    margins = weight * policy_win / len_win - policy_lose / len_lose
    return -F.logsigmoid(margins), margins


def _reps_signed(lp: Tensor, ref: Tensor, lengths: Tensor, sign: float, config: RePSConfig) -> tuple[Tensor, Tensor]:
    """The positive term (``sign > 0``: the matching answer wins) or the negative one (it loses)."""
    win, lose = (0, 1) if sign > 0 else (1, 0)
    return reps_loss(lp[:, win], lp[:, lose], lengths[:, win], lengths[:, lose], ref[:, win], ref[:, lose])


def _reps_batch(score: Score, ref: Tensor, lengths: Tensor, v: Tensor, gen: torch.Generator,
                config: RePSConfig) -> tuple[Tensor, dict[str, Tensor]]:
    a = config.factors[int(torch.randint(len(config.factors), (1,), generator=gen))]
    plus, m_plus = _reps_signed(score(a * v), ref, lengths, 1.0, config)  # (b,) each
    minus, m_minus = _reps_signed(score(-a * v), ref, lengths, -1.0, config)
    return (plus + minus) / 2, {"margin": torch.stack([m_plus, m_minus], 1), "margin_plus": m_plus,
                                "margin_minus": m_minus, "factor": v.new_tensor(a)}


REPS = Objective("reps", "RePS", _reps_batch, _reps_signed)


def train_reps(model: Model, pairs: Sequence[Any], config: RePSConfig = RePSConfig(), *,
               checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
               eval_pairs: Sequence[Any] | None = None,
               callback: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a RePS steering vector on preference pairs; the arguments are ``train_bipo``'s.

    The ``TrainResult``'s vector has method ``"reps"``; each ``history`` record adds the two terms'
    margins (``margin_plus``, ``margin_minus``) and the drawn ``factor``. For example
    ``train_reps(model, load_behavior("power-seeking"), RePSConfig(layer=14)).vector.save("runs/reps")``.
    """
    return train_preference_vector(model, pairs, config, REPS, checkpoint_dir=checkpoint_dir, resume=resume,
                                   progress=progress, eval_pairs=eval_pairs, callback=callback)


__all__ = ["REPS", "RePSConfig", "reps_loss", "train_reps"]
