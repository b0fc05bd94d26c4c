"""The mosaic's grid: cells of the unit square and the one point that represents each.

Cell ``(i, j)`` covers ``x`` in ``[i/n, (i+1)/n)`` and ``y`` in ``[j/n, (j+1)/n)`` (the last
cell of each axis also takes 1.0); ``j = 0`` is the bottom row, so the picture is oriented
as the UMAP scatter plot. Selection is vectorised (``np.minimum.at``), no loop over cells.
"""

from __future__ import annotations

import numpy as np

from histoatlas.errors import ConfigError

TILE_SELECT = ("nearest", "first")


def unit_square(coords: np.ndarray) -> np.ndarray:
    """Coordinates as given when all lie in [0, 1], else min-max scaled per axis.

    Parameters
    ----------
    coords : ndarray, shape (N, 2)
        Non-finite rows stay non-finite (and are never selected).

    Returns
    -------
    ndarray, shape (N, 2), dtype float64
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (N, 2), got shape {coords.shape}")
    finite = np.isfinite(coords).all(axis=1)
    if not finite.any():
        return coords
    return scale_to_unit(coords, coords[finite].min(axis=0), coords[finite].max(axis=0))


def scale_to_unit(coords: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """:func:`unit_square` given the finite points' per-axis ``lo`` and ``hi`` (for a layout
    read in chunks: the same values as on the whole)."""
    coords = np.asarray(coords, dtype=np.float64)
    if lo.min() >= 0 and hi.max() <= 1:
        return coords
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (coords - lo) / span
    return np.where(hi > lo, scaled, 0.5)


def grid_cells(coords: np.ndarray, num_tiles_x: int, num_tiles_y: int | None = None):
    """Grid cell ``(i, j)`` of each point of a layout in [0, 1].

    Parameters
    ----------
    coords : ndarray, shape (N, 2)
    num_tiles_x : int
        Columns.
    num_tiles_y : int, optional
        Rows; default ``num_tiles_x``.

    Returns
    -------
    i, j : ndarray, shape (N,), dtype int64
        Column and row (``j = 0`` at the bottom); -1 for non-finite points.
    """
    n_y = num_tiles_x if num_tiles_y is None else num_tiles_y
    coords = np.asarray(coords, dtype=np.float64)
    finite = np.isfinite(coords).all(axis=1)
    safe = coords if finite.all() else np.where(finite[:, None], coords, 0.0)
    # truncation is floor on [0, 1]; 1.0 itself belongs to the last cell
    i = np.minimum((np.clip(safe[:, 0], 0.0, 1.0) * num_tiles_x).astype(np.int64), num_tiles_x - 1)
    j = np.minimum((np.clip(safe[:, 1], 0.0, 1.0) * n_y).astype(np.int64), n_y - 1)
    if not finite.all():
        i[~finite], j[~finite] = -1, -1
    return i, j


def select_tiles(
    coords: np.ndarray,
    num_tiles_x: int,
    *,
    num_tiles_y: int | None = None,
    tile_select: str = "nearest",
) -> np.ndarray:
    """For each grid cell, the point that represents it.

    Parameters
    ----------
    coords : ndarray, shape (N, 2)
        Layout in [0, 1] (see :func:`unit_square`).
    num_tiles_x : int
        Columns.
    num_tiles_y : int, optional
        Rows; default ``num_tiles_x``.
    tile_select : {"nearest", "first"}
        The point nearest the cell centre (ties: the lower index), or the lowest index.

    Returns
    -------
    ndarray, shape (num_tiles_y, num_tiles_x), dtype int64
        ``[j, i]``: index of the point shown in cell ``(i, j)``, -1 for an empty cell.

    Examples
    --------
    >>> select_tiles(np.array([[0.1, 0.1], [0.3, 0.2], [0.9, 0.9]]), 2)
    array([[ 1, -1],
           [-1,  2]])
    """
    if tile_select not in TILE_SELECT:
        raise ConfigError(f"tile_select must be 'nearest' or 'first', got {tile_select!r}")
    if num_tiles_x < 1 or (num_tiles_y is not None and num_tiles_y < 1):
        raise ConfigError(f"num_tiles_x must be >= 1, got {num_tiles_x}")
    n_y = num_tiles_x if num_tiles_y is None else num_tiles_y
    n_cells = num_tiles_x * n_y
    i, j = grid_cells(coords, num_tiles_x, n_y)
    cell = j * num_tiles_x + i
    points = np.arange(len(cell))
    if (i < 0).any():  # drop non-finite points
        points = np.flatnonzero(i >= 0)
        i, j, cell = i[points], j[points], cell[points]
    if tile_select == "nearest":
        xy = np.asarray(coords, dtype=np.float64)[points]
        d2 = (xy[:, 0] - (i + 0.5) / num_tiles_x) ** 2 + (xy[:, 1] - (j + 0.5) / n_y) ** 2
        best = np.full(n_cells, np.inf)
        np.minimum.at(best, cell, d2)
        # among the points at each cell's least distance, the lowest index wins
        at_best = d2 == best[cell]
        points, cell = points[at_best], cell[at_best]
    chosen = np.full(n_cells, np.iinfo(np.int64).max)
    np.minimum.at(chosen, cell, points)
    chosen[chosen == np.iinfo(np.int64).max] = -1
    return chosen.reshape(n_y, num_tiles_x)


class CellSelector:
    """:func:`select_tiles` over a layout read in consecutive chunks: the same point per cell.

    Each chunk's winners (:func:`select_tiles` on the chunk) challenge the cells' current
    ones; a later chunk wins only strictly (nearer, or for ``"first"`` never), so ties go to
    the lower index as on the whole layout. Memory: a few arrays of one value per cell.

    Parameters
    ----------
    num_tiles_x : int
        Columns.
    num_tiles_y : int, optional
        Rows; default ``num_tiles_x``.
    tile_select : {"nearest", "first"}

    Attributes
    ----------
    grid : ndarray, shape (num_tiles_y, num_tiles_x), dtype int64
        As :func:`select_tiles` gives for everything added so far.
    """

    def __init__(
        self, num_tiles_x: int, *, num_tiles_y: int | None = None, tile_select: str = "nearest"
    ) -> None:
        select_tiles(
            np.zeros((0, 2)), num_tiles_x, num_tiles_y=num_tiles_y, tile_select=tile_select
        )
        self.n_x, self.n_y = num_tiles_x, num_tiles_x if num_tiles_y is None else num_tiles_y
        self.tile_select = tile_select
        self._best = np.full(self.n_x * self.n_y, np.inf)
        self._point = np.full(self.n_x * self.n_y, -1, dtype=np.int64)
        self._seen = 0

    @property
    def grid(self) -> np.ndarray:
        return self._point.reshape(self.n_y, self.n_x)

    def add(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offer the next chunk of the layout (in [0, 1]).

        Returns
        -------
        cells, rows : ndarray of int64
            The cells (flat, ``j * num_tiles_x + i``) this chunk now holds, and the chunk's
            row that holds each.
        """
        coords = np.asarray(coords, dtype=np.float64)
        local = select_tiles(
            coords, self.n_x, num_tiles_y=self.n_y, tile_select=self.tile_select
        ).ravel()
        cells = np.flatnonzero(local >= 0)
        rows = local[cells]
        if self.tile_select == "nearest":
            i, j = cells % self.n_x, cells // self.n_x
            xy = coords[rows]
            d2 = (xy[:, 0] - (i + 0.5) / self.n_x) ** 2 + (xy[:, 1] - (j + 0.5) / self.n_y) ** 2
            better = d2 < self._best[cells]
            self._best[cells[better]] = d2[better]
        else:
            better = self._point[cells] < 0
        cells, rows = cells[better], rows[better]
        self._point[cells] = self._seen + rows
        self._seen += len(coords)
        return cells, rows
