"""Figures of a directory of results: every result file found, drawn and saved (``workbench figures``).

``figures_for(result)`` maps one result to its figures by its ``kind`` alone (``workbench.core.results``):
an eval result gives one multiplier curve per metric (and per behavior / normalization where they
vary), a sweep one per behavior, every other kind its main figure (``workbench.viz.plots.plot``).
``write_figures(results_dir, out_dir)`` draws every result JSON under a directory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from workbench.core import results
from workbench.core.results import Result, ResultFormatError
from workbench.viz.curves import plot_multiplier_curves, plot_steerability
from workbench.viz.layers import plot_coherence_reliability, plot_layer_sweep
from workbench.viz.plots import PLOTS
from workbench.viz.style import save_figure
from workbench.viz.tables import MALFORMED, OnSkip, log_skip, result_files, why

logger = logging.getLogger(__name__)


def _eval_figures(result: Result) -> dict[str, Figure]:
    """One multiplier-curve figure per metric, and per behavior / normalization where they vary.

    Each figure draws an eval result holding one curve's rows, as the metric they measure."""
    out = {}
    for name in result.tables:
        df = result.table(name)
        if df.empty or "multiplier" not in df.columns:
            logger.info("eval metric %r has no multiplier column; no curve drawn", name)
            continue
        split = [c for c in ("behavior", "dataset", "measure", "normalization", "decoding")
                 if c in df.columns and df[c].nunique() > 1]
        groups = df.groupby(split, sort=False) if split else [((), df)]
        for key, sub in groups:
            key = dict(zip(split, key if isinstance(key, tuple) else (key,)))
            parts = [str(k) for k in key.values() if str(k) != "sum"]  # summed log-odds: the default curve
            title = " / ".join(str(k) for c, k in key.items() if c in ("behavior", "dataset", "decoding")) or None
            measure = str(key.get("measure", sub["measure"].iloc[0] if "measure" in sub.columns else name))
            one = results.result(results.EVAL, metrics={measure: sub})
            out["_".join([name, *parts])] = plot_multiplier_curves(one, metric=measure, title=title,
                                                                   normalization=None)
    if "steerability_pairs" in result.tables and not result.table("steerability_pairs").empty:
        out["steerability"] = plot_steerability(result)  # per-pair slopes per vector (Tan et al. 2024)
    return out


def _sweep_figures(result: Result) -> dict[str, Figure]:
    """One layer-sweep figure, or one per behavior when the sweep holds several."""
    df = result.table()
    behaviors = list(dict.fromkeys(df["behavior"])) if "behavior" in df.columns else [None]
    extra = {}
    if {"coherence", "anti_steerable"} <= set(df.columns) and (df["coherence"].notna() & df["anti_steerable"].notna()).any():
        extra["coherence"] = plot_coherence_reliability(result)  # predicted vs measured reliability (Braun et al. 2025)
    if len(behaviors) <= 1:
        return {"layers": plot_layer_sweep(result)} | extra
    return {f"layers_{b}": plot_layer_sweep(results.from_dict({**result, "rows": results.records(df[df["behavior"] == b])}))
            for b in behaviors} | extra


#: kinds drawn as several figures; every other kind in ``plots.PLOTS`` is one figure named by ``SUFFIX``
SPLIT: dict[str, Callable[[Result], dict[str, Figure]]] = {
    results.EVAL: _eval_figures, results.SWEEP: _sweep_figures}
SUFFIX = {results.COSINE: "heatmap", results.COSINE_METHODS: "layers", results.LOGIT_LENS_TOKENS: "tokens",
          results.LOGIT_LENS_LAYERS: "layers", results.COMPOSITION: "bars", results.TRANSFER_LAYERS: "effect",
          results.TRANSFER_MODEL: "effect", results.BIPO_HISTORY: "training", results.REFUSAL: "rate",
          results.MATCHED_COST: "cost_effect", results.TRANSFER_LORA: "retained", results.ENTANGLEMENT: "matrix",
          results.ACTIVATION_PATCHING: "components", results.ATTRIBUTION_PATCHING: "components",
          results.DIRECT_LOGIT_ATTRIBUTION: "dla", results.ATTENTION_SHIFT: "attention",
          results.MECHANISM_ROUTES: "routes",
          results.PROMPTING: "cost_effect", results.CONDITIONAL: "gate"}


def figures_for(result: Mapping[str, Any] | list[Any]) -> dict[str, Figure]:
    """All figures of one result, keyed by a short suffix (``{"logodds": fig, "ab": fig}``).

    Args:
        result: a result, or the JSON value of a result file (an older schema version is migrated).

    A kind with no figure (``study_summary``) gives ``{}``.

    Raises:
        ResultFormatError: not a result, an unknown kind or a newer schema version.
    """
    res = results.from_dict(result)
    kind = res["kind"]
    if kind in SPLIT:
        return SPLIT[kind](res)
    if kind in PLOTS:
        return {SUFFIX[kind]: PLOTS[kind](res)}
    return {}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("_") or "result"


def write_figures(results_dir: str | Path, out_dir: str | Path, formats: Sequence[str] = ("png", "pdf"), *,
                  on_skip: OnSkip | None = None) -> list[Path]:
    """Draw every figure of every result JSON under ``results_dir`` into ``out_dir``.

    Result files are found as ``workbench.viz.tables.result_files`` finds them (the report does the
    same): JSON with a ``"kind"``, and version-1 BiPO ``history.json`` files. A figure is named after the file's path relative to ``results_dir`` and the figure's suffix, e.g.
    ``eval_power-seeking__logodds.png``. A result that cannot be read (unknown kind, newer schema)
    or drawn is skipped, and the others are drawn: ``on_skip(path, why)`` is called for each (default: a
    logged warning), as the report does.

    Returns:
        The written files, in order.

    Raises:
        FileNotFoundError: ``results_dir`` does not exist.
    """
    on_skip = on_skip or log_skip
    root = Path(results_dir)
    written: list[Path] = []
    for path, result in result_files(root, on_skip):
        try:
            figures = figures_for(result)
        except ResultFormatError as exc:
            on_skip(path, f"cannot draw ({exc})")
            continue
        except MALFORMED as exc:
            on_skip(path, f"cannot draw ({why(exc)})")
            continue
        stem = _slug("_".join(path.relative_to(root).with_suffix("").parts))
        for suffix, fig in figures.items():
            written += save_figure(fig, Path(out_dir) / f"{stem}__{_slug(suffix)}", formats=formats)
        if figures:
            logger.info("%s: %d figure(s)", path, len(figures))
    return written


__all__ = ["SPLIT", "SUFFIX", "figures_for", "write_figures"]
