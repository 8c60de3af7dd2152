"""Preference metrics under steering: answer log-odds and CAA's A/B probability, over multipliers.

* **Log-odds** (BiPO, Cao et al. 2024, arXiv 2406.00045): for held-out pairs,
  ``log p(matching | prompt) - log p(not_matching | prompt)`` with summed answer-token log-probs
  (and per answer token), at each multiplier ``m`` of ``m * v``; ``summarize_logodds`` gives the mean
  with a bootstrap 95% interval and the win rate (share of pairs with log-odds > 0);
  ``steerability`` fits each pair's slope over ``m`` (Tan et al. 2024, arXiv 2407.12404) and reports
  the anti-steerable share (slope < 0) and the share of pairs moved by more than one nat, with
  bootstrap intervals; ``pair_steerability`` gives the per-pair slopes and shifts.
* **A/B probability** (CAA, Rimsky et al. 2023, arXiv 2312.06681): the question holds its choices
  inline, the answer starts with ``"("``, and ``p(matching letter)`` is normalised over the two letters.

Prompts are the chat template around the question with BiPO's system prompt; answers get the
end-of-turn token appended (BiPO's protocol). Both metrics are computed by the one scoring engine
(``workbench.engine.scoring``).

The curves ``logodds_curve`` and ``ab_curve`` return an ``eval`` result (``workbench.core.results``)
holding the tables ``evaluate_vectors`` writes for the metrics ``logodds`` (``logodds``,
``logodds_per_token``, ``steerability``: ``logodds_tables``) and ``ab``, so ``workbench.viz.plot``
draws them as it draws a saved evaluation; ``res.table("logodds")`` is the DataFrame. The per-pair
functions (``pair_logodds``, ``ab_pair_probs``) and the summaries (``summarize_logodds``,
``summarize_ab``, ``steerability``) return DataFrames.

Inputs are checked once, by the public functions (``check_pairs``, ``label_vectors``,
``check_multipliers``); the private ``_pair_logodds`` and ``_ab_pair_probs`` trust what they get
(``workbench.evaluate.suite.evaluate_vectors`` calls them with inputs it checked itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from workbench.core.backend import Model
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, format_chat
from workbench.core.results import EVAL, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.pairs import PreferencePair, ab_letters, check_pairs
from workbench.engine.conditions import VectorSpec, label_vectors, sweep_conditions
from workbench.engine.items import tokenize_items
from workbench.engine.readout import unembed
from workbench.engine.runners import Precision
from workbench.engine.scoring import preference_logprobs, run_conditions
from workbench.evaluate.statistics import DEFAULT_MULTIPLIERS, bootstrap_ci, check_multipliers, summarize

Specs = Mapping[str, list[SteeringVector]]  # label_vectors output: {label: vectors applied together}


def _frame(specs: Mapping[str, Any], keys: Sequence[tuple[str, float]], n: int,
           columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per (label, multiplier, item) from ``(n_conditions, n)`` arrays, in ``specs`` order."""
    frames = []
    for c, (label, m) in enumerate(keys):
        frames.append(pd.DataFrame({"vector": label, "multiplier": m, "pair": np.arange(n),
                                    **{k: (v[c] if v.ndim == 2 else v) for k, v in columns.items()}}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- 1. log-odds
@torch.no_grad()
def _pair_logodds(model: Model, specs: Specs, pairs: Sequence[PreferencePair], mults: Sequence[float], *,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, append_end_of_turn: bool = True,
                  batch_size: int = 16, precision: Precision = "fp32", max_length: int | None = 256,
                  progress: bool = True, runner: Model | None = None) -> pd.DataFrame:
    """``pair_logodds`` on checked input; ``runner`` is a runner shared across metrics."""
    conds, keys = sweep_conditions(specs, mults)
    lp, n_tok = preference_logprobs(model, pairs, conds, system_prompt=system_prompt,
                                    append_end_of_turn=append_end_of_turn, max_length=max_length,
                                    batch_size=batch_size, precision=precision, runner=runner, progress=progress)
    lp, n_tok = lp.double().numpy(), n_tok.numpy()
    ntm, ntn = n_tok[:, 0], n_tok[:, 1]
    return _frame(specs, keys, len(pairs), {
        "logp_matching": lp[:, :, 0], "logp_not_matching": lp[:, :, 1], "n_tokens_matching": ntm,
        "n_tokens_not_matching": ntn, "logodds": lp[:, :, 0] - lp[:, :, 1],
        "logodds_per_token": lp[:, :, 0] / ntm - lp[:, :, 1] / ntn})


def pair_logodds(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
                 multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, append_end_of_turn: bool = True,
                 batch_size: int = 16, precision: Precision = "fp32", max_length: int | None = 256,
                 progress: bool = True) -> pd.DataFrame:
    """Per-pair answer log-probs and log-odds at each multiplier (``workbench.engine.scoring.preference_logprobs``).

    Args:
        model: the model (unchanged by the call).
        vectors: a vector, a list applied together (composition), or ``{label: vector(s)}``.
        pairs: preference pairs (``workbench.data.PreferencePair``).
        multipliers: the ``m`` of ``m * v``.
        system_prompt: system turn of the chat prompt (None: no system turn).
        append_end_of_turn: append ``end_of_turn(model)`` to each answer (BiPO's protocol).
        batch_size: pairs per forward pass.
        precision: ``"bf16"`` runs the blocks after the vector in a bf16 copy (sums stay fp32).
        max_length: prompts are cut from the left beyond this many tokens, by the same number of
            tokens for both answers of a pair.
        progress: show a progress bar.

    Returns:
        One row per (vector, multiplier, pair): ``vector, multiplier, pair, logp_matching,
        logp_not_matching, n_tokens_matching, n_tokens_not_matching, logodds, logodds_per_token``.
    """
    specs = label_vectors(vectors, model)
    pairs = check_pairs(pairs)
    return _pair_logodds(model, specs, pairs, check_multipliers(multipliers), system_prompt=system_prompt,
                         append_end_of_turn=append_end_of_turn, batch_size=batch_size, precision=precision,
                         max_length=max_length, progress=progress)


def summarize_logodds(per_pair: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``pair_logodds`` output -> one row per (vector, normalization, multiplier).

    Columns: ``vector, multiplier, normalization ("sum" | "per_token"), n, mean, ci_low, ci_high,
    win_rate`` (share of pairs with log-odds > 0).
    """
    out = []
    for norm, col in (("sum", "logodds"), ("per_token", "logodds_per_token")):
        s = summarize(per_pair, col, n_boot=n_boot, seed=seed,
                      extra={"win_rate": lambda g, col=col: (g[col] > 0).mean()})
        s.insert(2, "normalization", norm)
        out.append(s)
    return pd.concat(out, ignore_index=True)


#: ``summarize_logodds``'s normalization -> the name of its table in an eval result
LOGODDS_TABLES = {"sum": "logodds", "per_token": "logodds_per_token"}


def logodds_tables(per_pair: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """``pair_logodds`` output -> the tables of the ``logodds`` metric, named as in an eval result.

    Returns:
        ``{"logodds": ..., "logodds_per_token": ..., "steerability": ..., "steerability_pairs": ...}``:
        the rows of ``summarize_logodds`` of each normalization (``LOGODDS_TABLES``; without the
        ``normalization`` column), ``steerability`` (per vector: mean slope, anti-steerable share and
        the share moved by more than one nat, with intervals) and ``steerability_pairs`` (per pair:
        slope and shift at each multiplier, ``pair_steerability``).
    """
    summary = summarize_logodds(per_pair, n_boot, seed)
    tables = {name: summary[summary["normalization"] == norm].drop(columns="normalization").reset_index(drop=True)
              for norm, name in LOGODDS_TABLES.items()}
    tables["steerability"] = steerability(per_pair, n_boot=n_boot, seed=seed)
    tables["steerability_pairs"] = pair_steerability(per_pair)
    return tables


def curve_result(model: Model, multipliers: Sequence[float], tables: Mapping[str, pd.DataFrame]) -> Result:
    """An ``eval`` result of one curve function: the model's name, the multipliers and the metric tables."""
    return result(EVAL, model=str(model.cfg.model_name), multipliers=[float(m) for m in multipliers],
                  metrics=dict(tables))


def logodds_curve(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
                  multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *, n_boot: int = 1000, seed: int = 0,
                  **kwargs: Any) -> Result:
    """Preference log-odds curve over multipliers, as an ``eval`` result (see ``pair_logodds`` for the arguments).

    Returns:
        ``{"kind": "eval", "model", "multipliers", "metrics": {"logodds", "logodds_per_token",
        "steerability"}}`` (``logodds_tables``): the tables ``evaluate_vectors`` writes for its
        ``logodds`` metric. The curves have one row per (vector, multiplier): ``n, mean, ci_low,
        ci_high, win_rate``.

    Example:
        >>> res = logodds_curve(model, {"bipo": v_bipo, "caa": v_caa}, test_pairs)
        >>> res.table("logodds")[["vector", "multiplier", "mean", "win_rate"]]
        >>> fig = plot(res)
    """
    specs, pairs, mults = label_vectors(vectors, model), check_pairs(pairs), check_multipliers(multipliers)
    return curve_result(model, mults, logodds_tables(_pair_logodds(model, specs, pairs, mults, **kwargs), n_boot, seed))


#: a pair is "moved" when its log-odds shift in the multiplier's direction exceeds this (nats)
MOVED_NATS = 1.0


def shift_column(m: float) -> str:
    """The per-pair table's column of the shift from ``m = 0`` at ``m``: ``shift@+1``, ``shift@-0.5``."""
    return f"shift@{m:+g}"


def _wide(g: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs, multipliers, values)`` of one vector's rows: values ``(n_pairs, n_multipliers)`` float64."""
    wide = g.pivot(index="pair", columns="multiplier", values=column).sort_index(axis=1)
    return wide.index.to_numpy(), wide.columns.to_numpy(dtype=np.float64), wide.to_numpy(dtype=np.float64)


def least_squares_slopes(multipliers: Float[np.ndarray, " m"], values: Float[np.ndarray, "n m"]) -> Float[np.ndarray, " n"]:
    """Each row's least-squares slope of ``values`` on ``multipliers`` (ordinary least squares with an intercept).

    Raises:
        ValueError: fewer than two distinct multipliers (no slope is defined).
    """
    m = np.asarray(multipliers, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    mc = m - m.mean()
    if (mc ** 2).sum() == 0:
        raise ValueError(f"a slope needs at least two distinct multipliers, got {m.tolist()}")
    return ((y - y.mean(1, keepdims=True)) * mc).sum(1) / (mc ** 2).sum()  # (n,)


def pair_steerability(per_pair: pd.DataFrame, column: str = "logodds") -> pd.DataFrame:
    """Per-example steerability (Tan et al. 2024, arXiv 2407.12404): one row per (vector, pair).

    Columns: ``vector, pair, slope`` (least-squares slope of the pair's ``column`` over every evaluated
    multiplier: log-odds gained per unit of ``m``), ``anti_steerable`` (slope < 0: the vector moves
    the pair the wrong way), and, when ``m = 0`` was evaluated, ``shift@<m>`` for every other
    multiplier (the pair's value at ``m`` minus at ``m = 0``). Vectors with fewer than two
    multipliers have no rows.
    """
    frames = []
    for label, g in per_pair.groupby("vector", sort=False):
        pairs, m, y = _wide(g, column)
        if len(m) < 2:
            continue
        frame = {"vector": label, "pair": pairs, "slope": least_squares_slopes(m, y)}
        frame["anti_steerable"] = frame["slope"] < 0
        if 0.0 in m:
            zero = y[:, list(m).index(0.0)]
            for j, mj in enumerate(m):
                if mj != 0:
                    frame[shift_column(mj)] = y[:, j] - zero
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["vector", "pair", "slope"])


def _share(flags: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """A share of items and its percentile bootstrap interval (``bootstrap_ci`` of the 0/1 flags)."""
    x = np.asarray(flags, dtype=np.float64)
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return float(x.mean()), lo, hi


def steerability(per_pair: pd.DataFrame, column: str = "logodds", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per-pair least-squares slope of log-odds over the multiplier, summarised per vector.

    Columns: ``vector, n, mean`` (mean slope: log-odds gained per unit of multiplier), ``ci_low,
    ci_high`` (its bootstrap interval), ``anti_steerable`` (share of pairs whose slope is negative)
    with ``anti_steerable_ci_low, anti_steerable_ci_high`` (percentile bootstrap over pairs), and,
    when ``m = 0`` was evaluated, ``m_plus`` / ``m_minus`` (the largest ``|m|`` evaluated in each
    direction) with ``moved_plus`` / ``moved_minus``: the share of pairs whose log-odds moved by more
    than ``MOVED_NATS`` (one nat) in that multiplier's direction (``shift > 1`` at ``m_plus``,
    ``shift < -1`` at ``m_minus``), each with its interval. Needs >= 2 multipliers
    (``pair_steerability`` gives the per-pair values).
    """
    per = pair_steerability(per_pair, column)
    rows = []
    for label, g in per.groupby("vector", sort=False):
        slopes = g["slope"].to_numpy(np.float64)
        lo, hi = bootstrap_ci(slopes, n_boot=n_boot, seed=seed)
        row: dict[str, Any] = {"vector": label, "n": int(slopes.size), "mean": float(slopes.mean()),
                               "ci_low": lo, "ci_high": hi}
        share, a, b = _share(slopes < 0, n_boot, seed)
        row |= {"anti_steerable": share, "anti_steerable_ci_low": a, "anti_steerable_ci_high": b}
        shifts = {float(c.split("@", 1)[1]): c for c in g.columns if c.startswith("shift@") and g[c].notna().any()}
        for side, sign in (("plus", 1.0), ("minus", -1.0)):
            ms = [m for m in shifts if m * sign > 0]
            if not ms:
                continue
            m = max(ms, key=abs)
            share, a, b = _share(sign * g[shifts[m]].to_numpy(np.float64) > MOVED_NATS, n_boot, seed)
            row |= {f"m_{side}": m, f"moved_{side}": share, f"moved_{side}_ci_low": a, f"moved_{side}_ci_high": b}
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["vector", "n", "mean"])


# --------------------------------------------------------------------------- 2. A/B probability
def _letter_token(model: Model, letter: str) -> int:
    ids = model.tokenizer(letter, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"answer letter {letter!r} is {len(ids)} tokens for this tokenizer; the 'ab' metric "
                         "needs single-token letters")
    return int(ids[0])


@torch.no_grad()
def _ab_pair_probs(model: Model, specs: Specs, pairs: Sequence[PreferencePair], mults: Sequence[float], *,
                   system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, batch_size: int = 16,
                   precision: Precision = "fp32", max_length: int | None = 512,
                   progress: bool = True, runner: Model | None = None) -> pd.DataFrame:
    """``ab_pair_probs`` on checked input; ``runner`` is a runner shared across metrics."""
    letters = ab_letters(pairs)
    conds, keys = sweep_conditions(specs, mults)
    items = tokenize_items(model, [format_chat(model, p.question, system_prompt) for p in pairs],
                           [["("]] * len(pairs), max_length)
    ids = torch.tensor([[_letter_token(model, a), _letter_token(model, b)] for a, b in letters])  # (n, 2)
    n = len(pairs)
    out = torch.zeros(len(conds), n, 3)
    for idx, _, readouts in run_conditions(model, items, conds, batch_size=batch_size, precision=precision,
                                           runner=runner, progress=progress, desc="A/B"):
        for c, r in enumerate(readouts):
            lp = unembed(model, r.h_last).log_softmax(-1)  # (b, d_vocab): what follows the "("
            lp = lp.gather(1, ids[idx].to(lp.device))  # (b, 2)
            out[c, idx] = torch.stack([(lp[:, 0] - lp[:, 1]).sigmoid(), lp.exp().sum(1), lp[:, 0] - lp[:, 1]],
                                      1).cpu()
    v = out.double().numpy()
    return _frame(specs, keys, n, {"p_matching": v[:, :, 0], "p_letters": v[:, :, 1], "logit_diff": v[:, :, 2]})


def ab_pair_probs(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
                  multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, batch_size: int = 16,
                  precision: Precision = "fp32", max_length: int | None = 512,
                  progress: bool = True) -> pd.DataFrame:
    """CAA's A/B probability per pair: prompt ``chat(question)``, answer ``"("``, next token A vs B.

    Args:
        pairs: A/B pairs whose answers are letters like ``"(A)"`` (format ``ab-json``, or
            ``workbench.data.as_ab_pairs``); the other arguments as ``pair_logodds``.

    Returns:
        One row per (vector, multiplier, pair): ``p_matching`` (normalised over the two letters),
        ``p_letters`` (total probability of the two letters: near 1 when the model answers with a
        letter at all), ``logit_diff`` (matching minus not-matching letter).
    """
    specs = label_vectors(vectors, model)
    pairs = check_pairs(pairs)
    return _ab_pair_probs(model, specs, pairs, check_multipliers(multipliers), system_prompt=system_prompt,
                          batch_size=batch_size, precision=precision, max_length=max_length, progress=progress)


def ab_curve(model: Model, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
             multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *, n_boot: int = 1000, seed: int = 0,
             **kwargs: Any) -> Result:
    """A/B behavior probability per (vector, multiplier), as an ``eval`` result with the metric ``ab``
    (see ``ab_pair_probs`` for the arguments).

    Returns:
        ``{"kind": "eval", "model", "multipliers", "metrics": {"ab": rows}}``; ``res.table("ab")`` has
        ``mean`` p(matching) with its interval, ``p_letters`` (mean letter mass) and ``matching_rate``
        (share of pairs with p(matching) > 0.5).
    """
    specs, pairs, mults = label_vectors(vectors, model), check_pairs(pairs), check_multipliers(multipliers)
    return curve_result(model, mults, {"ab": summarize_ab(_ab_pair_probs(model, specs, pairs, mults, **kwargs),
                                                          n_boot, seed)})


def summarize_ab(per_pair: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``ab_pair_probs`` output -> one row per (vector, multiplier) (``ab_curve``'s columns)."""
    return summarize(per_pair, "p_matching", n_boot=n_boot, seed=seed,
                     extra={"p_letters": lambda g: g["p_letters"].mean(),
                            "matching_rate": lambda g: (g["p_matching"] > 0.5).mean()})


__all__ = ["LOGODDS_TABLES", "MOVED_NATS", "ab_curve", "ab_pair_probs", "curve_result", "least_squares_slopes",
           "logodds_curve", "logodds_tables", "pair_logodds", "pair_steerability", "shift_column", "steerability",
           "summarize_ab", "summarize_logodds"]
