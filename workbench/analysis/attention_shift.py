"""Attention shifts: how a steering vector changes where the heads that carry its effect attend.

For the heads that activation patching (``workbench.analysis.patching``) finds necessary, the attention
pattern (TransformerLens' ``blocks.L.attn.hook_pattern``) of the steered run is compared with the
unsteered one at the position that predicts the first token where the matching and not-matching answers
differ (``steered_logit_lens``'s read point: the matching answer is in context up to there). The
attention mass is split into three regions of key positions: ``first`` (position 0, where many heads
park attention: the attention sink, Xiao et al. 2023, arXiv 2309.17453), ``prompt`` (the rest of the
chat prompt: system turn and question) and ``answer`` (the answer tokens before the read position), and
the total variation distance ``0.5 * sum_k |p_steered(k) - p_unsteered(k)|`` says how far the pattern
moved overall. Two forward passes per batch of pairs; what is cached: the patterns' rows at the read
position, ``2 * n_pairs * n_heads_read * pos`` values.

    >>> res = attention_shifts(model, v_bipo, test_pairs, 1.0, heads=patching_result, top_k=5)
    >>> res.table().pivot_table(index="component", columns="region", values="delta")
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from workbench.analysis.attribution import steered_reads
from workbench.analysis.logit_lens import _read_points
from workbench.analysis.patching import PatchingConfig, check_inputs
from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.results import ACTIVATION_PATCHING, ATTENTION_SHIFT, ATTRIBUTION_PATCHING, Result, result
from workbench.core.vector import SteeringVector
from workbench.engine.conditions import entry
from workbench.evaluate.effects import effect_vs_zero

REGIONS = ("first", "prompt", "answer")


def top_heads(patching: Result, k: int = 5, direction: str = "necessity") -> list[tuple[int, int]]:
    """The ``k`` heads with the largest share of an ``activation_patching`` result (or of its gradient
    approximation, ``attribution_patching``: same table, one forward/backward pass), as ``(layer, head)``."""
    if patching.get("kind") not in (ACTIVATION_PATCHING, ATTRIBUTION_PATCHING):
        raise ValueError(f"heads is a {patching.get('kind')!r} result, not {ACTIVATION_PATCHING!r} or "
                         f"{ATTRIBUTION_PATCHING!r}")
    t = patching.table()
    t = t[(t["type"] == "head") & (t["direction"] == direction)].nlargest(int(k), "share")
    return [(int(r.layer), int(r.head)) for r in t.itertuples()]


def _take(act: Tensor, hook: Any, *, key: int, out: dict[int, Tensor], rows: Tensor, cols: Tensor) -> None:  # noqa: ARG001
    out[key] = act[rows, :, cols].detach().float()  # (b, heads, key_pos): the query at the read position


@torch.no_grad()
def attention_shifts(model: Model, vector: SteeringVector, pairs: Sequence[Any], multiplier: float = 1.0,
                    heads: Sequence[tuple[int, int]] | Result | None = None, top_k: int = 5,
                    config: PatchingConfig | None = None, **options: Any) -> Result:
    """Attention of the given heads at the read position, steered vs unsteered (module docstring).

    Args:
        model, vector, pairs, multiplier, config, options: as ``activation_patching`` (``system_prompt``,
            ``batch_size``, ``n_boot``, ``seed`` are used).
        heads: ``[(layer, head), ...]``; an ``activation_patching`` or ``attribution_patching`` result
            (its ``top_k`` heads by necessity share); None: every head after the hook.
        top_k: heads taken from a patching result.

    Returns:
        An ``attention_shift`` result: ``rows`` per (head, region): ``component, layer, head, region,
        attn_unsteered, attn_steered, delta`` (mean over pairs, with ``delta_ci_low/high``); ``heads`` per
        head: ``tv_distance`` (mean, with interval) and ``rank`` (its order in ``heads``).
    """
    cfg = with_options(PatchingConfig, config, options, "attention_shifts")
    pairs, _ = check_inputs(model, vector, pairs, multiplier, cfg, starts_at_layer=False)
    start = entry(model, vector.hook_name)[0]
    if heads is None:
        heads = [(L, h) for L in range(start, model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    elif isinstance(heads, Result) or (isinstance(heads, dict) and "kind" in heads):
        heads = top_heads(heads, top_k)
    heads = [(int(L), int(h)) for L, h in heads]
    bad = [(L, h) for L, h in heads if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads)]
    if bad or not heads:
        raise ValueError(f"heads={bad or heads}: give (layer, head) pairs of this model "
                         f"({model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
    layers = sorted({L for L, _ in heads})
    batch, cols, _, _ = _read_points(model, pairs, cfg.system_prompt, None)
    dev = model.cfg.device
    mass: dict[tuple[int, int], dict[str, list[np.ndarray]]] = {hh: {} for hh in heads}
    def hooks_for(rows: Tensor, c: Tensor, out: dict) -> list:
        return [(f"blocks.{L}.attn.hook_pattern", partial(_take, key=L, out=out, rows=rows, cols=c)) for L in layers]

    for _, sub, c, reads in steered_reads(model, vector, multiplier, batch, cols, cfg.batch_size, hooks_for,
                                          stop_at_layer=max(layers) + 1):
        pos = torch.arange(sub.tokens.shape[1], device=dev)[None, :]  # (1, key_pos)
        plen = sub.prompt_lengths.to(dev)[:, None]
        region = {"first": pos == 0, "prompt": (pos > 0) & (pos < plen), "answer": (pos >= plen) & (pos <= c[:, None])}
        for L, h in heads:
            pu, ps = reads[0][L][:, h], reads[1][L][:, h]  # (b, key_pos)
            m = mass[(L, h)]
            for name, mask in region.items():
                m.setdefault(f"u_{name}", []).append((pu * mask).sum(1).double().cpu().numpy())
                m.setdefault(f"s_{name}", []).append((ps * mask).sum(1).double().cpu().numpy())
            m.setdefault("tv", []).append((0.5 * (ps - pu).abs().sum(1)).double().cpu().numpy())
    rows_out, heads_out = [], []
    for rank, (L, h) in enumerate(heads, 1):
        m = {k: np.concatenate(v) for k, v in mass[(L, h)].items()}
        name = f"L{L}H{h}"
        for reg in REGIONS:
            e = effect_vs_zero(m[f"s_{reg}"], m[f"u_{reg}"], n_boot=cfg.n_boot, seed=cfg.seed)
            rows_out.append({"component": name, "layer": L, "head": h, "region": reg,
                             "attn_unsteered": float(m[f"u_{reg}"].mean()), "attn_steered": float(m[f"s_{reg}"].mean()),
                             **e.columns("delta")})
        tv = effect_vs_zero(m["tv"], np.zeros_like(m["tv"]), n_boot=cfg.n_boot, seed=cfg.seed)
        heads_out.append({"component": name, "layer": L, "head": h, "rank": rank, **tv.columns("tv_distance")})
    return result(ATTENTION_SHIFT, rows=pd.DataFrame(rows_out), heads=pd.DataFrame(heads_out),
                  multiplier=float(multiplier), n_pairs=len(pairs),
                  vector={"method": vector.method, "hook_name": vector.hook_name, "layer": vector.layer})


__all__ = ["REGIONS", "attention_shifts", "top_heads"]
