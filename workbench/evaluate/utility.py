"""Utility under steering: where does adding ``m * v`` start to break the model?

BiPO (Cao et al. 2024, arXiv 2406.00045) claims steering with little loss of general ability. Two
offline measures on neutral prose (``workbench/data/neutral.txt``, written for this project) show
where that stops being true as ``|m|`` grows:

* perplexity of the text under the steered model (token-weighted over all passages);
* agreement with the unsteered model: the share of positions whose top-1 next token is unchanged,
  and the mean KL divergence per position **from the unsteered distribution to the steered one**,
  ``KL(p_unsteered || p_steered) = sum_v p_unsteered(v) (log p_unsteered(v) - log p_steered(v))``
  (``kl_unsteered_to_steered``; the measure ``kl_from_unsteered`` and the column ``kl_sum``). The
  expectation is under the unsteered model: how surprised the steered model is by what the model
  would have said. ``workbench.analysis.logit_lens``'s ``kl`` is the other direction,
  ``KL(p_steered || p_unsteered)``; the two are not interchangeable.

``utility_curve`` returns an ``eval`` result (``workbench.core.results``) with one table per measure,
named as ``evaluate_vectors`` names them (``utility_tables``); ``utility_per_text`` and
``summarize_utility`` return DataFrames.

The vector is added at every position. Full-vocabulary distributions are computed in chunks of
positions, never for the whole batch at once, in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.core.backend import Model
from workbench.core.results import Result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import load_neutral_text
from workbench.engine.conditions import VectorSpec, label_vectors, sweep_conditions
from workbench.engine.items import Items
from workbench.engine.readout import Scratch, log_softmax_, unembed
from workbench.engine.runners import Precision
from workbench.engine.scoring import run_conditions
from workbench.evaluate.preference import curve_result
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS, bootstrap_interval, check_multipliers

#: The measures of ``summarize_utility``; ``kl_from_unsteered`` is KL(unsteered || steered).
MEASURES = ("perplexity", "top1_agreement", "kl_from_unsteered")


def kl_unsteered_to_steered(unsteered: Float[Tensor, "n d_vocab"],
                            steered: Float[Tensor, "n d_vocab"]) -> Float[Tensor, " n"]:
    """``KL(p_unsteered || p_steered)`` per row, from log-probabilities (clamped at 0 against rounding).

    Args:
        unsteered: log-probs of the unsteered model (the reference; the expectation is under it).
        steered: log-probs of the steered model at the same positions.
    """
    return (unsteered.exp() * (unsteered - steered)).sum(-1).clamp_min(0)


def _reference_chunk(model: Model, h: Tensor) -> tuple[Tensor, Tensor]:
    """The unsteered log-probs ``(n, d_vocab)`` fp32 of final residuals ``h`` and their top-1 tokens."""
    lp = unembed(model, h).log_softmax(-1)
    return lp, lp.argmax(-1)


def _chunk_stats(model: Model, h: Tensor | None, targets: Tensor, ref: tuple[Tensor, Tensor],
                 scratch: Scratch | None = None) -> Tensor:
    """``(n, 3)`` float64 on the CPU: NLL of ``targets``, top-1 agreement with the unsteered model and
    ``kl_unsteered_to_steered`` at the rows ``h`` (``None``: the unsteered rows ``ref`` themselves: KL 0).

    The KL is ``kl_unsteered_to_steered``'s bit for bit (``-((lp - ref) * p).sum()``: the same products
    and sum), computed in place in the steered log-probs instead of three full-vocabulary temporaries;
    ``scratch``: those log-probs and ``exp(ref)`` live in its two buffers (``workbench.engine.readout.Scratch``).
    """
    ref_lp, ref_top = ref
    lp = ref_lp if h is None else log_softmax_(unembed(model, h, scratch))  # (n, d_vocab)
    nll = -lp.gather(1, targets[:, None].to(lp.device)).squeeze(1)
    agree = lp.argmax(-1) == ref_top
    if h is None:
        kl = torch.zeros_like(nll)
    else:  # lp is this call's own: overwritten
        p = ref_lp.exp() if scratch is None else torch.exp(ref_lp, out=scratch.rows(*ref_lp.shape, ref_lp, slot=1))
        kl = lp.sub_(ref_lp).mul_(p).sum(-1).neg_().clamp_min(0)
    return torch.stack([nll.double(), agree.double(), kl.double()], 1).cpu()


def _tokenize_texts(model: Model, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    tok = model.tokenizer
    bos = tok.bos_token_id if model.cfg.default_prepend_bos else None
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"texts[{i}] is empty or not a string")
        ids = list(tok(t, add_special_tokens=False)["input_ids"])
        ids = ([bos] if bos is not None else []) + ids
        if len(ids) < 2:
            raise ValueError(f"texts[{i}] {t[:40]!r} has fewer than 2 tokens; nothing to predict")
        out.append(ids[:max_tokens])
    return out


def check_texts(texts: Sequence[str] | None) -> list[str]:
    """The passages for a utility measurement (None: the embedded neutral text); empty is an error."""
    texts = load_neutral_text() if texts is None else list(texts)
    if not texts:
        raise ValueError("texts is empty: need at least one passage of neutral text")
    return texts


def utility_per_text(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec],
                     texts: Sequence[str] | None = None, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                     max_tokens: int = 128, batch_size: int = 8, precision: Precision = "fp32",
                     chunk: int = 256, progress: bool = True) -> pd.DataFrame:
    """Per passage and multiplier: summed NLL, top-1 agreements and summed KL over predicted tokens.

    Args:
        model: the model (unchanged by the call).
        vectors: a vector, a list applied together, or ``{label: vector(s)}``.
        texts: passages (default: ``workbench.data.load_neutral_text()``).
        multipliers: the ``m`` of ``m * v``.
        max_tokens: each passage is cut to this many tokens.
        batch_size: passages per forward pass.
        precision: ``"bf16"`` runs the blocks after the vector in a bf16 copy.
        chunk: positions per full-vocabulary log-softmax.
        progress: show a progress bar.

    Returns:
        One row per (vector, multiplier, text): ``n_tokens, nll_sum, agree_sum, kl_sum`` (``kl_sum``:
        summed ``KL(p_unsteered || p_steered)``, ``kl_unsteered_to_steered``).
    """
    texts = check_texts(texts)
    return _utility_per_text(model, label_vectors(vectors, model), texts, check_multipliers(multipliers),
                             max_tokens=max_tokens, batch_size=batch_size, precision=precision, chunk=chunk,
                             progress=progress)


@torch.no_grad()
def _utility_per_text(model: Model, specs: Mapping[str, list[SteeringVector]], texts: list[str],
                      mults: Sequence[float], *, max_tokens: int = 128, batch_size: int = 8,
                      precision: Precision = "fp32", chunk: int = 256, progress: bool = True,
                      runner: Model | None = None) -> pd.DataFrame:
    """``utility_per_text`` on checked input; ``runner`` is a runner shared across metrics."""
    ids = _tokenize_texts(model, texts, max_tokens)
    items = Items.from_ids([r[:1] for r in ids], [[r[1:]] for r in ids])  # the first token predicts the rest
    # per label: the unsteered condition first (the reference distribution), then each multiplier
    conds, keys = sweep_conditions(specs, [0.0] + [m for m in mults if m != 0])
    ref_of = {label: keys.index((label, 0.0)) for label in specs}
    n = len(ids)
    acc = torch.zeros(len(conds), n, 3, dtype=torch.float64)  # nll, agree, kl
    n_pred = torch.tensor([len(r) - 1 for r in ids])
    scratch = Scratch()
    for idx, _, readouts in run_conditions(model, items, conds, batch_size=batch_size, precision=precision,
                                           runner=runner, progress=progress, desc="utility"):
        n_rows = len(readouts[0].targets)
        stats = torch.zeros(len(conds), n_rows, 3, dtype=torch.float64)
        for s in range(0, n_rows, chunk):  # each label's unsteered chunk once for all of its conditions
            sl = slice(s, s + chunk)
            refs = {id(readouts[c]): readouts[c] for c in ref_of.values()}  # equal conditions: one readout
            refs = {k: _reference_chunk(model, r.h[sl]) for k, r in refs.items()}
            for c, (label, _) in enumerate(keys):
                r, ref_r = readouts[c], readouts[ref_of[label]]
                stats[c, sl] = _chunk_stats(model, None if ref_r is r else r.h[sl], r.targets[sl], refs[id(ref_r)],
                                            scratch)
        for c, r in enumerate(readouts):
            acc[c, idx] = torch.zeros(len(idx), 3, dtype=torch.float64).index_add(0, r.answer.cpu(), stats[c])
    frames = []
    for label in specs:
        for m in mults:
            v = acc[keys.index((label, float(m)))].numpy()
            frames.append(pd.DataFrame({"vector": label, "multiplier": m, "text": np.arange(n),
                                        "n_tokens": n_pred.numpy(), "nll_sum": v[:, 0], "agree_sum": v[:, 1],
                                        "kl_sum": v[:, 2]}))
    return pd.concat(frames, ignore_index=True)


class NeutralReference:
    """The unsteered model on tokenised neutral passages, kept for the many utility passes of one comparison.

    ``utility_passes`` fills it on its first pass (the unsteered condition runs in that pass, beside the
    steered ones, exactly as ``_utility_per_text`` runs it) and reads it on every later pass, which
    then runs only the steered conditions: per engine batch and chunk of positions, the unsteered
    log-probs (fp32) and top-1 tokens, and per passage the unsteered ``nll_sum``/``agree_sum``/``kl_sum``.
    Later passes also reuse each batch's unsteered residual stream where the vectors enter (``streams``),
    so the blocks below them run once per comparison. Memory: ``n_predicted_tokens * d_vocab`` fp32
    values (16 passages of 64 tokens on a 49k vocabulary: about 200 MB), plus ``n_tokens * d_model`` per
    cached layer.
    """

    def __init__(self, model: Model, texts: Sequence[str], max_tokens: int = 128) -> None:
        self.ids = _tokenize_texts(model, texts, max_tokens)
        self.items = Items.from_ids([r[:1] for r in self.ids], [[r[1:]] for r in self.ids])
        self.n_pred = torch.tensor([len(r) - 1 for r in self.ids])
        self.chunks: dict[tuple[int, ...], list[tuple[Tensor, Tensor]]] = {}  # batch -> [(log-probs, top-1)]
        self.base: Tensor | None = None  # (n_texts, 3) nll, agree, kl of the unsteered model
        self.streams: dict = {}  # batch -> its unsteered residual stream (the blocks below the vectors, once)
        self.n_passes = 0  # engine passes over the passages so far

    @property
    def filled(self) -> bool:
        return self.base is not None


@torch.no_grad()
def utility_passes(model: Model, reference: NeutralReference, wanted: Sequence[tuple[SteeringVector, float]], *,
                   batch_size: int = 8, precision: Precision = "fp32", chunk: int = 256,
                   runner: Model | None = None) -> Float[Tensor, "n_wanted n_texts 3"]:
    """Summed NLL, top-1 agreements and ``KL(p_unsteered || p_steered)`` per passage for each ``(vector, m)``.

    One engine pass over ``reference``'s passages scores every wanted condition (the prefix below the
    vectors shared); the unsteered log-probs come from ``reference`` (filled by the first call), so a
    later call runs no unsteered condition. The numbers are those of ``utility_per_text`` at the same
    multiplier, bit for bit (same batches, chunks and order of operations). Vectors are checked
    against the model by the engine. Returns ``(len(wanted), n_texts, 3)`` float64 on the CPU;
    ``reference.base`` holds the unsteered row.
    """
    conds = [((v, float(m)),) for v, m in wanted]
    first = not reference.filled
    if first:
        conds = [()] + conds
    n = len(reference.ids)
    acc = torch.zeros(len(conds), n, 3, dtype=torch.float64)
    scratch = Scratch()
    for idx, _, readouts in run_conditions(model, reference.items, conds, batch_size=batch_size,
                                           precision=precision, runner=runner, streams=reference.streams):
        key = tuple(idx.tolist())
        if first:
            ref_r = readouts[0]
            reference.chunks[key] = [_reference_chunk(model, ref_r.h[s: s + chunk])
                                     for s in range(0, len(ref_r.targets), chunk)]
        refs = reference.chunks[key]
        for c, r in enumerate(readouts):
            stats = torch.zeros(len(r.targets), 3, dtype=torch.float64)
            for k, s in enumerate(range(0, len(r.targets), chunk)):
                sl = slice(s, s + chunk)
                stats[sl] = _chunk_stats(model, None if first and c == 0 else r.h[sl], r.targets[sl], refs[k],
                                         scratch)
            acc[c, idx] = torch.zeros(len(idx), 3, dtype=torch.float64).index_add(0, r.answer.cpu(), stats)
    reference.n_passes += 1
    if first:
        reference.base, acc = acc[0], acc[1:]
    return acc


def _ratio_ci(num: np.ndarray, den: np.ndarray, transform: Any, n_boot: int, seed: int) -> tuple[float, float]:
    """Bootstrap interval (over texts) of ``transform(sum(num) / sum(den))`` (``statistics.bootstrap_interval``)."""
    if len(num) < 2:
        v = float(transform(num.sum() / den.sum()))
        return v, v
    return bootstrap_interval(len(num), lambda idx: transform(num[idx].sum(1) / den[idx].sum(1)), n_boot=n_boot,
                              seed=seed)


def summarize_utility(per_text: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``utility_per_text`` -> tidy rows ``vector, multiplier, measure, n, n_tokens, mean, ci_low, ci_high``.

    ``perplexity`` is ``exp(total NLL / total tokens)``; ``top1_agreement`` and ``kl_from_unsteered``
    (``KL(p_unsteered || p_steered)``) are token-weighted means; intervals resample passages.
    """
    rows = []
    for (label, m), g in per_text.groupby(["vector", "multiplier"], sort=False):
        den = g["n_tokens"].to_numpy(np.float64)
        for measure, col, fn in (("perplexity", "nll_sum", np.exp), ("top1_agreement", "agree_sum", np.asarray),
                                 ("kl_from_unsteered", "kl_sum", np.asarray)):
            num = g[col].to_numpy(np.float64)
            lo, hi = _ratio_ci(num, den, fn, n_boot, seed)
            rows.append({"vector": label, "multiplier": m, "measure": measure, "n": len(g),
                         "n_tokens": int(den.sum()), "mean": float(fn(num.sum() / den.sum())),
                         "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def utility_tables(per_text: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """``utility_per_text`` output -> one table per measure (``MEASURES``), named as in an eval result.

    Each table holds the rows of ``summarize_utility`` of its measure, without the ``measure`` column:
    ``vector, multiplier, n, n_tokens, mean, ci_low, ci_high``.
    """
    summary = summarize_utility(per_text, n_boot, seed)
    return {measure: g.drop(columns="measure").reset_index(drop=True)
            for measure, g in summary.groupby("measure", sort=False)}


#: KL(unsteered || steered) per token beyond which a multiplier's utility cost is flagged: past it the
#: steered model's next-token distribution is far from the model's own, and its other numbers (log-odds,
#: win rates) describe a broken model rather than a steered one
KL_BOUND = 2.0


def kl_beyond_bound(kl_table: Any, bound: float = KL_BOUND) -> list[dict[str, Any]]:
    """``[{"vector", "multiplier", "kl"}]`` of the rows of a ``kl_from_unsteered`` table whose mean exceeds ``bound``
    (nats per token), in table order; a NaN or infinite mean counts as beyond."""
    df = pd.DataFrame(kl_table)
    if df.empty:
        return []
    out = []
    for r in df.itertuples(index=False):
        kl = float(r.mean)
        if not kl <= bound:  # NaN and inf included
            out.append({"vector": str(r.vector), "multiplier": float(r.multiplier), "kl": kl})
    return out


def utility_curve(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec],
                  texts: Sequence[str] | None = None, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                  n_boot: int = 1000, seed: int = 0, **kwargs: Any) -> Result:
    """Perplexity, top-1 agreement and ``KL(unsteered || steered)`` per (vector, multiplier), as an ``eval`` result.

    Args: as ``utility_per_text``, plus ``n_boot`` and ``seed`` of the bootstrap intervals.

    Returns:
        ``{"kind": "eval", "model", "multipliers", "metrics": {"perplexity", "top1_agreement",
        "kl_from_unsteered"}}`` (``utility_tables``): the tables ``evaluate_vectors`` writes for its
        ``utility`` metric.

    Example:
        >>> u = utility_curve(model, {"bipo": v}, multipliers=[-4, -2, 0, 2, 4])
        >>> u.table("kl_from_unsteered")[["vector", "multiplier", "mean"]]
        >>> fig = plot(u, metric="perplexity")
    """
    texts, specs, mults = check_texts(texts), label_vectors(vectors, model), check_multipliers(multipliers)
    per_text = _utility_per_text(model, specs, texts, mults, **kwargs)
    return curve_result(model, mults, utility_tables(per_text, n_boot, seed))


__all__ = ["KL_BOUND", "MEASURES", "NeutralReference", "check_texts", "kl_beyond_bound", "kl_unsteered_to_steered", "summarize_utility", "utility_curve",
           "utility_passes", "utility_per_text", "utility_tables"]
