"""Figures of steering-vector results, drawn from analysis output only (one result, one figure).

Every ``plot_*`` function takes the output of an analysis (a pandas table, a list of row dicts, a
result object such as ``SweepResult``, or a result dict of the schema in ``workbench.core.results``) and
returns a ``matplotlib.figure.Figure``; none recomputes anything and none calls ``plt.show()``.
``plot(result)`` draws a result's main figure, chosen by its ``kind`` alone. Figures are sized for a
paper column (3.3 in wide), labelled, and drawn with the Okabe-Ito palette (Okabe & Ito 2008), which
stays distinct under the common colour-vision deficiencies. BiPO is Cao et al. 2024 (arXiv
2406.00045), CAA Rimsky et al. 2023 (arXiv 2312.06681).

Figures are built on ``matplotlib.figure.Figure`` directly, not through ``pyplot``, so nothing is
kept in pyplot's global figure list (a figures run over hundreds of results does not leak) and any
backend works. Pass ``ax=`` to draw into an existing axes (the figure returned is the axes' figure).
Walking a directory of result files is ``workbench.viz.figures``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workbench.core import results
from workbench.core.io import _atomic
from workbench.core.results import ResultFormatError

logger = logging.getLogger(__name__)

#: Okabe-Ito colours, in the order used for successive series.
OKABE_ITO = {
    "blue": "#0072B2", "vermillion": "#D55E00", "bluish_green": "#009E73", "orange": "#E69F00",
    "reddish_purple": "#CC79A7", "sky_blue": "#56B4E9", "yellow": "#F0E442", "black": "#000000",
}
PALETTE: tuple[str, ...] = tuple(OKABE_ITO[k] for k in (
    "vermillion", "blue", "bluish_green", "orange", "reddish_purple", "sky_blue", "black", "yellow"))
#: Fixed colours for the methods, so BiPO and CAA look the same in every figure.
METHOD_COLORS = {"bipo": OKABE_ITO["vermillion"], "caa": OKABE_ITO["blue"], "actadd": OKABE_ITO["bluish_green"],
                 "pca": OKABE_ITO["orange"], "reps": OKABE_ITO["reddish_purple"], "none": OKABE_ITO["black"],
                 "unsteered": OKABE_ITO["black"]}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
_STYLE = {
    "font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5, "legend.fontsize": 6, "legend.title_fontsize": 6, "legend.frameon": False, "axes.spines.top": False,
    "axes.spines.right": False, "axes.linewidth": 0.6, "lines.linewidth": 1.2, "lines.markersize": 3,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "pdf.fonttype": 42, "ps.fonttype": 42,
    "savefig.bbox": "tight", "savefig.pad_inches": 0.02, "figure.dpi": 150,  # notebooks show figures at fig.dpi
}


@contextmanager
def paper_style() -> Any:
    """The house figure style (small fonts, no top/right spines) inside a ``with`` block."""
    with matplotlib.rc_context(_STYLE):
        yield


# --------------------------------------------------------------------------- helpers
def _plain(result: Any) -> Any:
    """A result object with ``to_dict()`` (``SweepResult``, ``CompositionResult``, ``BiPOResult``) as its JSON form."""
    if not isinstance(result, (pd.DataFrame, Mapping, list, tuple)) and callable(getattr(result, "to_dict", None)):
        return result.to_dict()
    return result


def _rows(result: Any, table: str | None = None) -> pd.DataFrame:
    """A table: a DataFrame, a list of row dicts, or one table of a result (``workbench.core.results.table``)."""
    result = _plain(result)
    if isinstance(result, pd.DataFrame):
        return result.reset_index(drop=not _named_index(result))
    if isinstance(result, Mapping):
        df = results.result_table(result, table)
    elif isinstance(result, Sequence) and not isinstance(result, str):
        if not all(isinstance(r, Mapping) for r in result):
            raise ResultFormatError("expected a list of row dicts")
        df = pd.DataFrame(list(result))
    else:
        raise ResultFormatError(f"cannot read a table from {type(result).__name__}")
    if df.empty:
        raise ResultFormatError("the result has no rows")
    return df


def _named_index(df: pd.DataFrame) -> bool:
    return any(n is not None for n in df.index.names)


def _need(df: pd.DataFrame, columns: Iterable[str], plot: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultFormatError(f"{plot}: the result lacks column(s) {missing}; it has {list(df.columns)}")


def _first(df: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in df.columns), None)


def _new(ax: Axes | None, height: float = 2.3, width: float = COLUMN_WIDTH) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _main_and_lower(ax: Any, lower: bool, height: float, ratios: tuple[int, int]) -> tuple[Any, Any, Any]:
    """``(figure, main axes, lower axes or None)``: the caller's ``ax`` alone, or a new figure with a
    lower panel sharing x (``lower``), or a new single-panel figure."""
    if ax is not None:
        return ax.figure, ax, None
    if lower:
        fig, grid = _subplots(2, 1, height=height, sharex=True, gridspec_kw={"height_ratios": list(ratios)})
        return fig, grid[0, 0], grid[1, 0]
    fig, main = _new(None)
    return fig, main, None


def _subplots(nrows: int, ncols: int, height: float, width: float = COLUMN_WIDTH, **kw: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def method_color(label: Any) -> str | None:
    """The fixed colour of the method a label names (``"bipo"``, ``"caa:power"``, ``"BiPO L14"``), or None."""
    text = str(label).lower()
    for name, colour in METHOD_COLORS.items():
        if text == name or text.startswith(tuple(f"{name}{sep}" for sep in " :_-@(/")):
            return colour
    return None


def _series_colors(labels: Sequence[Any]) -> dict[Any, str]:
    """One colour per label: a method's fixed colour the first time it appears, else a free palette colour."""
    fixed = {lab: method_color(lab) for lab in labels}
    reserved = {c for c in fixed.values() if c}
    free = iter([p for p in PALETTE if p not in reserved] + list(PALETTE) * (1 + len(labels) // len(PALETTE)))
    out: dict[Any, str] = {}
    for lab in labels:
        c = fixed[lab]
        out[lab] = c if c and c not in out.values() else next(free)
    return out


def _label_series(df: pd.DataFrame, candidates: Sequence[str]) -> pd.Series:
    """A label per row from the first present columns among ``candidates`` that vary (joined by ' / ')."""
    present = [c for c in candidates if c in df.columns]
    varying = [c for c in present if df[c].nunique(dropna=False) > 1]
    cols = varying or present[:1]
    if not cols:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[cols].astype(str).agg(" / ".join, axis=1)


def _legend(ax: Axes, **kw: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, **{"loc": "best", "handlelength": 1.6, **kw})


def pretty_token(token: str) -> str:
    """A token made visible on an axis: leading/trailing spaces as ``␣``, newlines as ``\\n``."""
    t = str(token).replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    stripped = t.strip(" ")
    lead, trail = len(t) - len(t.lstrip(" ")), len(t) - len(t.rstrip(" "))
    return "␣" * lead + stripped + "␣" * trail if stripped else "␣" * len(t) or "∅"


# --------------------------------------------------------------------------- multiplier curves
METRIC_LABELS = {
    "logodds": "log-odds\nlog p(match) − log p(not)",
    "delta_logodds": "Δ log-odds vs. m = 0",
    "ab": "p(matching answer)",
    "ab_prob": "p(matching answer)",
    "win_rate": "win rate (log-odds > 0)",
    "perplexity": "perplexity (neutral text)",
    "top1_agreement": "top-1 agreement\nwith unsteered",
    "kl_from_unsteered": "KL(steered ‖ unsteered)\n(nats per token)",
    "utility": "utility",
    "truthfulqa": "TruthfulQA MC accuracy",
    "mc1": "TruthfulQA MC1 accuracy",
    "mc2": "TruthfulQA MC2 score",
    "logodds_per_token": "log-odds per answer token",
    "open": "open-ended: behavior match rate",
    "refusal": "refusal rate",
    "steerability": "steerability (log-odds per unit m)",
}


def plot_multiplier_curves(result: Any, ax: Axes | None = None, metric: str = "logodds",
                           value: str | None = None, title: str | None = None,
                           normalization: str | None = "sum") -> Figure:
    """Metric against steering multiplier, one line per vector (BiPO vs CAA), with bootstrap intervals.

    Args:
        result: an eval result (``{"kind": "eval", "metrics": {metric: rows}}``), or the rows /
            DataFrame of one metric. Rows need ``multiplier`` and a value column (``mean``, or
            ``value``/``score``/the metric's own name); ``ci_low``/``ci_high`` draw a band; the
            series label comes from ``vector``/``method``/``label`` (and ``behavior`` when it varies).
        metric: which metric of an eval result, also used for the y label.
        value: the value column (default: the first of ``mean, value, score, <metric>``).
        normalization: with a ``normalization`` column (``evaluate.summarize_logodds``: ``"sum"``
            or ``"per_token"``), draw only these rows; None draws every row.
    """
    df = _rows(result, metric if isinstance(_plain(result), Mapping) else None)
    if normalization is not None and "normalization" in df.columns:
        if not (df["normalization"] == normalization).any():
            raise ResultFormatError(f"plot_multiplier_curves: no rows with normalization {normalization!r} "
                                    f"(have {sorted(df['normalization'].unique())})")
        df = df[df["normalization"] == normalization]
    value = value or _first(df, ("mean", "value", "score", metric, "accuracy", "win_rate"))
    if value is None:
        raise ResultFormatError(f"plot_multiplier_curves: no value column (mean/value/score) in {list(df.columns)}")
    _need(df, ["multiplier", value], "plot_multiplier_curves")
    df = df.assign(_series=_label_series(df, ("vector", "method", "label", "name", "behavior", "normalization")))
    with paper_style():
        fig, ax = _new(ax)
        colors = _series_colors(list(dict.fromkeys(df["_series"])))
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            g = g.sort_values("multiplier")
            x, y = g["multiplier"].to_numpy(float), g[value].to_numpy(float)
            ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=colors[label], label=str(label))
            if {"ci_low", "ci_high"} <= set(g.columns) and g["ci_low"].notna().all():
                ax.fill_between(x, g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float),
                                color=colors[label], alpha=0.18, linewidth=0)
        if metric.startswith(("logodds", "delta_logodds")):
            ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax.axvline(0, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
        ax.set_xlabel("multiplier m")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")))
        if title:
            ax.set_title(title)
        _legend(ax)
    return fig


# --------------------------------------------------------------------------- refusal
def plot_refusal(result: Any, axes: Sequence[Axes] | None = None) -> Figure:
    """Refusal rate (left) and the likelihood signal (middle) against the multiplier, and the utility
    cost (KL from the unsteered model on neutral text, right) when the result has it.

    One colour per vector; a solid line for the plain request, dashed/dotted ones for each jailbreak
    template (``workbench.studies.refusal.refusal_study``'s ``"refusal"`` result, or its rows). Positive ``m``
    steers toward refusing; negative ``m`` is the jailbreak direction.
    """
    df = _rows(result)
    _need(df, ["vector", "template", "multiplier", "refusal_rate", "logodds"], "plot_refusal")
    styles = ["-", "--", ":", "-."]
    with_cost = "kl" in df.columns and df["kl"].notna().any()
    with paper_style():
        if axes is None:
            n = 3 if with_cost else 2
            fig, ax = _subplots(1, n, height=2.3, width=n * COLUMN_WIDTH)
            axes = list(ax.ravel())
        fig = axes[0].figure
        vectors = list(dict.fromkeys(df["vector"]))
        colors = _series_colors(vectors)
        templates = list(dict.fromkeys(df["template"]))
        for (vec, template), g in df.groupby(["vector", "template"], sort=False):
            g = g.sort_values("multiplier")
            x = g["multiplier"].to_numpy(float)
            style = styles[templates.index(template) % len(styles)]
            label = f"{vec}" + ("" if template == "none" else f" + {template}")
            for ax, col in zip(axes, ("refusal", "logodds")):
                y = g["refusal_rate" if col == "refusal" else "logodds"].to_numpy(float)
                ax.plot(x, y, linestyle=style, marker="o", markersize=3, color=colors[vec], label=label)
                lo, hi = f"{col}_ci_low", f"{col}_ci_high"
                if {lo, hi} <= set(g.columns) and g[lo].notna().all():
                    ax.fill_between(x, g[lo].to_numpy(float), g[hi].to_numpy(float), color=colors[vec],
                                    alpha=0.12, linewidth=0)
        if with_cost and len(axes) > 2:  # the utility cost of each (vector, multiplier), the same for every template
            for vec, g in df.drop_duplicates(["vector", "multiplier"]).groupby("vector", sort=False):
                g = g.sort_values("multiplier")
                axes[2].plot(g["multiplier"].to_numpy(float), g["kl"].to_numpy(float), marker="o", markersize=3,
                             color=colors[vec], label=vec)
            axes[2].set_ylabel("KL from unsteered (neutral text)")
        axes[0].set_ylim(-0.03, 1.03)
        axes[0].set_ylabel("refusal rate")
        axes[1].set_ylabel("log p(refusal) - log p(target)")
        axes[1].axhline(0, color="0.6", linewidth=0.6, zorder=0)
        for ax in axes:
            ax.set_xlabel("multiplier m")
            ax.axvline(0, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
        _legend(axes[0])
    return fig


# --------------------------------------------------------------------------- training curves
TRAINING_PANELS = (("loss", "BiPO loss"), ("accuracy", "preference acc."), ("norm", "vector norm"))
_HELD_OUT_PREFIXES = ("eval_", "val_", "test_")


def _run(history: Any) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-step table, per-epoch table or None) of one run: a ``bipo_history`` result (or
    ``BiPOResult``), or its per-step rows."""
    history = _plain(history)
    if isinstance(history, Mapping):
        history = results.from_dict(history)
        epochs = pd.DataFrame(history["epochs"]) if history.get("epochs") else None
        return _rows(history, "history"), epochs
    return _rows(history), None


def _histories(history: Any) -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]:
    """``{run label: (steps, epochs)}`` from one history or ``{label: history}`` (a mapping without a kind)."""
    if isinstance(history, Mapping) and "kind" not in history:
        return {str(k): _run(v) for k, v in history.items()}
    return {"": _run(history)}


def plot_training_curves(history: Any, ax: Axes | None = None, metric: str | None = None) -> Figure:
    """BiPO training curves: loss, preference accuracy and vector norm against optimiser step.

    Args:
        history: a BiPO history (list of per-step dicts with ``step``, ``loss``, ``accuracy``,
            ``norm``, as ``BiPOResult.history``), ``{"history": [...], "epochs": [...]}`` (held-out
            ``eval_loss``/``eval_accuracy`` of the epoch records are drawn dashed at their step), a
            ``BiPOResult``, a DataFrame, or ``{run label: history}`` to overlay several runs.
        ax: draw one panel (``metric``, default ``"loss"``) into this axes.
        metric: with ``ax``, the panel to draw.
    """
    runs = _histories(history)
    panels = [(m, lab) for m, lab in TRAINING_PANELS if any(m in st.columns for st, _ in runs.values())]
    if not panels:
        raise ResultFormatError(f"plot_training_curves: no loss/accuracy/norm column in "
                                f"{[list(st.columns) for st, _ in runs.values()]}")
    if ax is not None:
        wanted = metric or panels[0][0]
        panels = [next(((m, lab) for m, lab in TRAINING_PANELS if m == wanted), (wanted, wanted))]
    held_out = False
    with paper_style():
        if ax is not None:
            fig, axes = ax.figure, [ax]
        else:
            fig, grid = _subplots(len(panels), 1, height=1.05 * len(panels) + 0.35, sharex=True)
            axes = list(grid[:, 0])
        colors = _series_colors(list(runs))
        for (m, label), a in zip(panels, axes):
            for run, (steps, epochs) in runs.items():
                x_col = _first(steps, ("step", "global_step", "iteration"))
                x = steps[x_col].to_numpy(float) if x_col else np.arange(1, len(steps) + 1, dtype=float)
                if m in steps.columns:
                    a.plot(x, steps[m].to_numpy(float), color=colors[run], linewidth=0.9,
                           marker="o" if len(x) <= 30 else None, markersize=2, label=f"{run} train".strip())
                for frame in (steps, epochs):
                    if frame is None:
                        continue
                    fx = frame[x_col].to_numpy(float) if x_col and x_col in frame.columns else \
                        np.arange(1, len(frame) + 1, dtype=float)
                    for prefix in _HELD_OUT_PREFIXES:
                        col = f"{prefix}{m}"
                        if col in frame.columns and frame[col].notna().any():
                            ok = frame[col].notna().to_numpy()
                            a.plot(fx[ok], frame[col].to_numpy(float)[ok], color=colors[run], linestyle="--",
                                   marker="o", label=f"{run} held-out".strip())
                            held_out = True
            if m == "accuracy":
                a.set_ylim(-0.03, 1.03)
                a.axhline(0.5, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
            a.set_ylabel(label)
        axes[-1].set_xlabel("optimiser step")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(runs) > 1 or held_out:
            _legend(axes[0])
    return fig


# --------------------------------------------------------------------------- layer sweep
def _sweep_table(result: Any) -> pd.DataFrame:
    """Rows of one sweep, or of several (a list of sweeps, or ``{label: sweep}``) stacked."""
    if isinstance(result, Mapping) and "kind" not in result:  # {label: sweep}
        parts = [_sweep_table(v).assign(method=str(k)) for k, v in result.items()]
        return pd.concat(parts, ignore_index=True)
    result = _plain(result)
    df = _rows(result)
    if "method" not in df.columns and isinstance(result, Mapping) and "method" in result:
        df = df.assign(method=result["method"])
    return df


def _effect_columns(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(column, legend suffix, line style)`` of each effect column: ``effect@+1`` or ``effect_plus``."""
    cols = []
    tagged = sorted((c for c in df.columns if c.startswith("effect@")), key=lambda c: -float(c.split("@")[1]))
    styles = iter(["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))])
    for c in tagged:
        m = float(c.split("@")[1])
        cols.append((c, f" (m = {m:+g})", "-" if len(tagged) <= 2 and m > 0 else ("--" if len(tagged) <= 2 else next(styles))))
    named = {"effect_plus": (" (+m)", "-"), "effect_minus": (" (−m)", "--"), "effect": ("", "-")}
    cols += [(c, *named[c]) for c in named if c in df.columns]
    return cols


def plot_layer_sweep(result: Any, ax: Axes | None = None, show_cosine: bool = True) -> Figure:
    """Steering effect against layer, one colour per method, one line style per multiplier.

    Args:
        result: a sweep (``sweep.SweepResult``, its ``to_dict()``: ``{"kind": "sweep", "rows": [...]}``,
            or its table), a list of sweeps, or ``{label: sweep}`` to overlay methods (BiPO vs CAA).
            Rows need ``layer`` and effect columns: ``effect@<m>`` (change of the mean held-out
            log-odds against ``m = 0``) or ``effect_plus``/``effect_minus``; ``method`` separates
            series; ``cos_ref``/``cosine_to_ref`` adds a lower panel.
        ax: draw only the effect panel into this axes.
    """
    df = _sweep_table(result)
    effects = _effect_columns(df)
    if not effects:
        raise ResultFormatError(f"plot_layer_sweep: no effect@<m>/effect_plus/effect_minus column in {list(df.columns)}")
    _need(df, ["layer"], "plot_layer_sweep")
    df = df.assign(_series=_label_series(df, ("method", "vector", "label", "behavior")))
    cos_col = _first(df, ("cos_ref", "cosine_to_ref"))
    cosine = show_cosine and ax is None and cos_col is not None and df[cos_col].notna().any()
    with paper_style():
        fig, ax_eff, ax_cos = _main_and_lower(ax, cosine, height=3.0, ratios=(2, 1))
        colors = _series_colors(list(dict.fromkeys(df["_series"])))
        n_series = df["_series"].nunique()
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            g = g.sort_values("layer")
            for col, suffix, style in effects:
                ok = g[col].notna()
                ax_eff.plot(g["layer"][ok], g[col][ok].astype(float), linestyle=style, color=colors[label],
                            marker=MARKERS[i % len(MARKERS)], markersize=2.2,
                            label=f"{label}{suffix}" if n_series > 1 or len(effects) > 1 else str(label))
            if ax_cos is not None and g[cos_col].notna().any():
                ok = g[cos_col].notna()
                ax_cos.plot(g["layer"][ok], g[cos_col][ok].astype(float), color=colors[label],
                            marker=MARKERS[i % len(MARKERS)], markersize=2.2, label=str(label))
        ax_eff.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax_eff.set_ylabel("Δ held-out log-odds\nvs. m = 0")
        _legend(ax_eff, ncols=2 if len(effects) * n_series > 3 else 1)
        if ax_cos is not None:
            ax_cos.set_ylabel("cosine to ref.")
            ax_cos.axhline(0, color="0.6", linewidth=0.6, zorder=0)
            ax_cos.set_xlabel("layer")
        else:
            ax_eff.set_xlabel("layer")
        ax_eff.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# --------------------------------------------------------------------------- cosine
def _square(result: Any) -> pd.DataFrame:
    if isinstance(result, pd.DataFrame):
        return result
    if isinstance(result, Mapping):
        result = results.from_dict(result)
        labels = result["labels"]
        mat = np.asarray(result["matrix"], dtype=float)
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] != len(labels):
            raise ResultFormatError(f"plot_cosine_heatmap: matrix of shape {mat.shape} does not match "
                                    f"{len(labels)} labels")
        return pd.DataFrame(mat, index=labels, columns=labels)
    raise ResultFormatError("plot_cosine_heatmap: expected a square DataFrame or a cosine result")


def plot_cosine_heatmap(result: Any, ax: Axes | None = None, annotate: bool | None = None,
                        title: str | None = None) -> Figure:
    """Heatmap of a square cosine table (``similarity.cosine_table`` or its ``table_to_dict``).

    A diverging map centred on 0 (blue negative, red positive) over ``[-1, 1]``; cells carry their
    value when there are at most 10 labels (``annotate`` overrides).
    """
    table = _square(result)
    n = len(table)
    annotate = n <= 10 if annotate is None else annotate
    labels = [str(x) for x in table.index]
    side = min(COLUMN_WIDTH, 1.0 + 0.32 * n)
    with paper_style():
        fig, ax = _new(ax, height=side * 0.86, width=side + 0.5)
        im = ax.imshow(table.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        step = max(1, math.ceil(n / 16))
        ticks = list(range(0, n, step))
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
        ax.set_yticks(ticks, [labels[i] for i in ticks])
        ax.spines[:].set_visible(False)
        if annotate:
            for i in range(n):
                for j in range(n):
                    v = float(table.iat[i, j])
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                            color="white" if abs(v) > 0.6 else "black")
        if table.index.name and table.index.name not in ("a", "b"):
            ax.set_xlabel(str(table.columns.name or table.index.name))
            ax.set_ylabel(str(table.index.name))
        fig.colorbar(im, ax=ax, shrink=0.8, label="cosine", pad=0.02)
        if title:
            ax.set_title(title)
    return fig


def plot_method_cosine(result: Any, ax: Axes | None = None) -> Figure:
    """Per-layer cosine between two methods' vectors (``similarity.method_cosines``: ``layer, cosine``)."""
    df = _rows(result)
    _need(df, ["layer", "cosine"], "plot_method_cosine")
    with paper_style():
        fig, ax = _new(ax, height=1.8)
        series = _label_series(df, ("pair", "behavior", "label")) if any(
            c in df.columns for c in ("pair", "behavior", "label")) else pd.Series(["cosine"] * len(df))
        df = df.assign(_series=series.to_numpy())
        colors = _series_colors(list(dict.fromkeys(df["_series"])))
        for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
            g = g.sort_values("layer")
            ax.plot(g["layer"], g["cosine"].astype(float), marker=MARKERS[i % len(MARKERS)], color=colors[label],
                    label=str(label))
        ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        ax.set_ylim(min(-0.05, float(df["cosine"].min()) - 0.05), 1.02)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cosine (BiPO vs. CAA)" if df["_series"].nunique() == 1 else "cosine")
        if df["_series"].nunique() > 1:
            _legend(ax)
    return fig


# --------------------------------------------------------------------------- logit lens
def plot_logit_lens_tokens(result: Any, ax: Axes | None = None, k: int | None = None,
                           title: str | None = None) -> Figure:
    """Top promoted (right, blue) and suppressed (left, vermillion) tokens of a vector.

    Args:
        result: ``logit_lens.vector_logit_lens`` output (columns ``direction``, ``rank``,
            ``token``, ``logit_change``) or its ``{"kind", "rows"}`` form. With a ``vector`` or
            ``label`` column holding several vectors (and no ``ax``), one panel per vector.
        k: at most this many tokens per direction.
    """
    df = _rows(result)
    _need(df, ["token", "logit_change"], "plot_logit_lens_tokens")
    if "direction" not in df.columns:
        df = df.assign(direction=np.where(df["logit_change"] >= 0, "promoted", "suppressed"))
    if "rank" not in df.columns:
        df = df.assign(rank=df.groupby("direction")["logit_change"].rank(ascending=False, method="first"))
    group_col = _first(df, ("vector", "label", "name"))
    groups = list(dict.fromkeys(df[group_col])) if group_col and ax is None else [None]
    with paper_style():
        if ax is not None:
            fig, axes = ax.figure, [ax]
        else:
            n_tok = int(df.groupby([group_col] if group_col else ["direction"]).size().max()) if len(df) else 1
            fig, grid = _subplots(1, len(groups), height=0.9 + 0.11 * min(n_tok, 40),
                                  width=COLUMN_WIDTH if len(groups) == 1 else min(7.0, 2.3 * len(groups)))
            axes = list(grid[0])
        for a, grp in zip(axes, groups):
            g = df if grp is None else df[df[group_col] == grp]
            parts = []
            for direction in ("promoted", "suppressed"):
                d = g[g["direction"] == direction].sort_values("rank")
                parts.append(d.head(k) if k is not None else d)
            # strongest promoted at the top, strongest suppressed at the bottom
            order = pd.concat(parts).sort_values("logit_change")
            y = np.arange(len(order))
            vals = order["logit_change"].to_numpy(float)
            a.barh(y, vals, color=[OKABE_ITO["blue"] if v >= 0 else OKABE_ITO["vermillion"] for v in vals],
                   height=0.75)
            a.set_yticks(y, [pretty_token(t) for t in order["token"]], fontsize=6)
            a.axvline(0, color="0.3", linewidth=0.6)
            a.set_xlabel("logit change (vs. vocab. mean)")
            a.spines["left"].set_visible(False)
            a.tick_params(axis="y", length=0)
            heading = title if title and grp is None else (str(grp) if grp is not None else None)
            if heading:
                a.set_title(heading)
    return fig


def plot_logit_lens_layers(result: Any, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Per-layer propagation of a steered run (``logit_lens.steered_logit_lens``).

    Upper panel: Δ log-odds of the matching vs. not-matching token read through the logit lens at
    each layer (steered minus unsteered, solid) and the direct-path estimate (vector added to the
    unsteered residual, dashed); lower panel: KL(steered ‖ unsteered). Layers before the vector's hook
    are shaded. With ``ax``, only the upper panel.
    """
    df = _rows(result).sort_values("layer")
    _need(df, ["layer", "delta_logodds"], "plot_logit_lens_layers")
    has_kl = "kl" in df.columns and ax is None
    with paper_style():
        fig, a1, a2 = _main_and_lower(ax, has_kl, height=2.8, ratios=(3, 2))
        layer = df["layer"].to_numpy(float)
        a1.plot(layer, df["delta_logodds"].astype(float), color=OKABE_ITO["vermillion"], marker="o",
                markersize=2.2, label="steered run")
        if "delta_logodds_direct" in df.columns:
            a1.plot(layer, df["delta_logodds_direct"].astype(float), color=OKABE_ITO["blue"], linestyle="--",
                    label="vector alone (direct)")
        if {"delta_logprob_matching", "delta_logprob_not_matching"} <= set(df.columns):
            a1.plot(layer, df["delta_logprob_matching"].astype(float), color=OKABE_ITO["bluish_green"],
                    linewidth=0.8, label="Δ log p(match)")
            a1.plot(layer, df["delta_logprob_not_matching"].astype(float), color=OKABE_ITO["reddish_purple"],
                    linewidth=0.8, label="Δ log p(not)")
        a1.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        a1.set_ylabel("Δ logit-lens log-odds")
        if a2 is not None:
            a2.plot(layer, df["kl"].astype(float), color=OKABE_ITO["black"], marker="o", markersize=2.2)
            a2.set_ylabel("KL (nats)")
            a2.set_xlabel("layer (resid_post)")
        else:
            a1.set_xlabel("layer (resid_post)")
        if "steered" in df.columns and (~df["steered"].astype(bool)).any():
            last_unsteered = float(df.loc[~df["steered"].astype(bool), "layer"].max())
            for a in (a1, a2) if a2 is not None else (a1,):
                a.axvspan(layer.min() - 0.5, last_unsteered + 0.5, color="0.92", zorder=-1, linewidth=0)
        if title:
            a1.set_title(title)
        _legend(a1, ncols=2)
    return fig


# --------------------------------------------------------------------------- bars: composition, transfer
def plot_bars(result: Any, ax: Axes | None = None, x: str | None = None, y: str | None = None,
              hue: str | None = None, ylabel: str | None = None, title: str | None = None,
              sem: str | None = None) -> Figure:
    """Grouped bars, ``y`` per ``x``, one colour per ``hue``.

    Error bars: ``ci_low``/``ci_high`` when present, else ``± sem`` (a standard-error column).
    """
    df = _rows(result)
    y = y or _first(df, ("mean", "value", "effect", "delta_logodds", "score"))
    if y is None or x is None or x not in df.columns or y not in df.columns:
        raise ResultFormatError(f"plot_bars: need columns x={x!r} and y={y!r}; the result has {list(df.columns)}")
    xs = list(dict.fromkeys(df[x].astype(str)))
    hues = list(dict.fromkeys(df[hue].astype(str))) if hue and hue in df.columns else [None]
    width = 0.8 / len(hues)
    with paper_style():
        fig, ax = _new(ax, height=2.2)
        colors = _series_colors(hues)
        for j, h in enumerate(hues):
            g = df if h is None else df[df[hue].astype(str) == h]
            g = g.set_index(g[x].astype(str))
            g = g[~g.index.duplicated()]
            vals = np.array([float(g[y].get(k, np.nan)) for k in xs])
            pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
            err = None
            if {"ci_low", "ci_high"} <= set(g.columns):
                lo = np.array([float(g["ci_low"].get(k, np.nan)) for k in xs])
                hi = np.array([float(g["ci_high"].get(k, np.nan)) for k in xs])
                err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
            elif sem and sem in g.columns:
                err = np.array([float(g[sem].get(k, np.nan)) for k in xs])
            ax.bar(pos, vals, width=width * 0.92, color=colors[h], label=None if h is None else h,
                   yerr=err, error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "0.2"})
        ax.set_xticks(np.arange(len(xs)), xs, rotation=30 if max(map(len, xs), default=0) > 6 else 0,
                      ha="right" if max(map(len, xs), default=0) > 6 else "center")
        ax.axhline(0, color="0.3", linewidth=0.6)
        ax.set_ylabel(ylabel or y.replace("_", " "))
        if hues != [None]:  # the legend sits above the axes; a title becomes the legend's title
            _legend(ax, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(hues), 3), title=title)
        elif title:
            ax.set_title(title)
    return fig


def plot_composition(result: Any, ax: Axes | None = None) -> Figure:
    """Composition of vectors: each behavior's log-odds change under each steering condition.

    Args:
        result: a ``composition.CompositionResult`` or its ``to_dict()``. Its long ``conditions`` table
            (``condition, behavior, effect, effect_sem``) gives bars per condition (each vector
            alone, then together), one colour per measured behavior, ± 1 s.e.m.; without it the
            per-behavior ``rows`` (``own_effect, cross_effect, combined_effect, interaction``)
            give bars per behavior. A plain table of either form works too.
    """
    result = _plain(result)
    df = _rows(result, "conditions" if isinstance(result, Mapping) else None)
    if {"condition", "effect"} <= set(df.columns):
        df = df[df["condition"] != "none"]
        title = None
        if isinstance(result, Mapping) and isinstance(result.get("multipliers"), Mapping):
            title = "multipliers: " + ", ".join(f"{k} {v:g}" for k, v in result["multipliers"].items())
        return plot_bars(df, ax=ax, x="condition", y="effect", hue=_first(df, ("behavior", "metric")),
                         ylabel="Δ held-out log-odds\nvs. unsteered", sem="effect_sem", title=title)
    parts = [c for c in ("own_effect", "cross_effect", "combined_effect", "interaction") if c in df.columns]
    if parts and "behavior" in df.columns:
        long = df.melt(id_vars=["behavior"], value_vars=parts, var_name="part", value_name="effect")
        long["part"] = long["part"].str.replace("_effect", "").str.replace("_", " ")
        return plot_bars(long, ax=ax, x="behavior", y="effect", hue="part", ylabel="Δ held-out log-odds")
    x = _first(df, ("combination", "condition", "vectors", "label", "name", "vector"))
    if x is None:
        raise ResultFormatError(f"plot_composition: no condition/combination column in {list(df.columns)}")
    return plot_bars(df, ax=ax, x=x, hue=_first(df, ("behavior", "metric", "target")),
                     ylabel="Δ log-odds vs. unsteered", sem="effect_sem")


def plot_transfer(result: Any, ax: Axes | None = None, source: str | None = None,
                  target: str | None = None) -> Figure:
    """Transfer of a vector to another model or to other layers (``workbench.analysis.transfer``).

    Two layouts are recognised:

    * across layers (``layer_transfer``: ``offset, layer, multiplier, effect``): effect against the
      layer offset k (vector made at L, applied at L + k), one line per multiplier (or source
      layer / vector when those vary);
    * across models (``transfer_effect``: ``multiplier, source_effect, target_effect``): grouped
      bars per multiplier, source model vs. target model (named by ``source`` / ``target``, by
      default the result's ``source`` / ``target`` keys).
    """
    df = _rows(result)
    if "offset" in df.columns:
        ycol = _first(df, ("effect", "delta_logodds", "mean", "retained", "ratio"))
        if ycol is None:
            raise ResultFormatError(f"plot_transfer: no effect column in {list(df.columns)}")
        df = df.assign(_series=_label_series(df, ("source_layer", "vector", "method", "behavior", "multiplier")))
        if "multiplier" in df.columns and df["multiplier"].nunique() > 1 and df["_series"].equals(
                df["multiplier"].astype(str)):
            df["_series"] = df["multiplier"].map(lambda m: f"m = {float(m):+g}")
        with paper_style():
            fig, ax = _new(ax)
            colors = _series_colors(list(dict.fromkeys(df["_series"])))
            for i, (label, g) in enumerate(df.groupby("_series", sort=False)):
                g = g.sort_values("offset")
                ax.plot(g["offset"], g[ycol].astype(float), marker=MARKERS[i % len(MARKERS)], color=colors[label],
                        label=str(label))
            ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
            ax.axvline(0, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            src = f" (made at L{int(df['layer'][df['offset'] == 0].iloc[0])})" if "layer" in df.columns and \
                (df["offset"] == 0).any() else ""
            ax.set_xlabel(f"layer offset k: applied at L + k{src}")
            ax.set_ylabel({"retained": "effect retained (vs. k = 0)", "ratio": "effect ratio"}.get(
                ycol, "Δ held-out log-odds"))
            if df["_series"].nunique() > 1:
                _legend(ax)
        return fig
    pairs = [("source_effect", "target_effect"), ("effect_source", "effect_target")]
    cols = next((p for p in pairs if set(p) <= set(df.columns)), None)
    if cols is not None:
        info = _plain(result) if isinstance(_plain(result), Mapping) else {}
        src, tgt = source or info.get("source") or "source", target or info.get("target") or "target"
        key = _first(df, ("multiplier", "label", "vector"))
        if key is None:
            raise ResultFormatError(f"plot_transfer: no multiplier/label column in {list(df.columns)}")
        long = df[[key, *cols]].melt(id_vars=[key], value_vars=list(cols), var_name="model", value_name="effect")
        long["model"] = long["model"].map({cols[0]: src, cols[1]: tgt})
        if key == "multiplier":
            long["multiplier"] = long["multiplier"].map(lambda m: f"m = {float(m):+g}")
        return plot_bars(long, ax=ax, x=key, y="effect", hue="model", ylabel="Δ held-out log-odds\nvs. m = 0")
    raise ResultFormatError(f"plot_transfer: cannot recognise the layout of {list(df.columns)} (expected "
                            "offset/effect or multiplier/source_effect/target_effect)")


# --------------------------------------------------------------------------- saving
def save_figure(fig: Figure, path: str | Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 300) -> list[Path]:
    """Write ``fig`` as ``path.png`` and ``path.pdf`` (``path`` without extension), each atomically.

    Returns:
        The written paths.
    """
    base = Path(path)
    if base.suffix.lower() in (".png", ".pdf", ".svg"):
        base = base.with_suffix("")
    out = []
    for fmt in formats:
        # metadata without dates: the same figure gives the same bytes
        meta = {"CreationDate": None} if fmt == "pdf" else ({"Software": None} if fmt == "png" else None)
        target = base.with_name(f"{base.name}.{fmt}")
        out.append(_atomic(target, lambda p, fmt=fmt, meta=meta: fig.savefig(p, format=fmt, dpi=dpi, metadata=meta)))
    return out


def plot_cost_effect(result: Any, ax: Axes | None = None) -> Figure:
    """Effect (log-odds shift from m = 0) against cost, one line per vector and direction, budgets marked.

    ``result``: a ``workbench.analysis.equal_cost.matched_cost`` result (kind ``"matched_cost"``); drawn from
    its ``points`` (every multiplier the search visited within budget) and ``rows`` (the found ones).
    """
    if not isinstance(result, Mapping) or results.from_dict(result)["kind"] != results.MATCHED_COST:
        raise ResultFormatError("plot_cost_effect needs a matched_cost result (workbench.analysis.equal_cost)")
    pts = pd.DataFrame(result["points"])
    rows = pd.DataFrame(result["rows"])
    _need(pts, ("vector", "direction", "multiplier", "cost", "effect"), "plot_cost_effect")
    fig, ax = _new(ax)
    colors = _series_colors(list(dict.fromkeys(pts["vector"])))
    for label in dict.fromkeys(pts["vector"]):
        for d, style in ((1, "-"), (-1, "--")):
            sub = pts[(pts["vector"] == label) & ((pts["direction"] == d) | (pts["multiplier"] == 0))]
            sub = sub.reindex(sub["multiplier"].abs().sort_values().index)
            ax.plot(sub["cost"], sub["effect"], style, marker=".", color=colors[label],
                    label=f"{label} ({'m > 0' if d == 1 else 'm < 0'})")
            found = rows[(rows["vector"] == label) & (rows["direction"] == d) & rows["reached"].astype(bool)]
            if len(found):
                ax.errorbar(found["cost"], found["effect"],
                            yerr=[found["effect"] - found["effect_ci_low"], found["effect_ci_high"] - found["effect"]],
                            fmt="o", color=colors[label], ms=4, capsize=2)
    for i, b in enumerate(result.get("budgets", [])):
        ax.axvline(b, color="0.6", lw=0.6, ls=":", label="budget" if i == 0 else None)
    ax.axhline(0, color="0.8", lw=0.5)
    cost = result.get("cost", "kl")
    ax.set_xlabel("KL from unsteered per token" if cost == "kl" else "perplexity ratio - 1")
    ax.set_ylabel("log-odds shift from m = 0")
    note = (result.get("equal_norm") or {}).get("mode")
    if note:
        ax.set_title(f"equal norm ({note})", fontsize="small")
    _legend(ax, fontsize="x-small")
    return fig


# --------------------------------------------------------------------------- LoRA transfer
def plot_lora_transfer(result: Any, ax: Axes | None = None) -> Figure:
    """Retained steering effect against the fine-tune's distance from the base (``workbench.studies.lora``).

    x: the fine-tune's mean KL from the base per token on neutral text (the base itself at 0, where
    the retained share is 1 by definition); y: the log-odds shift at ``m`` on the target model over
    the same shift on the model the vector was made on, with its 95 % interval. One line per
    (vector, direction, sign of m): solid base -> fine-tune, dashed fine-tune -> base.
    """
    df = _rows(result)
    if df.empty:  # no fine-tune reached its target: say so rather than fail
        with paper_style():
            fig, ax = _new(ax)
            ax.text(0.5, 0.5, "no fine-tune reached its KL target", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        return fig
    _need(df, ["kl", "vector", "direction", "multiplier", "retained"], "plot_lora_transfer")
    with paper_style():
        fig, ax = _new(ax)
        colors = _series_colors(list(dict.fromkeys(df["vector"])))
        for (vec, direction, m), g in df.groupby(["vector", "direction", "multiplier"], sort=False):
            g = g.sort_values("kl")
            x = np.concatenate([[0.0], g["kl"].to_numpy(float)])
            y = np.concatenate([[1.0], g["retained"].to_numpy(float)])
            style = "-" if direction.startswith("base") else "--"
            marker = "o" if m > 0 else "v"
            ax.plot(x, y, linestyle=style, marker=marker, markersize=4, color=colors[vec],
                    label=f"{vec}, m = {m:+g}, {direction.replace('->', ' → ')}")
            if {"retained_ci_low", "retained_ci_high"} <= set(g.columns) and g["retained_ci_low"].notna().all():
                yv = g["retained"].to_numpy(float)
                err = np.vstack([yv - g["retained_ci_low"].to_numpy(float), g["retained_ci_high"].to_numpy(float) - yv])
                ax.errorbar(g["kl"].to_numpy(float), yv, yerr=np.clip(err, 0, None), fmt="none", color=colors[vec],
                            capsize=2, linewidth=0.8)
        ax.axhline(1, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
        ax.axhline(0, color="0.8", linewidth=0.5, zorder=0)
        ax.set_xlabel("fine-tune's KL from the base per token (neutral text)")
        ax.set_ylabel("effect retained (target / source)")
        _legend(ax, fontsize="x-small")
    return fig


# --------------------------------------------------------------------------- one result, by its kind
#: result ``kind`` -> the function drawing its main figure (kinds not listed, e.g. study_summary, have none)
PLOTS: dict[str, Callable[..., Figure]] = {
    results.EVAL: plot_multiplier_curves,
    results.SWEEP: plot_layer_sweep,
    results.COSINE: plot_cosine_heatmap,
    results.COSINE_METHODS: plot_method_cosine,
    results.LOGIT_LENS_TOKENS: plot_logit_lens_tokens,
    results.LOGIT_LENS_LAYERS: plot_logit_lens_layers,
    results.COMPOSITION: plot_composition,
    results.TRANSFER_LAYERS: plot_transfer,
    results.TRANSFER_MODEL: plot_transfer,
    results.TRANSFER_LORA: plot_lora_transfer,
    results.BIPO_HISTORY: plot_training_curves,
    results.REFUSAL: plot_refusal,
    results.MATCHED_COST: plot_cost_effect,
}


def plot(result: Any, **kwargs: Any) -> Figure:
    """The main figure of a result, chosen by its ``kind`` (``PLOTS``); ``kwargs`` go to that ``plot_*``.

    ``result``: a result dict (``workbench.core.results``) or an object with ``to_dict()`` returning one
    (``SweepResult``, ``CompositionResult``, ``BiPOResult``). An eval result draws ``metric="logodds"``
    unless told otherwise. A bare table has no kind: give it to the ``plot_*`` function it fits.

    Raises:
        ResultFormatError: no kind, an unknown kind or a newer schema version, or a kind with no figure.
    """
    res = _plain(result)
    if not isinstance(res, Mapping):
        raise ResultFormatError(f"plot() draws a result with a 'kind', not a {type(res).__name__}; "
                                "pass a table to the plot_* function it fits")
    res = results.from_dict(res)
    if res["kind"] not in PLOTS:
        raise ResultFormatError(f"a {res['kind']} result has no figure")
    return PLOTS[res["kind"]](res, **kwargs)
