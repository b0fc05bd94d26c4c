"""Rasterised UMAP plots: any number of points drawn into the map's pixels, chunk by chunk.

A scatter plot of 10^7 points is 10^7 markers for matplotlib to draw (and to hold); here each
chunk of points is splatted into an image the size of the map's axes (:class:`RasterScatter`),
and the figure shows that image with the same frame, legend or colour bar, title and size
as :func:`~histoatlas.analysis.plotting.umap_figure`. Each pixel shows the point with the
highest priority among those covering it -- a seeded hash of the point's row, so no
category always lies on top and any chunking gives the same picture -- blended over white
by how many points cover it, as translucent markers would be. Points with a label win
over points without one (a scatter draws those first, underneath).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from histoatlas.analysis.plotting import (
    MISSING_COLOUR,
    category_legend,
    colour_bar,
    figure_axes,
    frame_axes,
    marker_defaults,
)

_LABELLED = np.uint64(1 << 63)


def marker_style(n: int, dpi: int) -> tuple[float, float]:
    """``(radius_px, alpha)`` of a point among ``n``: the scatter plot's marker size and
    opacity (``s = 30000 / n`` points², clipped to [0.5, 30]; alpha ``3000 / n`` in
    [0.15, 1]) in pixels at ``dpi``."""
    s, alpha = marker_defaults(n)
    return np.sqrt(s) * dpi / 72 / 2, alpha


class RasterScatter:
    """Points splatted into a ``height x width`` pixel grid over ``limits``.

    Parameters
    ----------
    width, height : int
        Pixels.
    limits : (xmin, xmax, ymin, ymax)
        What the grid covers.
    radius : float
        Marker radius in pixels (a disc; below 0.5 one pixel).
    seed : int
        Seed of the points' priorities.
    """

    def __init__(self, width: int, height: int, limits, *, radius: float, seed: int = 0) -> None:
        self.width, self.height = int(width), int(height)
        self.limits = tuple(float(v) for v in limits)
        self.salt = np.uint64((int(seed) * 0x9E3779B97F4A7C15) % 2**64)
        r = max(float(radius), 0.5)
        span = np.arange(-int(np.ceil(r)), int(np.ceil(r)) + 1)
        dx, dy = np.meshgrid(span, span)
        inside = dx**2 + dy**2 <= max(r**2, 0.25)
        self.offsets = np.stack([dx[inside], dy[inside]], axis=1)
        size = self.width * self.height
        self.key = np.zeros(size, dtype=np.uint64)
        self.value = np.full(size, np.nan)
        self.count = np.zeros(size, dtype=np.int64)
        self.seen = 0

    def add(self, xy: np.ndarray, values: np.ndarray) -> None:
        """Splat the next chunk of points.

        Parameters
        ----------
        xy : ndarray, shape (n, 2)
            Coordinates (non-finite ones are skipped).
        values : ndarray, shape (n,), float
            What each pixel a point wins keeps (a category code or a value); NaN = missing.
        """
        xy = np.asarray(xy, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        ids = np.arange(self.seen, self.seen + len(xy), dtype=np.uint64)
        self.seen += len(xy)
        keep = np.isfinite(xy).all(axis=1)
        xy, values, ids = xy[keep], values[keep], ids[keep]
        x0, x1, y0, y1 = self.limits
        col = np.floor((xy[:, 0] - x0) / (x1 - x0) * self.width).astype(np.int64)
        row = np.floor((y1 - xy[:, 1]) / (y1 - y0) * self.height).astype(np.int64)
        keys = (_mix(ids + self.salt) >> np.uint64(1)) | np.where(
            np.isnan(values), np.uint64(0), _LABELLED
        )
        pixels, owners = [], []
        for dx, dy in self.offsets:
            c, r = col + dx, row + dy
            on = (c >= 0) & (c < self.width) & (r >= 0) & (r < self.height)
            pixels.append(r[on] * self.width + c[on])
            owners.append(np.flatnonzero(on))
        pixel, owner = np.concatenate(pixels), np.concatenate(owners)
        if not len(pixel):
            return
        self.count += np.bincount(pixel, minlength=len(self.count))
        order = np.lexsort((keys[owner], pixel))
        pixel, owner = pixel[order], owner[order]
        last = np.r_[pixel[1:] != pixel[:-1], True]  # each pixel's highest priority
        pixel, owner = pixel[last], owner[last]
        wins = keys[owner] > self.key[pixel]
        self.key[pixel[wins]] = keys[owner[wins]]
        self.value[pixel[wins]] = values[owner[wins]]

    def image(self, colour: Callable[[np.ndarray], np.ndarray], alpha: float) -> np.ndarray:
        """The picture, ``(height, width, 3)`` float in [0, 1]: each pixel's winner's colour
        (``colour`` maps values to RGB(A) rows; missing is grey) over white, at the opacity of
        as many stacked markers of ``alpha`` as cover the pixel."""
        rgb = np.ones((len(self.value), 3))
        hit = self.count > 0
        labelled = hit & ~np.isnan(self.value)
        rgb[labelled] = np.asarray(colour(self.value[labelled]))[:, :3]
        rgb[hit & np.isnan(self.value)] = _rgb(MISSING_COLOUR)
        opacity = 1 - (1 - alpha) ** self.count[:, None]
        out = 1 - opacity + opacity * rgb
        return out.reshape(self.height, self.width, 3)


def raster_figure(
    raster: RasterScatter,
    fig: Any,
    ax: Any,
    *,
    colour: Callable[[np.ndarray], np.ndarray],
    alpha: float,
    legend: Callable[[Any], None] | None,
    label_name: str | None,
    title: str | None,
    unit: bool,
):
    """Show a raster on the map axes with the plot's frame, title and legend (a callable
    drawing the legend or colour bar on ``ax``)."""
    x0, x1, y0, y1 = raster.limits
    ax.imshow(
        raster.image(colour, alpha),
        extent=(x0, x1, y0, y1),
        origin="upper",
        interpolation="nearest",
        aspect="equal",
    )
    frame_axes(ax, raster.seen, raster.seen, title, label_name, unit=unit)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    if legend is not None:
        legend(ax)
    return fig


def axes_pixels(figsize=(10, 8), dpi: int = 100):
    """``(fig, ax, side_px)``: the map figure of :func:`~histoatlas.analysis.plotting.figure_axes`
    and its square axes' size in pixels."""
    fig, ax = figure_axes(figsize, dpi)
    side = int(round(ax.get_position().width * figsize[0] * dpi))
    return fig, ax, side


def categorical_legend(order: list, colours: np.ndarray, missing: bool, label_name):
    """The legend callable of a categorical raster (see :func:`raster_figure`)."""
    palette = dict(zip(order, colours, strict=True))
    return lambda ax: category_legend(ax, order, palette, missing, label_name)


def continuous_legend(cmap: str, vmin: float, vmax: float, label_name):
    """The colour bar callable of a continuous raster (see :func:`raster_figure`)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(vmin, vmax), cmap=colormaps[cmap])
    return lambda ax: colour_bar(ax, mappable, label_name)


def _rgb(colour: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(colour))


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each integer."""
    z = z.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
