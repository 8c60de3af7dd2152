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


# --------------------------------------------------------------------------- legends off the data
#: the corners (and edge middles) a legend may take inside the axes, in order of preference
LEGEND_CORNERS = ("upper right", "upper left", "lower right", "lower left", "upper center", "lower center",
                  "center right", "center left")
_SAMPLES_PER_SEGMENT = 24  # points sampled along each drawn line segment


def _to_axes(ax: Axes, transform: Any, xy: np.ndarray) -> np.ndarray:
    """``(n, 2)`` points of an artist's coordinates in axes fractions (0..1 inside the axes)."""
    if len(xy) == 0:
        return np.empty((0, 2))
    return ax.transAxes.inverted().transform(transform.transform(np.asarray(xy, dtype=float)))


def _line_samples(points: np.ndarray) -> np.ndarray:
    """Points along a polyline (axes fractions): its vertices and ``_SAMPLES_PER_SEGMENT`` per segment."""
    points = points[np.isfinite(points).all(1)]
    if len(points) < 2:
        return points
    t = np.linspace(0, 1, _SAMPLES_PER_SEGMENT)[:, None, None]  # (s, 1, 1)
    seg = points[:-1][None] * (1 - t) + points[1:][None] * t  # (s, n - 1, 2)
    return np.concatenate([points, seg.reshape(-1, 2)])


def data_footprint(ax: Axes) -> tuple[np.ndarray, list[Any]]:
    """What a legend must not cover, in axes fractions: ``(points, filled paths)``.

    Points: every line drawn in data coordinates sampled along its segments, every marker, scatter
    offset and error bar; filled paths: interval bands (``fill_between``), bars and images. Reference
    lines spanning the axes (``axhline``/``axvline``) are not data and are left out.
    """
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.image import AxesImage
    from matplotlib.path import Path as MplPath

    pts: list[np.ndarray] = []
    paths: list[Any] = []
    for line in ax.get_lines():
        if line.get_visible() and line.get_transform() == ax.transData:
            xy = _to_axes(ax, ax.transData, np.column_stack(line.get_data(orig=False)).astype(float))
            pts.append(_line_samples(xy) if line.get_linestyle() not in ("None", "", " ") else xy)
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, LineCollection):  # error bars
            for seg in coll.get_segments():
                pts.append(_line_samples(_to_axes(ax, coll.get_transform(), seg)))
        elif isinstance(coll, PolyCollection):  # fill_between bands, violins
            for path in coll.get_paths():
                paths.append(MplPath(_to_axes(ax, coll.get_transform(), path.vertices)))
        offsets = coll.get_offsets()
        if len(offsets) and not isinstance(coll, (LineCollection, PolyCollection)):  # scatter markers
            pts.append(_to_axes(ax, coll.get_offset_transform(), offsets))
    for patch in ax.patches:  # bars
        if patch.get_visible() and patch.get_transform() is not None:
            verts = patch.get_path().vertices
            paths.append(MplPath(_to_axes(ax, patch.get_transform(), verts)))
    for image in ax.get_images():
        if isinstance(image, AxesImage):
            x0, x1, y0, y1 = image.get_extent()
            corners = _to_axes(ax, ax.transData, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]))
            paths.append(MplPath(corners))
    points = np.concatenate(pts) if pts else np.empty((0, 2))
    return points[np.isfinite(points).all(1)], paths


def _covered(box: Any, points: np.ndarray, paths: list[Any], pad: float = 0.01) -> int:
    """How many data points and filled-path grid samples fall inside ``box`` (axes fractions, padded)."""
    x0, y0, x1, y1 = box.x0 - pad, box.y0 - pad, box.x1 + pad, box.y1 + pad
    inside = int(((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)).sum())
    if paths:
        gx, gy = np.meshgrid(np.linspace(x0, x1, 8), np.linspace(y0, y1, 6))
        grid = np.column_stack([gx.ravel(), gy.ravel()])
        inside += sum(int(p.contains_points(grid).sum()) for p in paths)
    return inside


def legend_box(ax: Axes) -> Any:
    """The bounding box of ``ax``'s legend in axes fractions (after the figure's layout), or None."""
    leg = ax.get_legend()
    if leg is None:
        return None
    fig = ax.figure
    renderer = fig._get_renderer()  # noqa: SLF001  (the renderer matplotlib's own layout uses)
    return leg.get_window_extent(renderer).transformed(ax.transAxes.inverted())


def place_legend(ax: Axes, **kw: Any) -> Any:
    """A legend of the labelled artists of ``ax``, kept off the data; returns it (None when nothing is labelled).

    The legend takes the first corner of ``LEGEND_CORNERS`` where it covers no data point, line
    sample, interval band, bar or image (``data_footprint``); when every corner covers some, it goes
    outside the axes on the right. An explicit ``loc`` (with ``bbox_to_anchor``, e.g. a legend above
    the axes) is kept as given. The layout is computed first (``draw_without_rendering``), so the
    legend's size is measured against the axes as the figure will be saved.
    """
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    kw = {"handlelength": 1.6, **kw}
    if kw.get("loc") not in (None, "best"):
        return ax.legend(handles, labels, **kw)
    kw.pop("loc", None)
    fig = ax.figure
    fig.draw_without_rendering()  # the layout and the autoscaled limits the saved figure will have
    points, paths = data_footprint(ax)
    for loc in LEGEND_CORNERS:
        leg = ax.legend(handles, labels, loc=loc, **kw)
        box = legend_box(ax)
        if box is not None and _covered(box, points, paths) == 0:
            return leg
    leg = ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)
    return leg


def legend(ax: Axes, **kw: Any) -> None:
    """A legend of the labelled artists of ``ax`` off the data (``place_legend``; none when nothing is labelled)."""
    place_legend(ax, **kw)


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


__all__ = ["COLUMN_WIDTH", "LEGEND_CORNERS", "MARKERS", "METHOD_COLORS", "OKABE_ITO", "PALETTE", "STYLE",
           "data_footprint", "legend", "legend_box", "main_and_lower", "method_color", "new_axes", "paper_style",
           "place_legend", "pretty_token", "save_figure", "series_colors", "subplots"]
