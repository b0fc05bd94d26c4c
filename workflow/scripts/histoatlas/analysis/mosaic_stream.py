"""The cohort's mosaic map from ``coords.parquet`` read in row batches (the render rule's work).

Two passes over the layout's two columns: the extent of the finite points (a layout outside
[0, 1] is scaled as :func:`~histoatlas.analysis.mosaic_grid.unit_square` scales it), then the
cell selection chunk by chunk (:class:`~histoatlas.analysis.mosaic_grid.CellSelector`), which
keeps each cell's tile. Memory holds one batch and one row per cell, whatever the cohort's
size; the picture is then composed from the chosen tiles alone.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.mosaic import Mosaic
from histoatlas.analysis.mosaic_grid import CellSelector, scale_to_unit
from histoatlas.errors import EmptyDatasetError, HistoatlasError
from histoatlas.io.table_rows import iter_batches

BATCH_ROWS = 1 << 16  # rows read at a time: a few MB, whatever the cohort
REF_COLUMNS = ("slide", "tile", "x", "y")


def mosaic_from_coords(
    coords_path: str | os.PathLike,
    slides: pd.DataFrame,
    *,
    num_tiles_x: int = 50,
    tile_select: str = "nearest",
    batch_rows: int = BATCH_ROWS,
    **kwargs: Any,
) -> Mosaic:
    """A mosaic of the tiles of a saved map, chosen in one streamed pass.

    Equal to ``SlideMap.load(coords_path, slides=slides).generate_mosaic(...)``, cell for
    cell and in its manifest, without holding the layout.

    Parameters
    ----------
    coords_path : path
        ``coords.parquet`` (``slide``, ``tile``, ``x``, ``y``, ``umap_x``, ``umap_y``).
    slides : DataFrame
        The dataset's ``slides.parquet``, to read the tiles from their slides.
    num_tiles_x, tile_select : int, str
        As :class:`~histoatlas.analysis.mosaic.Mosaic`.
    batch_rows : int
        Rows read at a time.
    **kwargs
        ``tile_px``, ``background``, ``num_workers`` of ``Mosaic``.

    Returns
    -------
    Mosaic
        Its manifest's ``index`` is the row in ``coords.parquet``.

    Raises
    ------
    EmptyDatasetError
        If the map has no points.
    """
    import pyarrow.parquet as pq

    source = pq.ParquetFile(coords_path)
    missing = {"umap_x", "umap_y", "slide", "x", "y"} - set(source.schema_arrow.names)
    if missing:
        raise HistoatlasError(f"{coords_path} lacks column(s) {sorted(missing)}; rerun gather_umap")
    lo, hi = _extent(coords_path, batch_rows)
    selector = CellSelector(num_tiles_x, tile_select=tile_select)
    columns = [c for c in REF_COLUMNS if c in source.schema_arrow.names]
    n_cells = selector.n_x * selector.n_y
    held = {c: np.empty(n_cells, dtype=object if c == "slide" else np.int64) for c in columns}
    unit = np.full((n_cells, 2), np.nan)
    for batch in iter_batches(
        coords_path, columns=[*columns, "umap_x", "umap_y"], batch_rows=batch_rows
    ):
        xy = scale_to_unit(_xy(batch), lo, hi)
        cells, rows = selector.add(xy)
        for column in columns:
            held[column][cells] = batch[column].take(rows).to_numpy(zero_copy_only=False)
        unit[cells] = xy[rows]
    cells = np.flatnonzero(selector.grid.ravel() >= 0)
    if not len(cells):
        raise EmptyDatasetError("mosaic: no points to draw (the map is empty)")
    return Mosaic(
        pd.DataFrame({c: held[c][cells] for c in columns}),
        unit[cells],
        slides=slides,
        num_tiles_x=num_tiles_x,
        tile_select=tile_select,
        point_ids=selector.grid.ravel()[cells],
        **kwargs,
    )


def _xy(batch) -> np.ndarray:
    return np.stack(
        [
            batch["umap_x"].to_numpy(zero_copy_only=False),
            batch["umap_y"].to_numpy(zero_copy_only=False),
        ],
        axis=1,
    ).astype(np.float64)


def _extent(coords_path, batch_rows: int):
    """Per-axis min and max of the finite points (infinite when there are none)."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for batch in iter_batches(coords_path, columns=["umap_x", "umap_y"], batch_rows=batch_rows):
        xy = _xy(batch)
        finite = xy[np.isfinite(xy).all(axis=1)]
        if len(finite):
            lo, hi = np.minimum(lo, finite.min(axis=0)), np.maximum(hi, finite.max(axis=0))
    return lo, hi
