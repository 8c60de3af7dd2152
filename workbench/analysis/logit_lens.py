"""Logit lens for steering vectors: which tokens a vector promotes, and how its effect propagates.

The logit lens (nostalgebraist 2020; Belrose et al. 2023, arXiv 2303.08112 for its tuned variant)
reads a residual stream through the model's final norm and unembedding as if it were the last
layer. Two uses for a steering vector ``v`` (BiPO, Cao et al. 2024, arXiv 2406.00045; CAA):

**(a) The vector itself** (``vector_logit_lens``). The final norm is not linear, so "the logits of a
vector" needs a convention. Writing the final residual as ``h`` and the norm as
``ln(x) = w * (x - mean(x)) / scale(x)`` (``mean`` only for LayerNorm, ``scale`` the RMS or std):

* ``"direct"`` (default): ``W_U^T (w * v)`` (``v`` centred first for LayerNorm). This is the change
  of the logits per unit of normalised residual when ``v`` is added, with ``scale`` held fixed: it
  ignores that adding ``v`` also changes the norm's scale (which shrinks every logit alike) and it
  ignores every block after the hook (``v`` is treated as if it reached the final residual through
  the skip connections alone). Rankings are meaningful; magnitudes are per unit of ``1/scale``
  (typical final-residual RMS values are printed by ``final_residuals(...).pow(2).mean(-1).sqrt()``).
* ``"exact"`` (needs sample residuals): the mean over sample final residuals ``h`` of
  ``logits(ln(h + m v)) - logits(ln(h))``: exact through the norm, still skipping later blocks.

Logit changes are reported relative to the mean over the vocabulary (a uniform shift does not
change any probability), so positive means promoted, negative suppressed.

**(b) A steered run** (``steered_logit_lens``). For held-out preference pairs, at the position that
predicts the first token where the matching and not-matching answers differ, each layer's
``resid_post`` is read through ``ln_final`` + ``W_U`` with and without the vector. Per layer: the
change (steered minus unsteered) of the log-probs of the matching and not-matching tokens, of their
difference (log-odds), and the KL divergence ``KL(steered || unsteered)`` of the logit-lens
distributions (column ``kl_steered_unsteered``; the utility cost's ``kl_from_unsteered`` is the other
direction, see ``workbench.core.results``); also the same change if ``m v`` were simply added to the unsteered residual (the
direct path), which separates what the later blocks do with the vector from what it does alone.
Layers before the hook show exactly zero change. The last layer's row is the model's real output.

Both return a result (``workbench.core.results``): ``logit_lens_tokens`` and ``logit_lens_layers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.core.backend import Model, final_residual
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, end_of_turn, format_chat
from workbench.core.results import LOGIT_LENS_LAYERS, LOGIT_LENS_TOKENS, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.pairs import check_pairs
from workbench.engine.items import tokenize_completions
from workbench.engine.readout import unembed
from workbench.engine.steering import steer


# --------------------------------------------------------------------------- (a) the vector itself
def _ln_weight(model: Model) -> Float[Tensor, " d_model"]:
    w = getattr(model.ln_final, "w", None)
    if w is None:  # RMSPre / LNPre: the weight was folded into W_U
        return torch.ones(model.cfg.d_model, device=model.W_U.device)
    return w.detach().float()


def _centres(model: Model) -> bool:
    return model.cfg.normalization_type in ("LN", "LNPre")


def direct_logit_effect(model: Model, vector: SteeringVector | Tensor) -> Float[Tensor, " d_vocab"]:
    """``W_U^T (w_ln * v)`` (``v`` centred for LayerNorm): logit change per unit normalised residual.

    Not centred over the vocabulary (see ``vector_logit_lens`` for the relative form).
    """
    v = (vector.vector if isinstance(vector, SteeringVector) else vector).detach().float()
    if v.shape != (model.cfg.d_model,):
        raise ValueError(f"vector has shape {tuple(v.shape)}, model d_model is {model.cfg.d_model}")
    v = v.to(model.W_U.device)
    if _centres(model):
        v = v - v.mean()
    return (_ln_weight(model) * v) @ model.W_U.float()  # (d_vocab,)


@torch.no_grad()
def final_residuals(model: Model, texts: Sequence[str], max_positions: int = 512,
                    batch_size: int = 8) -> Float[Tensor, "n d_model"]:
    """Final residual streams (before ``ln_final``) at every real token of ``texts``, in fp32.

    Sample residuals for ``exact_logit_effect``; at most ``max_positions`` rows (spread evenly).
    """
    if not texts:
        raise ValueError("texts is empty: give at least one text to sample residuals from")
    rows = []
    for s in range(0, len(texts), batch_size):
        chunk = list(texts[s: s + batch_size])
        enc = [list(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chunk]
        if any(len(e) == 0 for e in enc):
            raise ValueError(f"texts[{s + [len(e) for e in enc].index(0)}] is empty after tokenization")
        n = max(len(e) for e in enc)
        tokens = torch.zeros(len(enc), n, dtype=torch.long)
        mask = torch.zeros(len(enc), n, dtype=torch.long)
        for i, e in enumerate(enc):
            tokens[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
        dev = model.cfg.device
        resid = final_residual(model, tokens.to(dev), mask.to(dev))
        rows.append(resid[mask.to(dev).bool()].float().cpu())  # (real tokens, d_model)
    out = torch.cat(rows)
    if len(out) > max_positions:
        out = out[torch.linspace(0, len(out) - 1, max_positions).long()]
    return out


@torch.no_grad()
def exact_logit_effect(model: Model, vector: SteeringVector | Tensor,
                       residuals: Float[Tensor, "n d_model"], multiplier: float = 1.0,
                       batch_size: int = 64) -> Float[Tensor, " d_vocab"]:
    """Mean over sample final residuals ``h`` of ``logits(ln(h + m v)) - logits(ln(h))`` (fp32)."""
    v = (vector.vector if isinstance(vector, SteeringVector) else vector).detach().float()
    if residuals.ndim != 2 or residuals.shape[1] != model.cfg.d_model or v.shape != (model.cfg.d_model,):
        raise ValueError(f"residuals must be (n, {model.cfg.d_model}) and the vector ({model.cfg.d_model},); "
                         f"got {tuple(residuals.shape)} and {tuple(v.shape)}")
    dev = model.cfg.device
    total = torch.zeros(model.cfg.d_vocab, device=dev)
    for s in range(0, len(residuals), batch_size):
        h = residuals[s: s + batch_size].to(dev).float()  # (b, d_model)
        total += (unembed(model, h + multiplier * v.to(dev)) - unembed(model, h)).sum(0)
    return total / len(residuals)


def top_tokens(model: Model, effect: Float[Tensor, " d_vocab"], k: int = 10) -> pd.DataFrame:
    """The ``k`` most promoted and ``k`` most suppressed tokens of a logit-change vector.

    Returns:
        Columns ``direction`` (``"promoted"``/``"suppressed"``), ``rank`` (1 = strongest),
        ``token_id``, ``token`` (decoded string), ``logit_change`` (relative to the vocabulary mean).
    """
    effect = (effect - effect.mean()).float().cpu()
    k = min(int(k), effect.numel())
    rows = []
    for direction, idx in (("promoted", effect.topk(k).indices), ("suppressed", (-effect).topk(k).indices)):
        for rank, t in enumerate(idx.tolist(), 1):
            rows.append({"direction": direction, "rank": rank, "token_id": t,
                         "token": model.tokenizer.decode([t]), "logit_change": float(effect[t])})
    return pd.DataFrame(rows)


def _vector_tokens(model: Model, vector: SteeringVector | Tensor, k: int, method: str,
                   residuals: Tensor | None, multiplier: float) -> pd.DataFrame:
    if method == "direct":
        effect = direct_logit_effect(model, vector) * multiplier
    elif method == "exact":
        if residuals is None:
            raise ValueError("method='exact' needs residuals= (e.g. final_residuals(model, texts))")
        effect = exact_logit_effect(model, vector, residuals, multiplier)
    else:
        raise ValueError(f"method={method!r}: use 'direct' or 'exact'")
    table = top_tokens(model, effect, k)
    table.insert(0, "method", method)
    return table


def vector_logit_lens(model: Model, vector: SteeringVector | Tensor | Mapping[str, SteeringVector],
                      k: int = 10, method: Literal["direct", "exact"] = "direct",
                      residuals: Float[Tensor, "n d_model"] | None = None,
                      multiplier: float = 1.0) -> Result:
    """Top promoted and suppressed tokens of a vector (see the module docstring for ``method``).

    Args:
        vector: one vector, or ``{label: vector}``: one table of all, with a ``vector`` column.

    Returns:
        A ``logit_lens_tokens`` result; its table has columns ``method`` and those of ``top_tokens``
        (and ``vector`` for a mapping).

    Example:
        >>> vector_logit_lens(model, v, k=5).table().query("direction == 'promoted'").token.tolist()
        [' power', ' control', ...]
        >>> vector_logit_lens(model, {"bipo": v_bipo, "caa": v_caa}).table().pivot(
        ...     index=["direction", "rank"], columns="vector", values="token")
    """
    if isinstance(vector, Mapping):
        if not vector:
            raise ValueError("vector={}: give at least one vector")
        table = pd.concat([_vector_tokens(model, v, k, method, residuals, multiplier).assign(vector=str(label))
                           for label, v in vector.items()], ignore_index=True)
    else:
        table = _vector_tokens(model, vector, k, method, residuals, multiplier)
    return result(LOGIT_LENS_TOKENS, rows=table)


# --------------------------------------------------------------------------- (b) a steered run
def _encode(model: Model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def _read_points(model: Model, pairs: Sequence[Any], system_prompt: str | None,
                 targets: tuple[str, str] | tuple[int, int] | None):
    """Batch, read position per row and the (matching, not-matching) target token per row (checked pairs)."""
    eot = end_of_turn(model)
    prompts = [format_chat(model, p.question, system_prompt) for p in pairs]
    if targets is not None:
        ids = [t if isinstance(t, int) else _encode(model, t) for t in targets]
        for name, t in zip(("matching", "not-matching"), ids):
            if not isinstance(t, int) and len(t) != 1:
                raise ValueError(f"targets: the {name} target {targets} must be ONE token, it is {len(t)}")
        ids = [t if isinstance(t, int) else t[0] for t in ids]
        # a one-token dummy answer: the read position is the last prompt token
        batch = tokenize_completions(model, prompts, [eot or " "] * len(prompts))
        return batch, batch.prompt_lengths - 1, torch.tensor([ids[0]] * len(pairs)), torch.tensor([ids[1]] * len(pairs))
    offsets, pos_t, neg_t = [], [], []
    for i, p in enumerate(pairs):
        a, b = _encode(model, p.matching + eot), _encode(model, p.not_matching + eot)
        j = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if j is None:
            raise ValueError(f"pairs[{i}]: the matching and not-matching answers have the same tokens "
                             f"({p.matching!r} / {p.not_matching!r}); nothing to compare")
        offsets.append(j)
        pos_t.append(a[j])
        neg_t.append(b[j])
    batch = tokenize_completions(model, prompts, [p.matching + eot for p in pairs])
    return batch, batch.prompt_lengths - 1 + torch.tensor(offsets), torch.tensor(pos_t), torch.tensor(neg_t)


def _store(act: Tensor, hook: Any, *, name: str, out: dict[str, Tensor], rows: Tensor, cols: Tensor) -> None:  # noqa: ARG001
    out[name] = act[rows, cols].detach().float()  # (n, d_model); keyed by the requested name (a bridge's hook.name differs)


def _lens_logprobs(model: Model, resid: Tensor) -> Tensor:
    return torch.log_softmax(unembed(model, resid), dim=-1)  # (n, d_vocab)


@torch.no_grad()
def steered_logit_lens(model: Model, vector: SteeringVector, pairs: Sequence[Any],
                       multiplier: float = 1.0, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                       targets: tuple[str, str] | tuple[int, int] | None = None,
                       batch_size: int = 8) -> Result:
    """Per-layer logit-lens view of a steered run against the unsteered one (module docstring (b)).

    Args:
        model: the model (unchanged; hooks exist only during the call).
        vector: the steering vector, applied at all positions with ``multiplier``.
        pairs: preference pairs (``question``, ``matching``, ``not_matching``); the end-of-turn
            string is appended to answers, as in scoring.
        targets: optional fixed ``(matching, not_matching)`` token pair (strings of one token, or
            ids) read at the last prompt token, instead of the first differing answer token.
        batch_size: pairs per forward pass.

    Returns:
        A ``logit_lens_layers`` result, one row per layer: ``layer, hook_name, steered`` (layer at or
        after the vector's hook), ``delta_logprob_matching, delta_logprob_not_matching, delta_logodds``
        (means over pairs of steered minus unsteered), ``delta_logodds_direct`` (``m v`` added to the
        unsteered residual only), ``kl_steered_unsteered`` (mean ``KL(steered || unsteered)``, nats),
        ``base_logodds``.

    Raises:
        ValueError, TypeError: ``pairs`` are not preference pairs (``workbench.data.pairs.check_pairs``).
    """
    vector.check_compatible(model)
    pairs = check_pairs(pairs)  # once; nothing below checks again
    batch, cols, pos_t, neg_t = _read_points(model, pairs, system_prompt, targets)
    n_layers, dev = model.cfg.n_layers, model.cfg.device
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    sums: dict[str, Tensor] = {}
    v = vector.vector.float().to(dev) * float(multiplier)
    for s in range(0, len(pairs), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(pairs)))
        sub = batch.select(idx).to(dev)
        rows = torch.arange(len(idx), device=dev)
        c = cols[idx].to(dev)
        reads: list[dict[str, Tensor]] = []
        for steered in (False, True):
            out: dict[str, Tensor] = {}
            hooks = [(n, partial(_store, name=n, out=out, rows=rows, cols=c)) for n in names]
            with steer(model, [vector] if steered else [], [multiplier] if steered else []):
                with model.hooks(fwd_hooks=hooks):  # registered after steer's hook: reads steered values
                    model(sub.tokens, attention_mask=sub.attention_mask, stop_at_layer=n_layers)
            reads.append(out)
        pt, nt = pos_t[idx].to(dev), neg_t[idx].to(dev)
        for layer, name in enumerate(names):
            lp0 = _lens_logprobs(model, reads[0][name])  # (b, d_vocab)
            lp1 = _lens_logprobs(model, reads[1][name])
            lpd = _lens_logprobs(model, reads[0][name] + v)
            pick = lambda lp, t: lp.gather(1, t[:, None]).squeeze(1)  # noqa: E731
            stats = torch.stack([
                pick(lp1, pt) - pick(lp0, pt),
                pick(lp1, nt) - pick(lp0, nt),
                (pick(lpd, pt) - pick(lpd, nt)) - (pick(lp0, pt) - pick(lp0, nt)),
                (lp1.exp() * (lp1 - lp0)).sum(-1),
                pick(lp0, pt) - pick(lp0, nt),
            ])  # (5, b)
            sums[name] = sums.get(name, torch.zeros(5, device=dev)) + stats.sum(1)
    hook_layer = vector.layer
    rows_out = []
    for layer, name in enumerate(names):
        m = (sums[name] / len(pairs)).tolist()
        # resid_post of layer L sees a vector at any hook of block L; earlier layers see none
        rows_out.append({"layer": layer, "hook_name": name, "steered": layer >= hook_layer,
                         "delta_logprob_matching": m[0], "delta_logprob_not_matching": m[1],
                         "delta_logodds": m[0] - m[1],
                         "delta_logodds_direct": m[2] if layer >= hook_layer else 0.0, "kl_steered_unsteered": m[3],
                         "base_logodds": m[4]})
    return result(LOGIT_LENS_LAYERS, rows=pd.DataFrame(rows_out))
