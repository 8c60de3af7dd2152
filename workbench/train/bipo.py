"""BiPO: bi-directional preference optimization of a steering vector (Cao et al. 2024, arXiv 2406.00045).

For a pair (question q, matching answer r_T, not-matching answer r_O) and a vector v added at every
position of one hook point of a frozen model, with d drawn from {-1, +1}:

    loss = -log sigmoid( beta * d * ( [log p(r_T | q, +d v) - log p_ref(r_T | q)]
                                    - [log p(r_O | q, +d v) - log p_ref(r_O | q)] ) )

``log p`` sums the answer tokens' log-probs (each answer ends with the end-of-turn token), the prompt
is the chat template around q with BiPO's system prompt, and ``p_ref`` is the unsteered model. As in
the official code, d is drawn once per batch (``direction="batch"``; ``"example"`` draws it per pair)
and the optimiser is AdamW on v alone with a cosine schedule after a linear warm-up.

This module holds BiPO's part only: its loss (``bipo_loss``), the draw of d, its config and the
``BIPO`` objective. Training runs on the general preference trainer
(``workbench.train.trainer.train_preference_vector``: the exact fast path through a prefix cache, bf16,
checkpoints and resume), which RePS (``workbench.train.reps``) shares with a different objective.

Defaults. The official run (Llama-2-7b-chat, layer 15 of 32, residual norm ~tens) used lr 5e-4,
batch 4, beta 0.1, 100 warm-up steps, cosine decay and 20 epochs; its script declares weight decay
0.05 but never passes it to the trainer, so it trained with 0. SmolLM2-135M's residual stream is
much larger (norm ~400 at layer 14), so a vector of useful size needs a larger learning rate:
the defaults here (lr 5e-2, 5 epochs, 10 warm-up steps, layer 14 ``resid_post``) are the measured
choice for the embedded model, see ``DEFAULTS_NOTE``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from workbench.core.backend import Model
# BiPOResult (the trainer's result, alias kept for one release) and batch_plan, lr_factor (for
# bench/bipo_speed.py) are re-exported from the trainer, where they live
from workbench.train.trainer import (BiPOResult, Objective, Score, TrainConfig, TrainResult,  # noqa: F401
                                     batch_plan, lr_factor, train_preference_vector)


@dataclass(frozen=True)
class BiPOConfig(TrainConfig):
    """Hyperparameters of a BiPO run (the official values in brackets; the shared ones in ``TrainConfig``)."""

    beta: float = 0.1  # DPO temperature [0.1]
    direction: Literal["batch", "example"] = "batch"  # one d per batch [batch] or per pair

    _options: ClassVar[dict[str, tuple[str, ...]]] = {"direction": ("batch", "example"), **TrainConfig._options}

    def _checks(self) -> dict[str, bool]:
        return {"beta": self.beta > 0}


def bipo_loss(policy_matching: Float[Tensor, " b"], policy_not: Float[Tensor, " b"],
              ref_matching: Float[Tensor, " b"], ref_not: Float[Tensor, " b"],
              direction: Float[Tensor, " b"] | float, beta: float) -> tuple[Tensor, Tensor]:
    """Per-pair BiPO loss and the d-signed reward margin ``beta * d * (dlogp_T - dlogp_O)``.

    Returns:
        ``(losses, margins)``, both ``(b,)``; ``losses = -logsigmoid(margins)``. A pair is "won" when
        its margin is positive.
    """
    margins = beta * direction * ((policy_matching - ref_matching) - (policy_not - ref_not))
    return -F.logsigmoid(margins), margins



def draw_directions(config: BiPOConfig, b: int, generator: torch.Generator) -> Tensor:
    """``(b,)`` directions in {-1, +1}: one draw for the batch or one per pair."""
    n = 1 if config.direction == "batch" else b
    d = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    return d.expand(b) if n == 1 else d



def _bipo_batch(score: Score, ref: Tensor, lengths: Tensor, v: Tensor, gen: torch.Generator,
                config: BiPOConfig) -> tuple[Tensor, dict[str, Tensor]]:
    d = draw_directions(config, len(ref), gen).to(v.device)  # (b,) in {-1, +1}, drawn on the CPU generator
    lp = score(d[0] * v if config.direction == "batch" else d[:, None] * v)  # (b, 2)
    losses, margins = bipo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], d, config.beta)
    return losses, {"margin": margins, "direction": d}


def _bipo_signed(lp: Tensor, ref: Tensor, lengths: Tensor, sign: float, config: BiPOConfig) -> tuple[Tensor, Tensor]:
    return bipo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], sign, config.beta)


BIPO = Objective("bipo", "BiPO", _bipo_batch, _bipo_signed)


def train_bipo(model: Model, pairs: Sequence[Any], config: BiPOConfig = BiPOConfig(), *,
               checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
               eval_pairs: Sequence[Any] | None = None,
               callback: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a BiPO steering vector on preference pairs.

    Args:
        model: a frozen ``HookedTransformer``; it is not modified (hooks are removed, a bf16 run
            uses a copy).
        pairs: ``workbench.data.formats.PreferencePair`` objects (anything with ``question``, ``matching``,
            ``not_matching`` strings).
        config: hyperparameters (``BiPOConfig``).
        checkpoint_dir: if given, a checkpoint (vector, AdamW state, RNG state, history) is written
            there after every epoch, and each epoch's vector under ``vectors/epoch_{e}``.
        resume: continue from the checkpoint in ``checkpoint_dir`` (same config and data); the
            result equals an uninterrupted run.
        progress: show a tqdm bar.
        eval_pairs: held-out pairs scored at +v and -v after every epoch (``eval_*`` in ``epochs``).
        callback: called with each epoch record after its checkpoint is written (e.g. live plots).

    Returns:
        ``TrainResult`` with the ``SteeringVector`` (method ``"bipo"``), per-step ``history`` and
        per-epoch ``epochs``.

    Example:
        >>> from workbench.data.behaviors import load_behavior
        >>> result = train_bipo(model, load_behavior("power-seeking"), BiPOConfig(layer=14))
        >>> result.vector.save("runs/power-seeking-bipo")
    """
    return train_preference_vector(model, pairs, config, BIPO, checkpoint_dir=checkpoint_dir, resume=resume,
                                   progress=progress, eval_pairs=eval_pairs, callback=callback)


__all__ = ["BIPO", "BiPOConfig", "BiPOResult", "bipo_loss", "draw_directions", "train_bipo"]
