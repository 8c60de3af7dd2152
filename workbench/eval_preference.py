"""Preference metrics under steering: answer log-odds and CAA's A/B probability, over multipliers.

* **Log-odds** (BiPO, Cao et al. 2024, arXiv 2406.00045): for held-out pairs,
  ``log p(matching | prompt) - log p(not_matching | prompt)`` with summed answer-token log-probs
  (and per answer token), at each multiplier ``m`` of ``m * v``; ``summarize_logodds`` gives the mean
  with a bootstrap 95% interval and the win rate (share of pairs with log-odds > 0);
  ``steerability`` fits each pair's slope over ``m`` (Tan et al. 2024, arXiv 2407.12404).
* **A/B probability** (CAA, Rimsky et al. 2023, arXiv 2312.06681): the question holds its choices
  inline, the answer starts with ``"("``, and ``p(matching letter)`` is normalised over the two letters.

Prompts are the chat template around the question with BiPO's system prompt; answers get the
end-of-turn token appended (BiPO's protocol). Engines: ``"kv"`` caches the residual entering the
first block after the vector and runs each prompt once for both answers (``workbench.prefix``);
``"prefix"`` shares the blocks below the vector across multipliers (``workbench.eval_sweep``; also
compositions); ``"naive"`` runs a full forward pass per multiplier under ``steer`` (the reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from workbench.eval_common import (DEFAULT_MULTIPLIERS, DEFAULT_SYSTEM_PROMPT, check_ab_pairs, check_multipliers,
                                   check_pairs, summarize)
from workbench.eval_sweep import (Precision, ResidualCache, VectorSpec, label_vectors, logits_at, plan_sweep,
                                  suffix_model, sweep_final_resid)
from workbench.model import end_of_turn, format_chat
from workbench.scoring import sum_by_row, token_logprobs_from_resid, tokenize_completions
from workbench.vector import SteeringVector

Engine = Literal["auto", "kv", "prefix", "naive"]
ENGINES = ("auto", "kv", "prefix", "naive")


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Item indices in length-sorted batches (less padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


def _ordered_specs(model: HookedTransformer, specs: dict[str, list[SteeringVector]]) -> list[str]:
    """Labels sorted by start layer, so one ``ResidualCache`` serves them all going up."""
    return sorted(specs, key=lambda k: plan_sweep(model, specs[k]).start_layer)


# --------------------------------------------------------------------------- 1. log-odds
def _logprobs_kv(model: HookedTransformer, suffix: HookedTransformer, vec: SteeringVector, cache: Any,
                 mults: Sequence[float], batch_size: int) -> torch.Tensor:
    """``(n_mult, n, 2)`` log-probs from a ``workbench.prefix.PrefixCache`` (multiplier 0: its reference)."""
    out = []
    for m in mults:
        if m == 0 and getattr(cache, "reference", None) is not None:
            out.append(cache.reference.float())
        else:
            out.append(cache.score(suffix, None if m == 0 else vec.vector.float() * m, batch_size=batch_size,
                                   unembed_model=model))
    return torch.stack(out)


@torch.no_grad()
def pair_logodds(model: HookedTransformer, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
                 multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, append_end_of_turn: bool = True,
                 batch_size: int = 16, precision: Precision = "fp32", engine: Engine = "auto",
                 max_length: int | None = 256, progress: bool = True,
                 _suffix: HookedTransformer | None = None) -> pd.DataFrame:
    """Per-pair answer log-probs and log-odds at each multiplier.

    Args:
        model: the model (unchanged by the call).
        vectors: a vector, a list applied together (composition), or ``{label: vector(s)}``.
        pairs: preference pairs (``workbench.data.PreferencePair``).
        multipliers: the ``m`` of ``m * v``.
        system_prompt: system turn of the chat prompt (None: no system turn).
        append_end_of_turn: append ``end_of_turn(model)`` to each answer (BiPO's protocol).
        batch_size: pairs per forward pass.
        precision: ``"bf16"`` runs the blocks after the vector in a bf16 copy (sums stay fp32).
        engine: ``"kv"`` (prefix cache with each prompt run once for both answers; single vectors
            only), ``"prefix"`` (prefix cache, one sequence per answer), ``"naive"`` (a full forward
            pass per multiplier under ``steer``), ``"auto"`` (kv where it applies, else prefix).
        max_length: prompts are cut from the left beyond this many tokens, by the same number of
            tokens for both answers of a pair (every engine).

    Returns:
        One row per (vector, multiplier, pair): ``vector, multiplier, pair, logp_matching,
        logp_not_matching, n_tokens_matching, n_tokens_not_matching, logodds, logodds_per_token``.
    """
    from workbench.prefix import PrefixCache

    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {', '.join(ENGINES)}")
    specs = label_vectors(vectors, model)
    pairs = check_pairs(pairs)
    mults = check_multipliers(multipliers)
    eot = end_of_turn(model) if append_end_of_turn else ""
    prompts = [format_chat(model, p.question, system_prompt) for p in pairs]
    answers = [[p.matching + eot, p.not_matching + eot] for p in pairs]
    suffix = _suffix if _suffix is not None else suffix_model(model, precision)
    n = len(pairs)
    lps: dict[str, torch.Tensor] = {}
    n_tok = torch.zeros(n, 2, dtype=torch.long)
    kv_labels = [k for k, v in specs.items() if len(v) == 1] if engine in ("auto", "kv") else []
    if engine == "kv" and len(kv_labels) != len(specs):
        raise ValueError("engine='kv' scores single vectors only; use 'prefix' for compositions")
    caches: dict[str, Any] = {}
    for label in kv_labels:
        vec = specs[label][0]
        try:
            if vec.hook_name not in caches:
                caches[vec.hook_name] = PrefixCache.build(model, prompts, answers, vec.hook_name, runner=suffix,
                                                          reference=0.0 in mults, max_length=max_length,
                                                          batch_size=batch_size, progress=progress)
        except NotImplementedError:  # positional embeddings the KV cache does not support
            if engine == "kv":
                raise
            break
        cache = caches[vec.hook_name]
        lps[label] = _logprobs_kv(model, suffix, vec, cache, mults, batch_size)
        n_tok = cache.answer_offsets.diff().view(-1, 2)
    rest = [k for k in _ordered_specs(model, specs) if k not in lps]
    if rest:
        for k in rest:
            lps[k] = torch.zeros(len(mults), n, 2)
        lengths = [len(prompts[i]) + max(map(len, answers[i])) for i in range(n)]
        for idx in tqdm(_batches(lengths, batch_size), desc="log-odds", disable=not progress, leave=False):
            b = len(idx)
            batch = tokenize_completions(model, [prompts[i] for i in idx] * 2,
                                         [answers[i][0] for i in idx] + [answers[i][1] for i in idx],
                                         max_length=max_length, groups=list(range(b)) * 2).to(model.cfg.device)
            n_tok[idx] = batch.answer_mask.sum(1).view(2, b).T.cpu()
            cache = ResidualCache(model, batch.tokens, batch.attention_mask)
            for label in rest:
                sweep = sweep_final_resid(model, specs[label], batch.tokens, batch.attention_mask, mults,
                                          suffix=suffix, shared_prefix=engine != "naive", prefix=cache)
                for mi, (_, _, resid) in enumerate(sweep):
                    lp, rows = token_logprobs_from_resid(model, resid.to(model.cfg.dtype), batch)
                    lps[label][mi, idx] = sum_by_row(lp, rows, 2 * b).view(2, b).T.cpu()
    frames = []
    ntm, ntn = n_tok[:, 0].numpy(), n_tok[:, 1].numpy()
    for label in specs:
        for mi, m in enumerate(mults):
            lp = lps[label][mi].double().numpy()
            frames.append(pd.DataFrame({
                "vector": label, "multiplier": m, "pair": np.arange(n),
                "logp_matching": lp[:, 0], "logp_not_matching": lp[:, 1],
                "n_tokens_matching": ntm, "n_tokens_not_matching": ntn,
                "logodds": lp[:, 0] - lp[:, 1], "logodds_per_token": lp[:, 0] / ntm - lp[:, 1] / ntn}))
    return pd.concat(frames, ignore_index=True)


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


def logodds_curve(model: HookedTransformer, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
                  multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *, n_boot: int = 1000, seed: int = 0,
                  **kwargs: Any) -> pd.DataFrame:
    """Preference log-odds curve over multipliers (see ``pair_logodds`` for the arguments).

    Example:
        >>> curve = logodds_curve(model, {"bipo": v_bipo, "caa": v_caa}, test_pairs)
        >>> curve[curve.normalization == "sum"][["vector", "multiplier", "mean", "win_rate"]]
    """
    return summarize_logodds(pair_logodds(model, vectors, pairs, multipliers, **kwargs), n_boot, seed)


def steerability(per_pair: pd.DataFrame, column: str = "logodds", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per-pair least-squares slope of log-odds over the multiplier, summarised per vector.

    Columns: ``vector, n, mean`` (mean slope: log-odds gained per unit of multiplier), ``ci_low,
    ci_high, anti_steerable`` (share of pairs whose slope is negative). Needs >= 2 multipliers.
    """
    rows = []
    for label, g in per_pair.groupby("vector", sort=False):
        wide = g.pivot(index="pair", columns="multiplier", values=column)  # (pairs, multipliers)
        m = wide.columns.to_numpy(dtype=np.float64)
        if len(m) < 2:
            continue
        y = wide.to_numpy(dtype=np.float64)
        mc = m - m.mean()
        slopes = ((y - y.mean(1, keepdims=True)) * mc).sum(1) / (mc ** 2).sum()
        frame = pd.DataFrame({"vector": label, "multiplier": 0.0, "slope": slopes})
        s = summarize(frame, "slope", by=("vector",), n_boot=n_boot, seed=seed,
                      extra={"anti_steerable": lambda g: (g["slope"] < 0).mean()})
        rows.append(s)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["vector", "n", "mean"])


