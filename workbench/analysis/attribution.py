"""Attribution patching and direct logit attribution of a steering effect.

**Attribution patching** (Nanda 2023, "Attribution patching: activation patching at industrial scale";
Syed et al. 2023, arXiv 2310.10348) replaces each patched run of ``workbench.analysis.patching`` by its
first-order Taylor approximation around the run it patches. With ``a_s``/``a_u`` a component's
activation in the steered/unsteered run and ``g_s``/``g_u`` the gradient of the summed log-odds with
respect to it in that run:

* necessity: ``N_c ~= (a_s - a_u) . g_s`` (restoring ``a_u`` in the steered run);
* sufficiency: ``S_c ~= (a_s - a_u) . g_u`` (putting ``a_s`` in the unsteered run);

summed over positions and (for a head) ``d_head`` of ``hook_z``, per pair (a block: the change of its two
writes times the gradient at its ``hook_resid_post``, where both enter once the MLP is patched too). The direct path's ``a_s -
a_u = m v`` on the final residual. One forward and one backward pass per run (two in all) give every
component: exact for a model linear in its activations, a first-order estimate otherwise, worst where
the patch moves a component far (large multipliers; a saturated softmax). What is cached: the two
runs' residuals entering block ``start`` (``T * d_model`` values each, ``T`` the batch's token
positions) and, for the backward pass, one forward graph: ``S * T * (n_heads * d_head + 2 * d_model)``
kept activations plus the blocks' intermediates, ``S`` the blocks after the hook.

**Direct logit attribution of the steered change** (Elhage et al. 2021, "A mathematical framework for
transformer circuits"): at the position that predicts the first token where the matching and
not-matching answers differ (``steered_logit_lens``'s read point), the final residual is a sum of
component outputs ``h = x_start + sum_L (sum_h z_Lh W_O[L, h] + b_O[L] + mlp_L)``. The final norm is
``w * c(h) / sigma(h)`` (``c`` centres for LayerNorm), linear given its scale ``sigma``, so with
``u = w * (W_U[:, matching] - W_U[:, not matching])`` (centred for LayerNorm) each component's share of
the change of the logit difference is ``DLA_c = u . out_c(steered) / sigma_s - u . out_c(unsteered) /
sigma_u``; their sum over every component (``upstream``: the residual entering the first block after
the hook as in the unsteered run, only rescaled; ``vector``: the vector's own direct path) is exactly
the change of the log-odds at that token (without a logit soft cap), i.e. the last row of
``steered_logit_lens``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from workbench.analysis.logit_lens import _read_points
from workbench.analysis.patching import (PatchingConfig, Prepared, _logodds, check_inputs, downstream_components,
                                         effect_rows, hook_names, pair_rows, prepare, total_fields)
from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.results import ATTRIBUTION_PATCHING, DIRECT_LOGIT_ATTRIBUTION, Result, records, result
from workbench.core.vector import SteeringVector
from workbench.engine.conditions import entry
from workbench.engine.forward import Batch, assemble, length_batches, run_blocks
from workbench.engine.runners import make_runner
from workbench.engine.steering import steer
from workbench.evaluate.effects import effect_vs_zero


# --------------------------------------------------------------------------- attribution patching
def _keep(act: Tensor, hook: Any, *, key: str, out: dict[tuple[str, str], Tensor], n_prompts: int) -> None:  # noqa: ARG001
    out[(key, "p" if act.shape[0] == n_prompts else "a")] = act  # kept in the graph


def _gradients(model: Model, runner: Model, prep: Prepared, run: str) -> tuple[dict, dict, tuple[Tensor, Tensor]]:
    """One forward and backward pass of ``run`` from block ``start``: activations, their gradients and the
    gradients of the final residual, of the summed log-odds."""
    batch, n, b = prep.batch, model.cfg.n_layers, prep.batch.tp.shape[0]
    acts: dict[tuple[str, str], Tensor] = {}
    names = lambda L: {**hook_names(L), "post": f"blocks.{L}.hook_resid_post"}  # noqa: E731
    hooks = [(name, partial(_keep, key=f"{key}{layer}", out=acts, n_prompts=b))
             for layer in range(prep.start, n) for key, name in names(layer).items()]
    with torch.enable_grad():
        x_p, x_a = (x.detach().requires_grad_(True) for x in prep.resid[run][prep.start])
        with runner.hooks(fwd_hooks=hooks):
            r_p, r_a = run_blocks(runner, prep.start, n, x_p, x_a, batch, prep.hooked if run == "s" else [])
        keys = list(acts)
        grads = torch.autograd.grad(_logodds(model, r_p, r_a, batch).sum(), [acts[k] for k in keys] + [r_p, r_a],
                                    allow_unused=True)
    out = {k: (torch.zeros_like(acts[k]) if g is None else g) for k, g in zip(keys, grads)}
    return {k: a.detach() for k, a in acts.items()}, out, (grads[-2], grads[-1])


def _per_pair(x: Tensor, phase: str, batch: Batch) -> Tensor:
    """Sum a ``(rows, ...)`` tensor of one pass to ``(b, ...)`` per pair (answers to their prompt's pair)."""
    if phase == "p":
        return x
    return torch.zeros((batch.tp.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device).index_add(
        0, batch.owner.to(x.device), x)


def _attribute(prep: Prepared, acts: dict[str, dict], grads: dict[str, dict], final: dict[str, tuple],
               comp: Any, direction: str) -> Tensor:
    """``(b,)`` first-order effect carried by ``comp`` (necessity: gradient of the steered run)."""
    run = "s" if direction == "necessity" else "u"
    batch = prep.batch
    if comp.type == "direct":
        g_p, g_a = final[run]
        d = prep.delta.to(g_p.device, g_p.dtype)
        total = _per_pair((g_p @ d).sum(1), "p", batch) + _per_pair((g_a @ d).sum(1), "a", batch)
        return total.float().cpu()
    total = torch.zeros(batch.tp.shape[0])
    L = comp.layer
    for phase in ("p", "a"):
        diff = lambda key: acts["s"][(f"{key}{L}", phase)] - acts["u"][(f"{key}{L}", phase)]  # noqa: E731
        if comp.type == "block":  # both writes replaced: the change enters at the block's output
            prod = (diff("attn") + diff("mlp")) * grads[run][(f"post{L}", phase)]  # (rows, pos, d)
        elif comp.type == "head":
            prod = (diff("z") * grads[run][(f"z{L}", phase)])[:, :, comp.head]  # (rows, pos, d_head)
        else:
            prod = diff("mlp") * grads[run][(f"mlp{L}", phase)]
        total += _per_pair(prod.flatten(1).sum(1), phase, batch).float().cpu()
    return total


def attribution_patching(model: Model, vector: SteeringVector, pairs: Sequence[Any], multiplier: float = 1.0,
                         config: PatchingConfig | None = None, exact: Result | None = None, **options: Any) -> Result:
    """Attribution patching (gradient approximation) of ``activation_patching`` (module docstring).

    Args:
        model, vector, pairs, multiplier, config, options: as ``activation_patching``.
        exact: an ``activation_patching`` result of the same inputs; its rank agreement with this
            approximation is added (``agreement``, see ``rank_agreement``).

    Returns:
        An ``attribution_patching`` result with the tables and fields of ``activation_patching`` (the
        patched log-odds being the first-order estimates), and ``agreement`` when ``exact`` is given.
    """
    cfg = with_options(PatchingConfig, config, options, "attribution_patching")
    pairs, items = check_inputs(model, vector, pairs, multiplier, cfg)
    t0 = time.perf_counter()
    start = entry(model, vector.hook_name)[0]
    runner = make_runner(model, start)
    comps = downstream_components(model, start, cfg.components)
    n, nl = len(pairs), model.cfg.n_layers
    lo_s, lo_u = np.zeros(n), np.zeros(n)
    patched = {(i, d): np.zeros(n) for i in range(len(comps)) for d in cfg.directions}
    for idx in length_batches(items, cfg.batch_size):
        batch = assemble(model, items, idx)
        prep = prepare(model, runner, batch, vector, multiplier, capture=False)
        rows = batch.idx.numpy()
        lo_s[rows] = _logodds(model, *prep.resid["s"][nl], batch).double().numpy()
        lo_u[rows] = _logodds(model, *prep.resid["u"][nl], batch).double().numpy()
        acts, grads, final = {}, {}, {}
        for run in ("s", "u"):
            acts[run], grads[run], final[run] = _gradients(model, runner, prep, run)
        for i, c in enumerate(comps):
            for d in cfg.directions:
                eff = _attribute(prep, acts, grads, final, c, d).double().numpy()
                patched[(i, d)][rows] = lo_s[rows] - eff if d == "necessity" else lo_u[rows] + eff
    seconds = time.perf_counter() - t0
    res = result(ATTRIBUTION_PATCHING, **total_fields(vector, multiplier, lo_s, lo_u, cfg.n_boot, cfg.seed),
                 rows=effect_rows(comps, cfg.directions, lo_s, lo_u, patched, cfg.n_boot, cfg.seed),
                 pairs=pair_rows(comps, cfg.directions, lo_s, lo_u, patched), seconds=round(seconds, 3))
    if exact is not None:
        res = res.with_info(agreement=records(rank_agreement(exact, res)))
    return res


def _ranks(x: np.ndarray) -> np.ndarray:
    return pd.Series(x).rank().to_numpy()


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of average ranks); NaN for fewer than 3 values or no spread."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_agreement(exact: Result, approx: Result) -> pd.DataFrame:
    """Spearman rank correlation of the components' mean effects, exact vs approximate patching.

    Returns:
        One row per ``direction`` and component ``type`` (and ``"all"``): ``n_components, spearman,
        pearson`` and ``top5_overlap`` (shared members of the two top-5 lists by effect, of 5).
    """
    a, b = exact.table(), approx.table()
    both = a.merge(b, on=["direction", "component", "type"], suffixes=("_exact", "_approx"))
    rows = []
    for d, g in both.groupby("direction", sort=False):
        for t in ("all", *g["type"].unique()):
            s = g if t == "all" else g[g["type"] == t]
            x, y = s["effect_exact"].to_numpy(), s["effect_approx"].to_numpy()
            top = lambda col: set(s.nlargest(5, col)["component"])  # noqa: E731
            rows.append({"direction": d, "type": t, "n_components": len(s), "spearman": spearman(x, y),
                         "pearson": float(np.corrcoef(x, y)[0, 1]) if len(s) > 2 and x.std() and y.std() else float("nan"),
                         "top5_overlap": len(top("effect_exact") & top("effect_approx"))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- direct logit attribution
def _take(act: Tensor, hook: Any, *, key: str, out: dict[str, Tensor], rows: Tensor, cols: Tensor) -> None:  # noqa: ARG001
    out[key] = act[rows, cols].detach().float()


def steered_reads(model: Model, vector: SteeringVector, multiplier: float, batch: Any, cols: Tensor, batch_size: int,
                  hooks_for: Callable[[Tensor, Tensor, dict], list], **forward: Any) -> Iterator[tuple]:
    """Per batch of ``batch_size`` rows of ``batch`` (``_read_points``'s): ``(idx, sub, cols, [unsteered, steered])``,
    each of the last two the dict that the hooks ``hooks_for(rows, cols, out)`` filled in one forward pass of the
    batch, unsteered and with ``multiplier * vector`` (``forward``: the pass's keywords, e.g. ``stop_at_layer``)."""
    dev = model.cfg.device
    for s in range(0, len(cols), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(cols)))
        sub = batch.select(idx).to(dev)
        rows, c = torch.arange(len(idx), device=dev), cols[idx].to(dev)
        reads = []
        for steered in (False, True):
            out: dict = {}
            with steer(model, [vector] if steered else [], [multiplier] if steered else []):
                with model.hooks(fwd_hooks=hooks_for(rows, c, out)):  # after steer's hook: reads steered values
                    model(sub.tokens, attention_mask=sub.attention_mask, **forward)
            reads.append(out)
        yield idx, sub, c, reads


def _read_direction(model: Model, pos_t: Tensor, neg_t: Tensor) -> Tensor:
    """``(b, d_model)`` ``u = w * (W_U[:, p] - W_U[:, n])``, centred when the final norm centres."""
    w_u = model.W_U.detach().float()
    u = (w_u[:, pos_t] - w_u[:, neg_t]).T  # (b, d_model)
    w = getattr(model.ln_final, "w", None)
    if w is not None:
        u = u * w.detach().float()
    if model.cfg.normalization_type in ("LN", "LNPre") and not getattr(model.cfg, "final_rms", False):
        u = u - u.mean(-1, keepdim=True)
    return u


@torch.no_grad()
def steered_dla(model: Model, vector: SteeringVector, pairs: Sequence[Any], multiplier: float = 1.0,
                config: PatchingConfig | None = None, **options: Any) -> Result:
    """Direct logit attribution of the steered change, per downstream head and MLP (module docstring).

    Args:
        model, vector, pairs, multiplier, config, options: as ``activation_patching`` (only
            ``system_prompt``, ``batch_size``, ``n_boot`` and ``seed`` are used; the read point is the
            logit lens's: no truncation).

    Returns:
        A ``direct_logit_attribution`` result: ``rows`` per component (``component, type`` in ``head,
        attn_bias, mlp, upstream, vector``, ``layer, head, dla`` = mean over pairs with
        ``dla_ci_low/high``), ``layers`` (per block after the hook: ``attn, mlp, total, cumulative``,
        the cumulative sum starting from ``upstream + vector``), ``total_logit_diff_change`` (the sum of
        all rows: the logit lens's final ``delta_logodds``), ``multiplier``, ``vector``.
    """
    cfg = with_options(PatchingConfig, config, options, "steered_dla")
    pairs, _ = check_inputs(model, vector, pairs, multiplier, cfg, starts_at_layer=False)
    start, direct = entry(model, vector.hook_name)
    if not direct:
        raise ValueError(f"vector hook {vector.hook_name!r}: direct logit attribution needs a vector on the "
                         "residual stream (hook_resid_pre or hook_resid_post)")
    n_layers, dev = model.cfg.n_layers, model.cfg.device
    batch, cols, pos_t, neg_t = _read_points(model, pairs, cfg.system_prompt, None)
    names = {f"z{L}": f"blocks.{L}.attn.hook_z" for L in range(start, n_layers)}
    names |= {f"mlp{L}": f"blocks.{L}.hook_mlp_out" for L in range(start, n_layers)}
    names["x"] = f"blocks.{start}.hook_resid_pre" if start < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
    names["h"] = f"blocks.{n_layers - 1}.hook_resid_post"
    has_scale = "ln_final.hook_scale" in model.hook_dict
    if has_scale:
        names["scale"] = "ln_final.hook_scale"
    per: dict[str, list[Tensor]] = {}
    # each block's attention output weights in fp32, once for all batches (the bridge's attention has no b_O)
    attn_out = {L: (model.blocks[L].attn.W_O.detach().float(),
                    torch.zeros(model.cfg.d_model, device=dev) if model.blocks[L].attn.b_O is None
                    else model.blocks[L].attn.b_O.detach().float()) for L in range(start, n_layers)}

    def hooks_for(rows: Tensor, c: Tensor, out: dict) -> list:
        return [(name, partial(_take, key=k, out=out, rows=rows, cols=c)) for k, name in names.items()]

    for idx, _, _, reads in steered_reads(model, vector, multiplier, batch, cols, cfg.batch_size, hooks_for):
        if not has_scale:
            for out in reads:
                out["scale"] = torch.ones(len(idx), 1, device=dev)
        u = _read_direction(model, pos_t[idx].to(dev), neg_t[idx].to(dev))  # (b, d_model)
        proj = lambda x, r: (x * u).sum(-1) / reads[r]["scale"].view(-1)  # noqa: E731  (b,)
        contrib = {"upstream": proj(reads[0]["x"], 1) - proj(reads[0]["x"], 0),
                   "vector": proj(reads[1]["x"] - reads[0]["x"], 1)}
        for L in range(start, n_layers):
            W_O, b_O = attn_out[L]
            outs = [torch.einsum("bhd,hdm->bhm", r[f"z{L}"], W_O) for r in reads]  # (b, heads, d_model)
            for h in range(model.cfg.n_heads):
                contrib[f"L{L}H{h}"] = proj(outs[1][:, h], 1) - proj(outs[0][:, h], 0)
            contrib[f"L{L} attn_bias"] = proj(b_O.expand_as(reads[0]["x"]), 1) - proj(b_O.expand_as(reads[0]["x"]), 0)
            contrib[f"L{L} mlp"] = proj(reads[1][f"mlp{L}"], 1) - proj(reads[0][f"mlp{L}"], 0)
        for k, v in contrib.items():
            per.setdefault(k, []).append(v.double().cpu())
    values = {k: torch.cat(v).numpy() for k, v in per.items()}
    table = []
    for k, v in values.items():
        if k in ("upstream", "vector"):
            t, layer, head = k, start, -1
        elif "H" in k and " " not in k:
            t, (layer, head) = "head", map(int, k[1:].split("H"))
        else:
            t, layer, head = k.split(" ")[1], int(k[1:].split(" ")[0]), -1
        e = effect_vs_zero(v, np.zeros_like(v), n_boot=cfg.n_boot, seed=cfg.seed)
        table.append({"component": k, "type": t, "layer": layer, "head": head, **e.columns("dla")})
    rows_df = pd.DataFrame(table)
    layers, running = [], float(rows_df[rows_df.type.isin(["upstream", "vector"])].dla.sum())
    for L in range(start, n_layers):
        g = rows_df[(rows_df.layer == L) & rows_df.type.isin(["head", "attn_bias", "mlp"])]
        attn, mlp = float(g[g.type != "mlp"].dla.sum()), float(g[g.type == "mlp"].dla.sum())
        running += attn + mlp
        layers.append({"layer": L, "attn": attn, "mlp": mlp, "total": attn + mlp, "cumulative": running})
    total = sum(values.values())
    return result(DIRECT_LOGIT_ATTRIBUTION, rows=rows_df, layers=pd.DataFrame(layers), multiplier=float(multiplier),
                  vector={"method": vector.method, "hook_name": vector.hook_name, "layer": vector.layer},
                  n_pairs=len(pairs), total_logit_diff_change=float(total.mean()))


__all__ = ["attribution_patching", "rank_agreement", "spearman", "steered_dla", "steered_reads"]
