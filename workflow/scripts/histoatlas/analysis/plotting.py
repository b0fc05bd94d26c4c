"""Scatter plots of a UMAP layout, coloured by a categorical or continuous label.

Categorical labels get a qualitative palette and a legend listing exactly the label
values (plus "(missing)" when some points have none); continuous ones a colour bar.
Large cohorts stay readable: at most ``max_points`` points are drawn (a seeded sample),
in a seeded random order so no category hides the others, with marker size and alpha
shrinking as the count grows. The figure has a fixed pixel size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.atomic import atomic_output

MISSING_LABEL = "(missing)"
MISSING_COLOUR = "#c8c8c8"
# a category-per-colour legend beyond this is unreadable; the plot says so instead
MAX_LEGEND = 40
# integer labels with more values than this are drawn as continuous
MAX_INT_CATEGORIES = 20
# figure margins (inches) of umap_figure: axis labels, title, legend strip
LEFT_BOTTOM_IN = (0.8, 0.7)
TOP_IN = 0.7
RIGHT_IN = 2.8
# axis limits of a map in the [0, 1] square
UNIT_LIMITS = (-0.02, 1.02)


def is_categorical(values: pd.Series | np.ndarray) -> bool:
    """Whether a label is drawn with a palette and legend (else with a colour bar).

    Strings, booleans and pandas categories are categorical; integers are when they
    take at most 20 values (cluster ids, grades); floats never are.
    """
    values = pd.Series(values)
    if isinstance(values.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(values):
        return True
    if pd.api.types.is_integer_dtype(values):
        return values.nunique() <= MAX_INT_CATEGORIES
    return not pd.api.types.is_numeric_dtype(values)


def category_order(values: pd.Series) -> list:
    """Distinct non-missing values, numbers in numeric order and others as strings."""
    present = pd.unique(values.dropna())
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if c in set(present)]
    try:
        return sorted(present)
    except TypeError:
        return sorted(present, key=str)


def qualitative_colours(n: int) -> list:
    """``n`` distinct RGBA colours: tab10, tab20, then tab20+b+c, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](k) for k in range(n)]
    if n <= 20:
        return [colormaps["tab20"](k) for k in range(n)]
    if n <= 60:
        pool = [colormaps[name](k) for name in ("tab20", "tab20b", "tab20c") for k in range(20)]
        return pool[:n]
    return [colormaps["hsv"](k / n) for k in range(n)]


def marker_defaults(n: int) -> tuple[float, float]:
    """Marker area (points²) and opacity for a scatter of ``n`` points: ``30000 / n``
    clipped to [0.5, 30] and ``3000 / n`` clipped to [0.15, 1], so that a dense map stays
    readable."""
    s = float(np.clip(30_000 / max(n, 1), 0.5, 30))
    alpha = float(np.clip(3_000 / max(n, 1), 0.15, 1.0))
    return s, alpha


def plot_umap(
    coords: np.ndarray,
    labels: Sequence | pd.Series | None = None,
    *,
    ax: Any = None,
    label_name: str | None = None,
    categorical: bool | None = None,
    title: str | None = None,
    max_points: int = 200_000,
    seed: int = 0,
    s: float | None = None,
    alpha: float | None = None,
    cmap: str = "viridis",
    legend: bool = True,
    **scatter_kwargs: Any,
):
    """Draw a UMAP layout as a scatter plot on ``ax``.

    Parameters
    ----------
    coords : ndarray, shape (N, 2)
        Layout, normally in [0, 1].
    labels : sequence, shape (N,), optional
        Label of each point; ``None`` draws every point in one colour.
    ax : matplotlib Axes, optional
        Where to draw; default the current axes.
    label_name : str, optional
        Legend or colour bar title, and part of the default plot title.
    categorical : bool, optional
        Force a palette (``True``) or colour bar (``False``); default from the dtype
        (see :func:`is_categorical`).
    title : str, optional
        Plot title; default "UMAP coloured by <label_name>". A second line always
        gives the number of points (and how many were drawn).
    max_points : int
        Draw at most this many points (seeded sample).
    seed : int
        Seed of the sample and of the drawing order.
    s, alpha : float, optional
        Marker size and opacity; default shrink with the number of points drawn.
    cmap : str
        Colour map of continuous labels.
    legend : bool
        Draw the legend (categories, at most 40) or colour bar.
    **scatter_kwargs
        Passed to ``Axes.scatter``.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> ax = plot_umap(coords, tiles["subtype"], label_name="subtype")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    coords, labels = _checked(coords, labels)
    ax = plt.gca() if ax is None else ax
    shown = np.random.default_rng(seed).permutation(len(coords))[:max_points]
    m = len(shown)
    default_s, default_alpha = marker_defaults(m)
    s = default_s if s is None else s
    alpha = default_alpha if alpha is None else alpha
    xy = coords[shown]
    style = {"s": s, "alpha": alpha, "linewidths": 0, "rasterized": True, **scatter_kwargs}
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], color="#1f77b4", **style)
    else:
        values = labels.iloc[shown].reset_index(drop=True)
        missing = values.isna().to_numpy()
        if missing.any():
            ax.scatter(xy[missing, 0], xy[missing, 1], color=MISSING_COLOUR, **style)
        xy, values = xy[~missing], values[~missing]
        if is_categorical(labels) if categorical is None else categorical:
            _draw_categories(ax, xy, values, labels, style, label_name, legend)
        else:
            _draw_values(ax, xy, values, labels, style, label_name, legend, cmap)
    _frame(ax, coords, m, title, label_name)
    return ax


def _checked(coords, labels):
    """Coordinates as float64 ``(N, 2)`` and labels as a Series of N values (or None)."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (N, 2), got shape {coords.shape}")
    if labels is not None:
        labels = pd.Series(labels).reset_index(drop=True)
        if len(labels) != len(coords):
            raise ValueError(f"{len(labels)} labels for {len(coords)} points")
    return coords, labels