# --------------------------------------------------------------------------- 2. A/B probability
def _letter_token(model: HookedTransformer, letter: str) -> int:
    ids = model.tokenizer(letter, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"answer letter {letter!r} is {len(ids)} tokens for this tokenizer; the 'ab' metric "
                         "needs single-token letters")
    return int(ids[0])


@torch.no_grad()
def ab_pair_probs(model: HookedTransformer, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
                  multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, batch_size: int = 16,
                  precision: Precision = "fp32", engine: Engine = "auto", max_length: int | None = 512,
                  progress: bool = True, _suffix: HookedTransformer | None = None) -> pd.DataFrame:
    """CAA's A/B probability per pair: prompt ``chat(question) + "("``, next token A vs B.

    Returns:
        One row per (vector, multiplier, pair): ``p_matching`` (normalised over the two letters),
        ``p_letters`` (total probability of the two letters: near 1 when the model answers with a
        letter at all), ``logit_diff`` (matching minus not-matching letter).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {', '.join(ENGINES)}")
    specs = label_vectors(vectors, model)
    letters = check_ab_pairs(pairs)
    mults = check_multipliers(multipliers)
    prompts = [format_chat(model, p.question, system_prompt) for p in pairs]
    ids = torch.tensor([[_letter_token(model, a), _letter_token(model, b)] for a, b in letters])  # (n, 2)
    suffix = _suffix if _suffix is not None else suffix_model(model, precision)
    n = len(prompts)
    out = {k: torch.zeros(len(mults), n, 3) for k in specs}
    for idx in tqdm(_batches([len(p) for p in prompts], batch_size), desc="A/B", disable=not progress, leave=False):
        batch = tokenize_completions(model, [prompts[i] for i in idx], ["("] * len(idx),
                                     max_length=max_length).to(model.cfg.device)
        last = batch.lengths - 1  # the "(" predicts the letter
        cache = ResidualCache(model, batch.tokens, batch.attention_mask)
        for label in _ordered_specs(model, specs):
            for mi, (_, _, resid) in enumerate(sweep_final_resid(
                    model, specs[label], batch.tokens, batch.attention_mask, mults, suffix=suffix,
                    shared_prefix=engine != "naive", prefix=cache)):
                logits = logits_at(model, resid[torch.arange(len(idx)), last])  # (b, d_vocab)
                lp = logits.log_softmax(-1).gather(1, ids[idx].to(logits.device))  # (b, 2)
                out[label][mi, idx] = torch.stack(
                    [(lp[:, 0] - lp[:, 1]).sigmoid(), lp.exp().sum(1), lp[:, 0] - lp[:, 1]], 1).cpu()
    frames = []
    for label in specs:
        for mi, m in enumerate(mults):
            v = out[label][mi].double().numpy()
            frames.append(pd.DataFrame({"vector": label, "multiplier": m, "pair": np.arange(n),
                                        "p_matching": v[:, 0], "p_letters": v[:, 1], "logit_diff": v[:, 2]}))
    return pd.concat(frames, ignore_index=True)


def ab_curve(model: HookedTransformer, vectors: VectorSpec | Mapping[str, VectorSpec], pairs: Sequence[Any],
             multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *, n_boot: int = 1000, seed: int = 0,
             **kwargs: Any) -> pd.DataFrame:
    """A/B behavior probability per (vector, multiplier): ``mean`` p(matching) with its interval,
    ``p_letters`` (mean letter mass) and ``matching_rate`` (share of pairs with p(matching) > 0.5)."""
    per = ab_pair_probs(model, vectors, pairs, multipliers, **kwargs)
    return summarize(per, "p_matching", n_boot=n_boot, seed=seed,
                     extra={"p_letters": lambda g: g["p_letters"].mean(),
                            "matching_rate": lambda g: (g["p_matching"] > 0.5).mean()})
