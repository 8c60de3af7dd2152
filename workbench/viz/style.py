"""The house figure style: paper-column sizes, the Okabe-Ito palette, fixed method colours, saving.

Figures are sized for one column of a two-column paper (3.3 in wide), labelled, and drawn with the
Okabe-Ito palette (Okabe & Ito 2008), which stays distinct under the common colour-vision
deficiencies; BiPO (Cao et al. 2024, arXiv 2406.00045) and CAA (Rimsky et al. 2023, arXiv 2312.06681)
keep one colour each in every figure. Figures are built on ``matplotlib.figure.Figure`` directly, not
through ``pyplot``, so nothing is kept in pyplot's global figure list (a figures run over hundreds of
results does not leak) and any backend works. ``save_figure`` writes PNG and PDF atomically, without
dates, so the same figure gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.core.io import atomic_write

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
STYLE = {
    "font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5, "legend.fontsize": 6, "legend.title_fontsize": 6, "legend.frameon": False, "axes.spines.top": False,
    "axes.spines.right": False, "axes.linewidth": 0.6, "lines.linewidth": 1.2, "lines.markersize": 3,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "pdf.fonttype": 42, "ps.fonttype": 42,
    "savefig.bbox": "tight", "savefig.pad_inches": 0.02, "figure.dpi": 150,  # notebooks show figures at fig.dpi
}


@contextmanager
def paper_style() -> Iterator[None]:
    """The house figure style (small fonts, no top/right spines) inside a ``with`` block."""
    with matplotlib.rc_context(STYLE):
        yield


# --------------------------------------------------------------------------- colours
def method_color(label: Any) -> str | None:
    """The fixed colour of the method a label names (``"bipo"``, ``"caa:power"``, ``"BiPO L14"``), or None.

    Example:
        >>> method_color("caa:power") == METHOD_COLORS["caa"]
        True
    """
    text = str(label).lower()
    for name, colour in METHOD_COLORS.items():
        if text == name or text.startswith(tuple(f"{name}{sep}" for sep in " :_-@(/")):
            return colour
    return None


def series_colors(labels: Sequence[Any]) -> dict[Any, str]:
    """One colour per label: a method's fixed colour the first time it appears, else a free palette colour."""
    fixed = {lab: method_color(lab) for lab in labels}
    reserved = {c for c in fixed.values() if c}
    free = iter([p for p in PALETTE if p not in reserved] + list(PALETTE) * (1 + len(labels) // len(PALETTE)))
    out: dict[Any, str] = {}
    for lab in labels:
        c = fixed[lab]
        out[lab] = c if c and c not in out.values() else next(free)
    return out


def pretty_token(token: str) -> str:
    """A token made visible on an axis: leading/trailing spaces as ``␣``, newlines as ``\\n``."""
    t = str(token).replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    stripped = t.strip(" ")
    lead, trail = len(t) - len(t.lstrip(" ")), len(t) - len(t.rstrip(" "))
    return "␣" * lead + stripped + "␣" * trail if stripped else "␣" * len(t) or "∅"


# --------------------------------------------------------------------------- figures and axes
def new_axes(ax: Axes | None, height: float = 2.3, width: float = COLUMN_WIDTH) -> tuple[Figure, Axes]:
    """``(figure, axes)``: the caller's axes and its figure, or a new one-panel figure of this size."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def subplots(nrows: int, ncols: int, height: float, width: float = COLUMN_WIDTH, **kw: Any) -> tuple[Figure, np.ndarray]:
    """A new figure with a ``(nrows, ncols)`` grid of axes (always 2-d)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def main_and_lower(ax: Axes | None, lower: bool, height: float, ratios: tuple[int, int]) -> tuple[Figure, Axes, Axes | None]:
    """``(figure, main axes, lower axes or None)``: the caller's ``ax`` alone, or a new figure with a
    lower panel sharing x (``lower``), or a new single-panel figure."""
    if ax is not None:
        return ax.figure, ax, None
    if lower:
        fig, grid = subplots(2, 1, height=height, sharex=True, gridspec_kw={"height_ratios": list(ratios)})
        return fig, grid[0, 0], grid[1, 0]
    fig, main = new_axes(None)
    return fig, main, None


def legend(ax: Axes, **kw: Any) -> None:
    """A legend of the labelled artists of ``ax`` (none when nothing is labelled)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, **{"loc": "best", "handlelength": 1.6, **kw})


# --------------------------------------------------------------------------- saving
def save_figure(fig: Figure, path: str | Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 300) -> list[Path]:
    """Write ``fig`` as ``path.png`` and ``path.pdf`` (``path`` without extension), each atomically.

    Args:
        fig: the figure.
        path: the file name without extension (a ``.png``/``.pdf``/``.svg`` suffix is dropped).
        formats: the formats to write, one file each.
        dpi: resolution of raster formats.

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
        out.append(atomic_write(target, lambda p, fmt=fmt, meta=meta: fig.savefig(p, format=fmt, dpi=dpi, metadata=meta)))
    return out


__all__ = ["COLUMN_WIDTH", "MARKERS", "METHOD_COLORS", "OKABE_ITO", "PALETTE", "STYLE", "legend", "main_and_lower",
           "method_color", "new_axes", "paper_style", "pretty_token", "save_figure", "series_colors", "subplots"]
