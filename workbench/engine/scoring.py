"""The scoring engine: log-probabilities of answers to prompts under steering conditions.

Everything in the workbench that scores text under a steering vector goes through this engine:
BiPO training (Cao et al. 2024, arXiv 2406.00045), log-odds curves, CAA's A/B probability
(Rimsky et al. 2023, arXiv 2312.06681), TruthfulQA MC1/MC2, utility (perplexity, KL), layer sweeps,
composition and transfer. One concept a module:

* ``workbench.engine.items``: *items* (a prompt with one or more answers), tokenised with the one
  truncation rule (prompts cut from the left by the most any of their answers needs; answers never).
* ``workbench.engine.conditions``: *conditions* (the vectors applied together, each with its
  multiplier; ``()`` is the unsteered model) and the block where each vector enters.
* ``workbench.engine.runners``: the model, or a laid-out or bf16 copy of its upper blocks, that runs
  the steered part.
* ``workbench.engine.forward``: one batch through the model, with prefix sharing (each block below a
  vector runs once for all conditions) and prompt sharing (each prompt runs once for all of its
  answers), and the plain full-forward path that a ``TransformerBridge`` uses and tests compare to.
* ``workbench.engine.packed``: the blocks of a batch on its real tokens only (no padding, each item's
  attention apart), where the blocks are the pre-norm rotary family and nothing is hooked into them;
  ``forward.run_blocks`` uses it there and TransformerLens' blocks elsewhere.
* ``workbench.engine.readout``: answer-only unembedding (``unembed``) in fp32.
* ``workbench.engine.prefix_cache``: BiPO's ``PrefixCache`` for many steps over the same items.
* here: ``run_conditions`` (the loop over batches and conditions) and the metrics built on it,
  ``answer_logprobs`` and the preference log-probs/log-odds.

The engine trusts its inputs: public entry points above it (``workbench.evaluate``,
``workbench.analysis``, ``workbench.train``) check pairs and vectors and turn them into items and
conditions; ``run_conditions`` checks each vector against the model once.

Every tensor the engine creates lives on the model's device; vectors are moved to the activation's
device and dtype where they are added.

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

from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from torch import Tensor

from workbench.core.backend import Model, is_bridge
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
from workbench.data.pairs import PreferencePair
from workbench.engine.conditions import Condition, condition_deltas, start_layer
from workbench.engine.forward import (Stream, apply_deltas, assemble, check_positions, full_readout, length_batches,
                                      read_answers)
from workbench.engine.items import Items, tokenize_items
from workbench.engine.readout import Readout, Scratch
from workbench.engine.runners import Precision, precision_runner


@torch.no_grad()
def run_conditions(model: Model, items: Items, conditions: Sequence[Condition], *,
                   batch_size: int = 16, precision: Precision = "fp32", runner: Model | None = None,
                   progress: bool = False, desc: str = "scoring",
                   streams: dict[tuple[int, ...], Stream] | None = None,
                   ) -> Iterator[tuple[Tensor, Tensor, list[Readout]]]:
    """For each batch: ``(item indices, answer indices, one Readout per condition)``.

    The engine behind every metric (module docstring). ``runner`` (or ``precision="bf16"``) runs
    the blocks where the conditions start and after; ``model`` runs the shared prefix and unembeds.
    Conditions that are equal (e.g. every label's multiplier 0) are run once. Every vector is
    checked against ``model`` once (``IncompatibleVectorError``); nothing below checks again.
    ``streams``: the unsteered residual streams of earlier calls on the same items and batch size, by
    batch (filled here), for a caller that scores the same items many times (a comparison's cost
    probes): the blocks below the vectors then run once for all calls.
    """
    check_positions(model)
    for v in {id(v): v for cond in conditions for v, _ in cond}.values():  # each vector once, not per condition
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
    for idx in tqdm(length_batches(items, batch_size), desc=desc, disable=not progress, leave=False):
        batch = assemble(model, items, idx)
        stream = None if bridge else Stream(model, batch)
        if stream is not None and streams is not None:
            stream = streams.setdefault(tuple(batch.idx.tolist()), stream)
        out: dict[int, Readout] = {}
        seen: dict[tuple, Readout] = {}
        for c in order:
            if keys[c] not in seen:
                seen[keys[c]] = (full_readout(runner, batch, deltas[c]) if stream is None else
                                 read_answers(*apply_deltas(model, runner, stream.at(starts[c]), starts[c], deltas[c],
                                                            batch), batch))
            out[c] = seen[keys[c]]
        yield batch.idx, batch.answer_idx, [out[c] for c in range(len(conditions))]


def answer_logprobs(model: Model, items: Items, conditions: Sequence[Condition], *,
                    batch_size: int = 16, precision: Precision = "fp32", runner: Model | None = None,
                    progress: bool = False) -> Float[Tensor, "n_conditions n_answers"]:
    """Summed fp32 log-prob of every answer under each condition (on the CPU)."""
    out = torch.empty(len(conditions), items.n_answers, dtype=torch.float32)
    scratch = Scratch()  # one logits buffer for every batch and condition
    for _, a_idx, readouts in run_conditions(model, items, conditions, batch_size=batch_size, precision=precision,
                                             runner=runner, progress=progress):
        for c, r in enumerate(readouts):
            out[c, a_idx] = r.logprobs(model, len(a_idx), scratch).cpu()
    return out


def preference_logprobs(model: Model, pairs: Sequence[PreferencePair], conditions: Sequence[Condition], *,
                        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, append_end_of_turn: bool = True,
                        max_length: int | None = 256, batch_size: int = 16, precision: Precision = "fp32",
                        runner: Model | None = None, progress: bool = False,
                        ) -> tuple[Float[Tensor, "n_conditions n_pairs 2"], Int[Tensor, "n_pairs 2"]]:
    """``log p(matching)`` and ``log p(not_matching)`` of every pair under each condition.

    The one definition of the preference metric: the chat prompt around the question
    (``workbench.core.prompts``), each answer closed by the end-of-turn string, prompts cut from the left
    beyond ``max_length`` tokens by the same amount for both answers. Log-odds are
    ``lp[..., 0] - lp[..., 1]``. ``pairs`` are trusted: the public entry points above the engine
    check them (``workbench.data.pairs.check_pairs``).

    Returns:
        ``(logprobs, n_tokens)``: ``(n_conditions, n_pairs, 2)`` fp32 and the answer token counts
        ``(n_pairs, 2)``.

    Example:
        >>> lp, _ = preference_logprobs(model, test_pairs, [(), ((v, 1.0),), ((v, -1.0),)])
        >>> effect_plus = ((lp[1, :, 0] - lp[1, :, 1]) - (lp[0, :, 0] - lp[0, :, 1])).mean()
    """
    prompts, answers = prompts_and_answers(model, pairs, system_prompt, append_end_of_turn=append_end_of_turn)
    items = tokenize_items(model, prompts, answers, max_length)
    lp = answer_logprobs(model, items, conditions, batch_size=batch_size, precision=precision, runner=runner,
                         progress=progress)
    return lp.view(len(conditions), len(pairs), 2), items.answer_lengths().view(len(pairs), 2)


def preference_logodds(model: Model, pairs: Sequence[PreferencePair], conditions: Sequence[Condition],
                       **kwargs: object) -> Float[Tensor, "n_conditions n_pairs"]:
    """``log p(matching) - log p(not_matching)`` of every pair under each condition (``preference_logprobs``).

    Example:
        >>> lo = preference_logodds(model, test_pairs, [(), ((v, -1.0),), ((v, 1.0),)])
        >>> effect_plus = (lo[2] - lo[0]).mean()
    """
    lp, _ = preference_logprobs(model, pairs, conditions, **kwargs)
    return lp[..., 0] - lp[..., 1]