def _frame(ax, coords: np.ndarray, m: int, title: str | None, label_name: str | None) -> None:
    """Title (with the number of points drawn), axis labels and the square frame."""
    n = len(coords)
    unit = bool(n) and coords.min() >= 0 and coords.max() <= 1
    frame_axes(ax, n, m, title, label_name, unit=unit)


def frame_axes(ax, n: int, m: int, title: str | None, label_name: str | None, *, unit: bool):
    """Title with the number of points (and how many were drawn), axis labels, and the
    square frame (``unit``: the map's [0, 1] square, with a small margin)."""
    drawn = f"{n:,} points" if m == n else f"{m:,} of {n:,} points drawn"
    what = f"UMAP coloured by {label_name}" if label_name else "UMAP"
    ax.set_title(f"{title if title is not None else what}\n({drawn})")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if unit:
        ax.set_xlim(*UNIT_LIMITS)
        ax.set_ylim(*UNIT_LIMITS)
    ax.set_aspect("equal")


def _draw_categories(ax, xy, values, labels, style, label_name, legend) -> None:
    """Points in one palette colour per category, and the legend (or a note)."""
    order = category_order(labels)
    colours = np.asarray(qualitative_colours(len(order))).reshape(-1, 4)
    palette = dict(zip(order, colours, strict=True))
    codes = pd.Categorical(values, categories=order).codes
    ax.scatter(xy[:, 0], xy[:, 1], c=colours[codes], **style)
    if legend:
        category_legend(ax, order, palette, bool(labels.isna().any()), label_name)


def category_legend(ax, order: list, palette: dict, missing: bool, label_name) -> None:
    """One marker per category (and "(missing)"), beside the map; a note instead when there
    are more than :data:`MAX_LEGEND` categories."""
    from matplotlib.lines import Line2D

    if 0 < len(order) <= MAX_LEGEND:
        handles = [_legend_marker(Line2D, palette[v], str(v)) for v in order]
        if missing:
            handles.append(_legend_marker(Line2D, MISSING_COLOUR, MISSING_LABEL))
        ax.legend(
            handles=handles,
            title=label_name,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            frameon=False,
            fontsize="medium" if len(handles) <= 20 else "x-small",
        )
    else:
        ax.text(
            1.02,
            0.5,
            f"{len(order)} values\n(too many\nfor a legend)",
            transform=ax.transAxes,
            va="center",
        )


def _draw_values(ax, xy, values, labels, style, label_name, legend, cmap) -> None:
    """Points coloured along ``cmap`` by a continuous label, and its colour bar."""
    numbers = pd.to_numeric(values, errors="raise").to_numpy(np.float64)
    full = pd.to_numeric(labels, errors="raise")
    points = ax.scatter(
        xy[:, 0],
        xy[:, 1],
        c=numbers,
        cmap=cmap,
        vmin=float(full.min()),
        vmax=float(full.max()),
        **style,
    )
    if legend:
        colour_bar(ax, points, label_name)


def colour_bar(ax, mappable, label_name) -> None:
    """The colour bar of a continuous label, beside the axes (not carved out of them: the
    map stays square)."""
    cax = ax.inset_axes([1.04, 0.1, 0.035, 0.8])
    ax.figure.colorbar(mappable, cax=cax, label=label_name)


def umap_figure(
    coords: np.ndarray,
    labels: Sequence | pd.Series | None = None,
    *,
    figsize: tuple[float, float] = (10, 8),
    dpi: int = 100,
    **kwargs: Any,
):
    """A new figure of fixed size (``figsize * dpi`` pixels) holding :func:`plot_umap`.

    Parameters
    ----------
    coords, labels
        As :func:`plot_umap`.
    figsize : (float, float)
        Inches; the saved image is ``figsize[0] * dpi`` x ``figsize[1] * dpi`` pixels.
    dpi : int
        Dots per inch.
    **kwargs
        Passed to :func:`plot_umap`.

    Returns
    -------
    matplotlib Figure
        Not attached to pyplot's figure manager; close nothing.
    """
    fig, ax = figure_axes(figsize, dpi)
    plot_umap(coords, labels, ax=ax, **kwargs)
    return fig


def figure_axes(figsize: tuple[float, float] = (10, 8), dpi: int = 100):
    """A new figure of fixed size and its square map axes at a fixed place (the legend or
    colour bar gets the right-hand strip); not attached to pyplot's figure manager."""
    from matplotlib.figure import Figure

    width, height = figsize
    side = max(min(height - LEFT_BOTTOM_IN[1] - TOP_IN, width - LEFT_BOTTOM_IN[0] - RIGHT_IN), 0.5)
    rect = [LEFT_BOTTOM_IN[0] / width, LEFT_BOTTOM_IN[1] / height, side / width, side / height]
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.add_axes(rect)


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a figure at its own size and dpi, atomically (format from the suffix)."""

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=fig.dpi, metadata=_metadata(str(path)))


def _metadata(path: str) -> dict | None:
    # keep reruns byte-identical: no software/date stamps where matplotlib would write them
    suffix = path.rsplit(".", 1)[-1].lower()
    return {"Software": None} if suffix == "png" else None


def _legend_marker(line2d, colour, text: str):
    return line2d(
        [], [], marker="o", linestyle="", markerfacecolor=colour, markeredgewidth=0, label=text
    )
