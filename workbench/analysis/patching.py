"""Activation patching of a steering effect: which components after the hook carry a vector's effect.

Activation patching (Vig et al. 2020, arXiv 2004.12265; Meng et al. 2022, arXiv 2202.05262; Heimersheim
and Nanda 2024, arXiv 2404.15255 for its conventions), applied to a steering vector ``m v`` (BiPO, Cao
et al. 2024, arXiv 2406.00045; CAA, Rimsky et al. 2023, arXiv 2312.06681). The quantity is the held-out
preference log-odds ``LO = log p(matching) - log p(not matching)`` (answer tokens summed, scored by the
engine: same items, truncation and read-out as ``workbench.evaluate.preference.logodds_curve``). Per pair
``i`` the **total effect** is ``T_i = LO_i(steered) - LO_i(unsteered)``. For each component ``c``
downstream of the hook (each attention head's ``hook_z``, which enters the residual through ``W_O``;
each MLP's ``hook_mlp_out``; each block's whole write ``hook_attn_out + hook_mlp_out``), two patches:

* **necessity**: the steered run with ``c``'s output restored to its unsteered value; the effect
  carried is ``N_ci = LO_i(steered) - LO_i(steered, c <- unsteered)`` (what is lost without ``c``);
* **sufficiency**: the unsteered run with only ``c``'s output taken from the steered run; the effect
  carried is ``S_ci = LO_i(unsteered, c <- steered) - LO_i(unsteered)``.

The **direct path** of the vector is a component too: ``m v`` added to (sufficiency) or removed from
(necessity) the final residual only, so that no block reads it. (Restoring a block's whole *residual*
would trivially carry 100 % at every layer after the hook, so blocks are patched by their write.)

Reported per component (``rows``): ``effect`` = the mean over pairs of ``N_ci`` (or ``S_ci``) with its
paired bootstrap interval (``workbench.evaluate.effects.effect_vs_zero``), and the **share** =
``mean_i N_ci / mean_i T_i``, the ratio of means, with the interval of that ratio over the same
resampled pairs (``retained_vs_zero``). The ratio of means is the share (per-pair ratios blow up on
pairs whose total effect is near zero).

**What runs, and what is cached.** Per batch of ``b`` pairs (``k = 2`` answers each), with ``P`` and
``A`` the padded prompt and answer lengths, ``T = b P + 2 b A`` token positions and ``S = n_layers -
start`` blocks after the hook: the blocks before ``start`` run once (the engine's prefix sharing,
``workbench.engine.forward.Stream``); the steered and the unsteered runs then go up one block at a time
and keep, for both runs, the residual entering every block and the activations patched there, i.e.
``2 * S * T * (d_model + n_heads * d_head + 2 * d_model)`` values in the model's dtype (plus one
block's activations). Each patched run starts at the component's own block from the cached residual
of the run it patches (``start_at_layer``), with every prompt run once for both of its answers
(the engine's prompt sharing and key/value cache). Cost: ``2 * sum_c (n_layers - layer_c)`` blocks
over ``T`` positions for ``c`` over heads, MLPs and blocks.

    >>> res = activation_patching(model, v_bipo, test_pairs, multiplier=1.0)
    >>> res.table().query("direction == 'necessity'").nlargest(5, "share")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.backend import Model, is_bridge
from workbench.core.options import with_options
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
from workbench.core.results import ACTIVATION_PATCHING, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.pairs import check_pairs
from workbench.engine.conditions import entry
from workbench.engine.forward import Batch, Stream, assemble, check_positions, length_batches, read_answers, run_blocks
from workbench.engine.items import tokenize_items
from workbench.engine.runners import make_runner
from workbench.evaluate.effects import effect_vs_zero, retained_vs_zero

logger = logging.getLogger(__name__)

Direction = Literal["necessity", "sufficiency"]
COMPONENT_TYPES = ("head", "mlp", "block", "direct")
DIRECTIONS = ("necessity", "sufficiency")


@dataclass(frozen=True)
class PatchingConfig:
    """Options of ``activation_patching`` and ``attribution_patching`` (and the route comparison)."""

    components: tuple[str, ...] = COMPONENT_TYPES  # which of "head", "mlp", "block", "direct"
    directions: tuple[str, ...] = DIRECTIONS  # "necessity" and/or "sufficiency"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # as the evaluation's
    append_end_of_turn: bool = True  # as the evaluation's
    max_length: int | None = 256  # the engine's truncation bound, as the evaluation's
    batch_size: int = 20  # pairs per batch (all 20 held-out pairs in one batch by default)
    n_boot: int = 1000  # bootstrap resamples of pairs for the intervals
    seed: int = 0  # bootstrap seed
    progress: bool = False  # a progress bar over components

    def __post_init__(self) -> None:
        bad = [c for c in self.components if c not in COMPONENT_TYPES]
        if bad or not self.components:
            raise ValueError(f"components={self.components!r}: use some of {', '.join(COMPONENT_TYPES)}")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise ValueError(f"directions={self.directions!r}: use some of {', '.join(DIRECTIONS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Component:
    """One patched component: ``type`` in COMPONENT_TYPES, its block (``n_layers`` for the direct path), head."""

    type: str
    layer: int
    head: int = -1

    @property
    def name(self) -> str:
        if self.type == "head":
            return f"L{self.layer}H{self.head}"
        if self.type == "direct":
            return "direct"
        return f"L{self.layer} {self.type}"


def downstream_components(model: Model, start: int, types: Sequence[str] = COMPONENT_TYPES) -> list[Component]:
    """Heads, MLPs and blocks of blocks ``start..n_layers-1`` (and the direct path), in forward order."""
    out = []
    for layer in range(start, model.cfg.n_layers):
        if "head" in types:
            out += [Component("head", layer, h) for h in range(model.cfg.n_heads)]
        if "mlp" in types:
            out.append(Component("mlp", layer))
        if "block" in types:
            out.append(Component("block", layer))
    if "direct" in types:
        out.append(Component("direct", model.cfg.n_layers))
    return out


def hook_names(layer: int) -> dict[str, str]:
    """The hook points patched in block ``layer``."""
    return {"z": f"blocks.{layer}.attn.hook_z", "attn": f"blocks.{layer}.hook_attn_out",
            "mlp": f"blocks.{layer}.hook_mlp_out"}


def _phase(act: Tensor, n_prompts: int) -> str:
    """``"p"`` in the prompt pass (one row per pair), ``"a"`` in the answer pass (one row per answer)."""
    return "p" if act.shape[0] == n_prompts else "a"


def _store(act: Tensor, hook: Any, *, key: str, out: dict[tuple[str, str], Tensor], n_prompts: int) -> None:  # noqa: ARG001
    out[(key, _phase(act, n_prompts))] = act.detach().clone()


def _patch(act: Tensor, hook: Any, *, key: str, source: dict[tuple[str, str], Tensor], n_prompts: int,  # noqa: ARG001
           head: int = -1) -> Tensor:
    src = source[(key, _phase(act, n_prompts))].to(act.dtype)
    if head < 0:
        return src
    act = act.clone()
    act[:, :, head] = src[:, :, head]  # (rows, pos, d_head) of one head
    return act


@dataclass
class Prepared:
    """One batch of pairs: its ``Batch``, and per run (``"s"`` steered, ``"u"`` unsteered) the residual
    entering every block ``start..n_layers`` (``resid[run][layer] = (prompt, answers)``) and the
    activations patched there (``acts[run][(key, phase)]``, key ``"z{L}"``/``"attn{L}"``/``"mlp{L}"``)."""

    batch: Batch
    start: int
    resid: dict[str, dict[int, tuple[Tensor, Tensor]]]
    acts: dict[str, dict[tuple[str, str], Tensor]]
    hooked: list[tuple[str, Tensor]]  # the vector's delta where it is added by a hook (not at ``start``'s input)
    delta: Tensor  # (d_model,) m v


def _vector_inputs(model: Model, vector: SteeringVector, multiplier: float) -> tuple[int, bool, Tensor]:
    start, direct = entry(model, vector.hook_name)
    return start, direct, vector.vector.float().to(model.cfg.device) * float(multiplier)


@torch.no_grad()
def prepare(model: Model, runner: Model, batch: Batch, vector: SteeringVector, multiplier: float,
            capture: bool = True) -> Prepared:
    """Run the prefix once and both runs block by block, keeping residuals and activations (module docstring)."""
    start, direct, delta = _vector_inputs(model, vector, multiplier)
    x0 = Stream(model, batch).at(start)  # (prompt, answers) entering block ``start``: the shared prefix
    n = model.cfg.n_layers
    hooked = [] if direct else [(vector.hook_name, delta)]
    resid: dict[str, dict[int, tuple[Tensor, Tensor]]] = {}
    acts: dict[str, dict[tuple[str, str], Tensor]] = {}
    b = batch.tp.shape[0]
    for run in ("u", "s"):
        x_p, x_a = x0
        if run == "s" and direct:
            d = delta.to(x_p.device, x_p.dtype)
            x_p, x_a = x_p + d, x_a + d
        resid[run], acts[run] = {start: (x_p, x_a)}, {}
        for layer in range(start, n):
            hooks = []
            if capture:
                hooks = [(name, partial(_store, key=f"{key}{layer}", out=acts[run], n_prompts=b))
                         for key, name in hook_names(layer).items()]
            with runner.hooks(fwd_hooks=hooks):
                x_p, x_a = run_blocks(runner, layer, layer + 1, x_p, x_a, batch,
                                      hooked if run == "s" else [])
            resid[run][layer + 1] = (x_p, x_a)
    return Prepared(batch, start, resid, acts, hooked, delta)


def _logodds(model: Model, r_p: Tensor, r_a: Tensor, batch: Batch) -> Tensor:
    lp = read_answers(r_p, r_a, batch).logprobs(model, len(batch.owner)).view(-1, 2)  # (b, 2)
    return (lp[:, 0] - lp[:, 1]).float().cpu()  # (b,)


def _patch_hooks(comp: Component, source: dict[tuple[str, str], Tensor], b: int) -> list[tuple[str, Callable]]:
    names = hook_names(comp.layer)
    if comp.type == "head":
        return [(names["z"], partial(_patch, key=f"z{comp.layer}", source=source, n_prompts=b, head=comp.head))]
    keys = ("mlp",) if comp.type == "mlp" else ("attn", "mlp")
    return [(names[k], partial(_patch, key=f"{k}{comp.layer}", source=source, n_prompts=b)) for k in keys]


@torch.no_grad()
def patched_logodds(model: Model, runner: Model, prep: Prepared, comp: Component, direction: str) -> Tensor:
    """``(b,)`` log-odds of one patched run (necessity: steered run, ``comp`` from the unsteered one)."""
    run, other = ("s", "u") if direction == "necessity" else ("u", "s")
    batch, n = prep.batch, model.cfg.n_layers
    if comp.type == "direct":
        r_p, r_a = prep.resid[run][n]
        d = (-1.0 if direction == "necessity" else 1.0) * prep.delta.to(r_p.device, r_p.dtype)
        return _logodds(model, r_p + d, r_a + d, batch)
    x_p, x_a = prep.resid[run][comp.layer]
    hooked = prep.hooked if run == "s" else []
    with runner.hooks(fwd_hooks=_patch_hooks(comp, prep.acts[other], batch.tp.shape[0])):
        r_p, r_a = run_blocks(runner, comp.layer, n, x_p, x_a, batch, hooked)
    return _logodds(model, r_p, r_a, batch)


def check_inputs(model: Model, vector: SteeringVector, pairs: Sequence[Any], multiplier: float,
                 cfg: PatchingConfig, *, starts_at_layer: bool = True) -> tuple[list[Any], Any]:
    """Check once at the edge; the tokenised items (the engine's truncation rule). ``starts_at_layer``: the
    analysis runs blocks from a cached residual (activation and attribution patching), which a
    TransformerBridge cannot (its ``start_at_layer`` runs every block); full forward passes with hooks
    (direct logit attribution, attention shifts) run on either line."""
    if starts_at_layer and is_bridge(model):
        raise NotImplementedError("activation and attribution patching run blocks from a cached residual "
                                  "(start_at_layer), which a TransformerBridge cannot: load the model as a "
                                  "HookedTransformer (TransformerLens 3.x); steered_dla and attention_shifts "
                                  "run on the bridge")
    check_positions(model)
    if not isinstance(vector, SteeringVector):
        raise TypeError(f"vector is a {type(vector).__name__}, not a workbench.SteeringVector")
    vector.check_compatible(model)
    if not np.isfinite(float(multiplier)) or float(multiplier) == 0:
        raise ValueError(f"multiplier={multiplier!r}: give a finite non-zero multiplier (the steered run)")
    pairs = check_pairs(pairs)
    prompts, answers = prompts_and_answers(model, pairs, cfg.system_prompt, append_end_of_turn=cfg.append_end_of_turn)
    return pairs, tokenize_items(model, prompts, answers, cfg.max_length)


def effect_rows(comps: Sequence[Component], directions: Sequence[str], lo_s: np.ndarray, lo_u: np.ndarray,
                patched: dict[tuple[int, str], np.ndarray], n_boot: int, seed: int) -> pd.DataFrame:
    """The ``rows`` table: per (direction, component) the mean effect and the share, with intervals."""
    rows = []
    for d in directions:
        for i, c in enumerate(comps):
            p = patched[(i, d)]
            at_m, at_zero = (lo_s, p) if d == "necessity" else (p, lo_u)
            e = effect_vs_zero(at_m, at_zero, n_boot=n_boot, seed=seed)
            _, _, share = retained_vs_zero(lo_s, lo_u, at_m, at_zero, n_boot=n_boot, seed=seed)
            rows.append({"direction": d, "component": c.name, "type": c.type, "layer": c.layer, "head": c.head,
                         **e.columns("effect"), **share.columns("share")})
    return pd.DataFrame(rows)


def pair_rows(comps: Sequence[Component], directions: Sequence[str], lo_s: np.ndarray, lo_u: np.ndarray,
              patched: dict[tuple[int, str], np.ndarray]) -> pd.DataFrame:
    """The ``pairs`` table: per (direction, component, pair) the patched log-odds and the effect carried."""
    frames = []
    for d in directions:
        for i, c in enumerate(comps):
            p = patched[(i, d)]
            frames.append(pd.DataFrame({"direction": d, "component": c.name, "pair": np.arange(len(p)),
                                        "patched_logodds": p,
                                        "effect": (lo_s - p) if d == "necessity" else (p - lo_u)}))
    return pd.concat(frames, ignore_index=True)


def total_fields(vector: SteeringVector, multiplier: float, lo_s: np.ndarray, lo_u: np.ndarray, n_boot: int,
                 seed: int) -> dict[str, Any]:
    """The fields every patching result shares: the vector, the multiplier and the total effect."""
    total = effect_vs_zero(lo_s, lo_u, n_boot=n_boot, seed=seed)
    return {"vector": {"method": vector.method, "hook_name": vector.hook_name, "layer": vector.layer,
                       "norm": float(vector.vector.float().norm())},
            "multiplier": float(multiplier), "n_pairs": int(len(lo_s)), **total.columns("total_effect"),
            "totals": pd.DataFrame({"pair": np.arange(len(lo_s)), "logodds_unsteered": lo_u,
                                    "logodds_steered": lo_s, "total_effect": lo_s - lo_u})}


def activation_patching(model: Model, vector: SteeringVector, pairs: Sequence[Any], multiplier: float = 1.0,
                        config: PatchingConfig | None = None, **options: Any) -> Result:
    """Exact activation patching of a steering effect, per downstream component (module docstring).

    Args:
        model: a ``HookedTransformer`` (unchanged; hooks exist only during the call).
        vector: the steering vector (added at every position of its hook, as the evaluation does).
        pairs: held-out preference pairs.
        multiplier: ``m`` of the steered run (the evaluation's multiplier).
        config: ``PatchingConfig``; ``**options`` override its fields.

    Returns:
        An ``activation_patching`` result: ``rows`` (per ``direction, component, type, layer, head``:
        ``effect`` with ``effect_ci_low/high``, ``share`` with ``share_ci_low/high``), ``pairs`` (per
        direction, component and pair: ``patched_logodds, effect``), ``totals`` (per pair:
        ``logodds_unsteered, logodds_steered, total_effect``), and ``vector``, ``multiplier``,
        ``n_pairs``, ``total_effect`` (+ interval), ``seconds``.
    """
    cfg = with_options(PatchingConfig, config, options, "activation_patching")
    pairs, items = check_inputs(model, vector, pairs, multiplier, cfg)
    t0 = time.perf_counter()
    start = entry(model, vector.hook_name)[0]
    runner = make_runner(model, start)
    comps = downstream_components(model, start, cfg.components)
    n = len(pairs)
    lo_s, lo_u = np.zeros(n), np.zeros(n)
    patched = {(i, d): np.zeros(n) for i in range(len(comps)) for d in cfg.directions}
    for idx in length_batches(items, cfg.batch_size):
        batch = assemble(model, items, idx)
        prep = prepare(model, runner, batch, vector, multiplier)
        rows = batch.idx.numpy()
        nl = model.cfg.n_layers
        lo_s[rows] = _logodds(model, *prep.resid["s"][nl], batch).double().numpy()
        lo_u[rows] = _logodds(model, *prep.resid["u"][nl], batch).double().numpy()
        todo = [(i, d) for i in range(len(comps)) for d in cfg.directions]
        for i, d in tqdm(todo, desc="patching", disable=not cfg.progress, leave=False):
            patched[(i, d)][rows] = patched_logodds(model, runner, prep, comps[i], d).double().numpy()
        del prep
    seconds = time.perf_counter() - t0
    return result(ACTIVATION_PATCHING, **total_fields(vector, multiplier, lo_s, lo_u, cfg.n_boot, cfg.seed),
                  rows=effect_rows(comps, cfg.directions, lo_s, lo_u, patched, cfg.n_boot, cfg.seed),
                  pairs=pair_rows(comps, cfg.directions, lo_s, lo_u, patched), seconds=round(seconds, 3))


__all__ = ["COMPONENT_TYPES", "DIRECTIONS", "Component", "PatchingConfig", "activation_patching",
           "downstream_components"]
