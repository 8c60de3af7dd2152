"""Layer sweeps: a steering vector at every layer, its norm, direction and steering effect.

Where in the network does a behavior live? CAA (Rimsky et al. 2023, arXiv 2312.06681) and BiPO
(Cao et al. 2024, arXiv 2406.00045) both pick a layer by sweeping: make a vector at each layer and
measure how much it steers. ``layer_sweep`` does that for mean-difference (CAA) vectors, extracted
at all layers from ONE forward pass per batch (``workbench.train.baselines.mean_difference_vectors``), or
for BiPO vectors trained layer by layer (``workbench.train.bipo.train_bipo``). Each layer's vector is then
scored on held-out pairs.

The steering effect is the change of the mean held-out log-odds
``log p(matching | prompt) - log p(not matching | prompt)`` (summed answer log-probs, the model's
end-of-turn string appended to each answer, BiPO's chat prompt) at multiplier ``m`` against ``m = 0``,
computed for every layer's vector at once by the scoring engine
(``workbench.engine.scoring.preference_logodds``: each block below a vector runs once per batch), with
the one effect rule of ``workbench.evaluate.effects`` (mean shift, paired bootstrap interval).
Each layer also gets the predicted and measured reliability of its vector: the coherence of the
training pairs' activation differences (Braun et al. 2025, arXiv 2505.22637;
``workbench.train.baselines.difference_coherence``) and the share of held-out pairs the vector moves
the wrong way (anti-steerable, Tan et al. 2024, arXiv 2407.12404).
The options travel as one ``SweepConfig``; ``layer_sweep`` returns a ``SweepResult`` (a ``sweep``
result that also holds the vectors).

Layer specs (``parse_layers``): ``"all"``, ``"0-29"``, ``"0,5,10"``, ``"10-20:2"`` and combinations
(``"0-4,10,20-28:4"``); ranges are inclusive.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.analysis.similarity import cosine
from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT
from workbench.core.results import SWEEP, Result, records, result, result_table
from workbench.core.vector import SteeringVector
from workbench.data.pairs import check_pairs
from workbench.engine.conditions import Condition
from workbench.engine.scoring import preference_logodds
from workbench.evaluate.effects import effect_vs_zero
from workbench.evaluate.preference import least_squares_slopes
from workbench.train.baselines import POSITIONS, layer_coherence, mean_difference_vectors
from workbench.train.bipo import BiPOConfig, train_bipo

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)(?::(\d+))?$")


# --------------------------------------------------------------------------- layer specs
def parse_layers(spec: str | int | Sequence[int], n_layers: int | None = None) -> list[int]:
    """Sorted unique layers from ``"all"``, ``"0-29"``, ``"0,5,10"``, ``"10-20:2"`` (inclusive) or a list.

    ``"all"`` needs ``n_layers``.

    Raises:
        ValueError: naming the bad part of the spec, or a layer outside ``0..n_layers-1``.
    """
    if isinstance(spec, str) and spec.strip().lower() == "all":
        if n_layers is None:
            raise ValueError("layers='all' needs the model's number of layers (n_layers=)")
        spec = f"0-{n_layers - 1}"
    if isinstance(spec, int):
        layers = [spec]
    elif isinstance(spec, str):
        layers = []
        for part in (p.strip() for p in spec.split(",")):
            if part.isdigit():
                layers.append(int(part))
                continue
            m = _RANGE.match(part)
            if not m:
                raise ValueError(f"layers={spec!r}: cannot read {part!r} (use e.g. '0-29', '0,5,10', '10-20:2')")
            lo, hi, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
            if hi < lo or step < 1:
                raise ValueError(f"layers={spec!r}: {part!r} is an empty range")
            layers.extend(range(lo, hi + 1, step))
    else:
        layers = [int(x) for x in spec]
    if not layers:
        raise ValueError(f"layers={spec!r}: no layer given")
    if n_layers is not None:
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise ValueError(f"layers={spec!r}: {bad} out of range (the model has {n_layers} layers: 0..{n_layers - 1})")
    return sorted(set(layers))


def steering_effects(model: Model, vectors: Mapping[Any, SteeringVector], pairs: Sequence[Any],
                     multipliers: Sequence[float] = (-1.0, 1.0), *, n_boot: int = 1000, seed: int = 0,
                     **kwargs: Any) -> pd.DataFrame:
    """Effect of each vector alone at each multiplier: mean log-odds change against ``m = 0``.

    The building block of ``layer_sweep`` (and of ``workbench.studies.cells``): a plain table, whose
    per-layer numbers the sweep result holds.

    Returns:
        Tidy table, columns ``key, multiplier, logodds`` (mean), ``effect`` (mean change against the
        unsteered model), ``effect_ci_low, effect_ci_high`` (its paired percentile bootstrap interval
        over pairs, ``workbench.evaluate.effects.effect_vs_zero`` with ``n_boot`` and ``seed``);
        ``attrs["base_logodds"]``: the unsteered mean. Other keyword arguments go to
        ``workbench.engine.scoring.preference_logodds``.

    Raises:
        ValueError, TypeError: ``pairs`` are not preference pairs (``workbench.data.pairs.check_pairs``).
    """
    return _steering_effects(model, vectors, check_pairs(pairs), multipliers, n_boot=n_boot, seed=seed, **kwargs)


def _steering_effects(model: Model, vectors: Mapping[Any, SteeringVector], pairs: list[Any],
                      multipliers: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                      **kwargs: Any) -> pd.DataFrame:
    """``steering_effects`` on checked pairs."""
    keys = list(vectors)
    conds: list[Condition] = [()] + [((vectors[k], float(m)),) for k in keys for m in multipliers]
    lo = preference_logodds(model, pairs, conds, **kwargs)  # (1 + K*M, n)
    base = lo[0]
    rows, c = [], 1
    for key in keys:
        for m in multipliers:
            effect = effect_vs_zero(lo[c], base, n_boot=n_boot, seed=seed)
            rows.append({"key": key, "multiplier": float(m), "logodds": float(lo[c].mean())} | effect.columns())
            c += 1
    table = pd.DataFrame(rows)
    table.attrs["base_logodds"] = float(base.mean())
    # per-example reliability (Tan et al. 2024): the share of pairs whose least-squares slope over
    # m = 0 and the multipliers is negative (the vector moves them the wrong way)
    mults = np.array([0.0, *map(float, multipliers)])
    anti = {}
    for k, key in enumerate(keys):
        ys = lo[[0, *range(1 + k * len(multipliers), 1 + (k + 1) * len(multipliers))]].double().numpy()  # (1 + M, n)
        anti[key] = float((least_squares_slopes(mults, ys.T) < 0).mean()) if len(set(mults)) > 1 else float("nan")
    table.attrs["anti_steerable"] = anti
    return table


def effect_column(m: float) -> str:
    """Column name of the effect at multiplier ``m``: ``effect@+1``, ``effect@-0.5``."""
    return f"effect@{m:+g}"


# --------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class SweepConfig:
    """How ``layer_sweep`` makes and measures the vectors (one field per option)."""

    method: Literal["caa", "bipo"] = "caa"  # caa: one pass for all layers; bipo: train_bipo per layer
    multipliers: tuple[float, ...] = (-1.0, 1.0)  # where the effect is measured (against m = 0)
    hook: str = "resid_post"  # hook point in each block
    bipo_config: BiPOConfig | None = None  # BiPO's settings (its layer and hook are replaced per layer)
    position: str = "answer_mean"  # CAA position rule (workbench.train.baselines); also the coherence's
    coherence: bool = True  # the coherence predictor per layer (Braun et al. 2025; one extra pass for BiPO)
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # the chat prompt's system turn
    batch_size: int = 8  # pairs per forward pass
    progress: bool = False  # tqdm bars

    def __post_init__(self) -> None:
        object.__setattr__(self, "multipliers", tuple(float(m) for m in self.multipliers))
        if self.method not in ("caa", "bipo"):
            raise ValueError(f"method={self.method!r}: use 'caa' or 'bipo'")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position rule {self.position!r}; valid: {', '.join(POSITIONS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class SweepResult(Result):
    """A layer sweep: a ``sweep`` result (``workbench.core.results.Result``) that also holds the vectors.

    Its table (``.table()``) has one row per layer: ``layer, method, hook_name, norm, cos_ref`` (cosine
    to the reference vector, when given), ``cos_prev`` (to the previous swept layer's vector),
    ``base_logodds``, one ``effect@<m>`` column per multiplier, ``anti_steerable`` (share of held-out
    pairs whose least-squares slope over ``m = 0`` and the multipliers is negative: the measured
    reliability is one minus it) and ``coherence, coherence_std`` (the predictor of Braun et al. 2025:
    the training pairs' activation differences' mean cosine to their mean, at the layer). ``.vectors`` is ``{layer: vector}``
    (not written to JSON; ``save_vectors`` writes them), ``.info`` what was run. Made as
    ``SweepResult(table, vectors, info)`` or from a sweep mapping.
    """

    KIND = SWEEP

    _not_info = ("columns",)

    def __init__(self, table: pd.DataFrame | Mapping[str, Any], vectors: Mapping[int, SteeringVector] | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        if isinstance(table, pd.DataFrame):
            table = result(SWEEP, **dict(info or {}), columns=list(table.columns), rows=table)
        super().__init__(table)
        self.vectors: dict[int, SteeringVector] = dict(vectors or {})

    def records(self) -> list[dict[str, Any]]:
        """The per-layer table as JSON-ready row dicts."""
        return records(self["rows"])

    def table(self, name: str | None = None) -> pd.DataFrame:
        """The per-layer table (columns in their written order)."""
        table = result_table(self, name)
        columns = self.get("columns")
        return table[[c for c in columns if c in table.columns]] if name is None and columns else table


    def save_vectors(self, directory: str | Path) -> list[str]:
        """Save each layer's vector to ``directory/layer_<L>``; returns the paths."""
        return [str(v.save(Path(directory) / f"layer_{layer:02d}")) for layer, v in sorted(self.vectors.items())]


def _bipo_vectors(model: Model, pairs: Sequence[Any], layers: Sequence[int], hook: str,
                  bipo_config: BiPOConfig | None, progress: bool) -> tuple[dict[int, SteeringVector], dict[int, float]]:
    base = bipo_config if bipo_config is not None else BiPOConfig()
    vectors, seconds = {}, {}
    for layer in tqdm(layers, desc="BiPO layers", disable=not progress):
        t0 = time.perf_counter()
        trained = train_bipo(model, pairs, dataclasses.replace(base, layer=layer, hook=hook), progress=False)
        seconds[layer] = time.perf_counter() - t0
        vectors[layer] = trained.vector
        logger.info("BiPO at %s: norm %.3g in %.1f s", trained.vector.hook_name, trained.vector.norm, seconds[layer])
    return vectors, seconds


def _coherence(model: Model, train_pairs: Sequence[Any] | None, vecs: Mapping[int, SteeringVector],
               layers: Sequence[int], cfg: SweepConfig) -> dict[int, dict[str, float]]:
    """The coherence predictor per layer: from the CAA vectors' metadata, else one pass over the training pairs."""
    if all("coherence" in vecs[x].metadata for x in layers):
        return {x: vecs[x].metadata for x in layers}
    if not train_pairs:
        return {}
    return layer_coherence(model, train_pairs, layers, hook=cfg.hook,
                           position=cfg.position if cfg.position != "prompt_last" else "answer_mean",
                           system_prompt=cfg.system_prompt, batch_size=cfg.batch_size, progress=cfg.progress)


def layer_sweep(model: Model, train_pairs: Sequence[Any], eval_pairs: Sequence[Any],
                layers: str | Sequence[int], config: SweepConfig | None = None, *,
                vectors: Mapping[int, SteeringVector] | None = None,
                reference: SteeringVector | Mapping[int, SteeringVector] | int | None = None,
                **options: Any) -> SweepResult:
    """Make a vector at each layer and measure its norm, direction and steering effect.

    Args:
        model: the model (unchanged after the call).
        train_pairs: pairs the vectors are made from (ignored when ``vectors`` is given; checked by the
            maker, ``mean_difference_vectors`` or ``train_bipo``).
        eval_pairs: held-out pairs for the log-odds effect (checked here, before any vector is made).
        layers: a layer spec (``parse_layers``) or a list.
        config: the options (``SweepConfig``: ``method``, ``multipliers``, ``hook``, ``bipo_config``,
            ``position``, ``system_prompt``, ``batch_size``, ``progress``).
        vectors: precomputed ``{layer: vector}`` to evaluate instead of making new ones.
        reference: for the ``cos_ref`` column: one vector, one per layer (e.g. CAA vectors when
            sweeping BiPO), or a layer of this sweep; None leaves the column out.
        options: ``SweepConfig`` fields given as keywords (applied to ``config``).

    Returns:
        ``SweepResult`` (``.table()``, ``.vectors``, ``.save(path)``).

    Raises:
        ValueError, TypeError: ``eval_pairs`` are not preference pairs (``workbench.data.pairs.check_pairs``).

    Example:
        >>> res = layer_sweep(model, train, test, "0-29", method="caa")
        >>> res.table()[["layer", "norm", "effect@+1"]]
    """
    cfg = with_options(SweepConfig, config, options, "layer_sweep")
    method, multipliers, hook = cfg.method, cfg.multipliers, cfg.hook
    layer_list = parse_layers(layers, model.cfg.n_layers)
    eval_pairs = check_pairs(eval_pairs, "eval_pairs")  # once, before any vector is made; nothing below checks
    seconds: dict[int, float] = {}
    t0 = time.perf_counter()
    if vectors is not None:
        missing = [x for x in layer_list if x not in vectors]
        if missing:
            raise ValueError(f"vectors has no vector for layers {missing}")
        vecs = {x: vectors[x] for x in layer_list}
    elif method == "caa":
        vecs = mean_difference_vectors(model, train_pairs, layer_list, hook=hook, position=cfg.position,
                                       system_prompt=cfg.system_prompt, batch_size=cfg.batch_size,
                                       progress=cfg.progress)
    else:
        vecs, seconds = _bipo_vectors(model, train_pairs, layer_list, hook, cfg.bipo_config, cfg.progress)
    make_seconds = time.perf_counter() - t0
    coherence = _coherence(model, train_pairs, vecs, layer_list, cfg) if cfg.coherence else {}
    t1 = time.perf_counter()
    effects = _steering_effects(model, vecs, eval_pairs, multipliers, system_prompt=cfg.system_prompt,
                                batch_size=cfg.batch_size, progress=cfg.progress)
    eval_seconds = time.perf_counter() - t1
    if isinstance(reference, int) and not isinstance(reference, bool):
        if reference not in vecs:
            raise ValueError(f"reference layer {reference} is not one of the swept layers {layer_list}")
        reference = vecs[reference]
    rows, prev = [], None
    for layer in layer_list:
        v = vecs[layer]
        row: dict[str, Any] = {"layer": layer, "method": v.method if vectors is not None else method,
                               "hook_name": v.hook_name, "norm": v.norm}
        ref = reference.get(layer) if isinstance(reference, Mapping) else reference
        if reference is not None:
            row["cos_ref"] = cosine(v, ref) if ref is not None else float("nan")
        row["cos_prev"] = cosine(v, prev) if prev is not None else float("nan")
        row["base_logodds"] = effects.attrs["base_logodds"]
        for m in multipliers:
            sel = effects[(effects.key == layer) & (effects.multiplier == float(m))]
            row[effect_column(m)] = float(sel.effect.iloc[0])
        row["anti_steerable"] = effects.attrs["anti_steerable"][layer]
        if layer in coherence:
            row |= {k: coherence[layer][k] for k in ("coherence", "coherence_std")}
        if layer in seconds:
            row["train_seconds"] = seconds[layer]
        rows.append(row)
        prev = v
    info = {"method": method, "model": str(model.cfg.model_name), "hook": hook, "layers": layer_list,
            "multipliers": [float(m) for m in multipliers], "n_train": len(train_pairs) if vectors is None else None,
            "n_eval": len(eval_pairs), "system_prompt": cfg.system_prompt,
            "position": cfg.position if method == "caa" else None,
            "make_seconds": make_seconds, "eval_seconds": eval_seconds}
    return SweepResult(pd.DataFrame(rows), dict(vecs), info)


def format_sweep(table: pd.DataFrame | Mapping[str, Any]) -> str:
    """Plain-text table of a sweep (its result or its table) for terminals (floats to 3 significant digits)."""
    if isinstance(table, Mapping):
        table = SweepResult.from_dict(table).table()
    return table.to_string(index=False, float_format=lambda x: f"{x:.3g}")


__all__ = ["SweepConfig", "SweepResult", "effect_column", "format_sweep", "layer_sweep", "parse_layers",
           "steering_effects"]
