"""Mosaic maps: a UMAP layout drawn with the tiles themselves (an activation atlas).

The unit square is cut into ``num_tiles_x`` x ``num_tiles_x`` cells; each cell holding
points shows one tile, the one nearest the cell centre (``tile_select="nearest"``) or
the first in data order (``"first"``). Selection is two vectorised O(N) passes
(``np.minimum.at``), no loop over cells. The picture is composed on a numpy canvas; tiles
of slides are read back in parallel (:class:`~histoatlas.analysis.tile_reader.TileReader`)
at the mosaic's ``tile_px`` straight from the slide's pyramid.

Cell ``(i, j)`` covers ``x`` in ``[i/n, (i+1)/n)`` and ``y`` in ``[j/n, (j+1)/n)`` (the
last cell of each axis also takes 1.0); ``j = 0`` is the bottom row, so the picture
is oriented as the UMAP scatter plot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.mosaic_grid import select_tiles, unit_square
from histoatlas.analysis.tile_reader import TileReader, slides_table
from histoatlas.atomic import atomic_output
from histoatlas.errors import ConfigError, EmptyDatasetError, HistoatlasError

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


class Mosaic:
    """A mosaic map: one tile per grid cell of a 2-D layout, composed into one image.

    Parameters
    ----------
    images : ndarray, sequence or DataFrame
        What to draw for each point, one of: an ``(N, H, W, C)`` uint8 array or a list
        of ``(H, W, C)`` uint8 arrays (C = 1, 3 or 4; resized with Lanczos); a list of
        ``(slide, tile_index)`` tuples (``tiles`` gives their level-0 ``x``, ``y``); or
        a DataFrame with ``slide``, ``x``, ``y`` (level-0 top-left; e.g. a SlideMap's
        ``data``). Tiles of slides are read on demand, only those selected.
    coords : ndarray, shape (N, 2)
        Layout; taken as is when within [0, 1], else min-max scaled per axis.
    slides : DataFrame, optional
        Needed for tiles of slides: ``slide``, ``path``, ``mpp``, ``tile_um``,
        (checked when present) ``patch_size_level0`` and (optional) ``view_fraction``,
        the centre of each tile its model saw (see ``ModelParams.view_fraction``): the
        mosaic shows what the model saw.
    tiles : DataFrame, optional
        ``slide``, ``tile``, ``x``, ``y``: resolves ``(slide, tile_index)`` tuples.
    num_tiles_x : int
        Grid columns (and rows).
    tile_select : {"nearest", "first"}
        Which point represents a cell.
    tile_px : int
        Pixels of each drawn tile; the picture is ``num_tiles_x * tile_px`` square.
    background : colour
        Of empty cells: RGB tuple or a name/hex string PIL knows (default white).
    num_workers : int, optional
        Threads reading slides; default ``min(8, cpu count)``.
    point_ids : ndarray of int, shape (N,), optional
        What the manifest's ``index`` names for each point (default its row here): a
        mosaic of points chosen from a larger layout reports their rows there.

    Attributes
    ----------
    coords : ndarray, shape (N, 2)
        The layout in [0, 1] used for the grid.
    grid : ndarray, shape (num_tiles_x, num_tiles_x), dtype int64
        ``[j, i]``: point shown in cell ``(i, j)`` (``j = 0`` bottom), -1 if empty.

    Examples
    --------
    >>> mosaic = Mosaic(images, coords, num_tiles_x=20, tile_px=32)  # doctest: +SKIP
    >>> mosaic.save("mosaic.png")  # doctest: +SKIP
    >>> mosaic.manifest().head()  # doctest: +SKIP
    """

    def __init__(
        self,
        images: np.ndarray | Sequence | pd.DataFrame,
        coords: np.ndarray,
        *,
        slides: pd.DataFrame | None = None,
        tiles: pd.DataFrame | None = None,
        num_tiles_x: int = 50,
        tile_select: str = "nearest",
        tile_px: int = 64,
        background: Any = (255, 255, 255),
        num_workers: int | None = None,
        point_ids: np.ndarray | None = None,
    ) -> None:
        from PIL import ImageColor

        if int(tile_px) < 1:
            raise ConfigError(f"tile_px must be >= 1, got {tile_px}")
        self.num_tiles_x = int(num_tiles_x)
        self.num_tiles_y = self.num_tiles_x
        self.tile_select = tile_select
        self.tile_px = int(tile_px)
        colour = ImageColor.getrgb(background) if isinstance(background, str) else background
        self.background = tuple(int(v) for v in colour[:3])
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.coords = unit_square(coords)
        n = len(self.coords)
        if n == 0:
            raise EmptyDatasetError("mosaic: no points to draw (the map is empty)")
        self._refs: pd.DataFrame | None = None
        self._images: Any = None
        if isinstance(images, pd.DataFrame):
            self._refs = _check_refs(images, n)
        elif isinstance(images, np.ndarray) and images.ndim in (3, 4):
            self._images = images
        elif len(images) and isinstance(images[0], tuple):
            self._refs = _refs_from_tuples(images, tiles, n)
        else:
            self._images = list(images)
        if self._images is not None and len(self._images) != n:
            raise ValueError(f"{len(self._images)} images for {n} coordinates")
        if self._refs is not None:
            self._slides = slides_table(slides, self._refs)
        self.grid = select_tiles(self.coords, self.num_tiles_x, tile_select=tile_select)
        self._ids = None if point_ids is None else np.asarray(point_ids, dtype=np.int64)
        self._canvas: np.ndarray | None = None

    @classmethod
    def from_slidemap(cls, slidemap: Any, **kwargs: Any) -> Mosaic:
        """A mosaic of a SlideMap's tiles, read from its dataset's slides.

        Parameters
        ----------
        slidemap : SlideMap
            A map of tiles (or of centroid tiles) with ``slide``, ``x``, ``y`` columns
            and a ``slides`` table.
        **kwargs
            ``num_tiles_x``, ``tile_select``, ``tile_px``, ``background``,
            ``num_workers``.

        Returns
        -------
        Mosaic
        """
        data = slidemap.data
        if not {"slide", "x", "y"} <= set(data.columns):
            raise HistoatlasError(
                "a mosaic needs tiles (slide, x, y per point); this map has none "
                f"(map_slide={slidemap.map_slide!r}); use a tile map or map_slide='centroid'"
            )
        columns = [c for c in ("slide", "tile", "x", "y") if c in data.columns]
        return cls(data[columns], slidemap.coords, slides=slidemap.slides, **kwargs)

    # -- selection ---------------------------------------------------------------

    def manifest(self) -> pd.DataFrame:
        """Which point sits in which cell, one row per filled cell.

        Returns
        -------
        DataFrame
            ``cell_i``, ``cell_j`` (column, row; ``cell_j = 0`` at the bottom),
            ``canvas_x``, ``canvas_y`` (top-left pixel in the picture), ``index`` (row
            of the input), ``umap_x``, ``umap_y``, and for tiles of slides ``slide``,
            (``tile``), ``x``, ``y``. Rows from the top of the picture down, left to right.
        """
        rows, i = np.nonzero(self.grid[::-1] >= 0)  # picture order: top row first
        j = self.num_tiles_y - 1 - rows
        index = self.grid[j, i]
        table = pd.DataFrame(
            {
                "cell_i": i,
                "cell_j": j,
                "canvas_x": i * self.tile_px,
                "canvas_y": rows * self.tile_px,
                "index": index if self._ids is None else self._ids[index],
                "umap_x": self.coords[index, 0],
                "umap_y": self.coords[index, 1],
            }
        )
        if self._refs is not None:
            refs = self._refs.iloc[index].reset_index(drop=True)
            table = pd.concat([table, refs], axis=1)
        return table

    def save_manifest(self, path: str | os.PathLike) -> None:
        """Write :meth:`manifest` as Parquet (``.parquet``) or CSV (``.csv``), atomically."""

        suffix = Path(path).suffix.lower()
        if suffix not in (".parquet", ".csv"):
            raise ValueError(f"manifest path {path} must end in .parquet or .csv")
        table = self.manifest()
        with atomic_output(path) as tmp:
            if suffix == ".csv":
                table.to_csv(tmp, index=False)
            else:
                table.to_parquet(tmp, index=False)

    # -- picture -----------------------------------------------------------------

    @property
    def image(self) -> np.ndarray:
        """The picture, ``(num_tiles_y * tile_px, num_tiles_x * tile_px, 3)`` uint8."""
        if self._canvas is None:
            self._canvas = self.render()
        return self._canvas

    def render(self) -> np.ndarray:
        """Compose the picture (reading tiles of slides in parallel).

        Returns
        -------
        ndarray, shape (num_tiles_y * tile_px, num_tiles_x * tile_px, 3), dtype uint8
        """
        px = self.tile_px
        canvas = np.empty((self.num_tiles_y * px, self.num_tiles_x * px, 3), dtype=np.uint8)
        canvas[...] = self.background
        cells = self.manifest()
        rows, i = np.nonzero(self.grid[::-1] >= 0)  # the manifest's order
        tiles = self._fetch(self.grid[self.num_tiles_y - 1 - rows, i])
        for tile, x0, y0 in zip(tiles, cells["canvas_x"], cells["canvas_y"], strict=True):
            canvas[y0 : y0 + px, x0 : x0 + px] = tile
        return canvas

    def save(self, path: str | os.PathLike, *, quality: int = 90) -> None:
        """Write the picture as PNG, JPEG or TIFF (by suffix), atomically.

        Raises
        ------
        ValueError
            For another suffix.
        """
        from PIL import Image

        suffix = Path(path).suffix.lower()
        if suffix not in SAVE_FORMATS:
            raise ValueError(
                f"cannot save a mosaic as {suffix or 'no suffix'!r} ({path}); use one of "
                f"{', '.join(SAVE_FORMATS)}"
            )
        fmt = SAVE_FORMATS[suffix]
        options = {"quality": quality} if fmt == "JPEG" else {}
        with atomic_output(path) as tmp:
            Image.fromarray(self.image).save(tmp, format=fmt, **options)

    def plot(self, ax: Any = None):
        """Show the picture on matplotlib axes (``imshow``, no axis ticks); returns them."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if ax is None else ax
        ax.imshow(self.image)
        ax.set_axis_off()
        return ax

    # -- reading tiles -----------------------------------------------------------

    def _fetch(self, index: np.ndarray) -> list[np.ndarray]:
        if self._refs is None:
            return [_as_tile(self._images[k], self.tile_px, k) for k in index]
        refs = self._refs.iloc[index]
        with TileReader(self._slides, self.tile_px, num_workers=self.num_workers) as reader:
            return reader.read(refs)


def _as_tile(image: np.ndarray, px: int, k: int) -> np.ndarray:
    """One input image as ``(px, px, 3)`` uint8 (Lanczos resize; gray and RGBA to RGB)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image {k} has dtype {image.dtype}; mosaic images must be uint8")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image {k} has shape {image.shape}; expected (H, W), (H, W, 1/3/4)")
    pil = Image.fromarray(image).convert("RGB")
    if pil.size != (px, px):
        pil = pil.resize((px, px), Image.Resampling.LANCZOS)
    return np.asarray(pil)


def _check_refs(refs: pd.DataFrame, n: int) -> pd.DataFrame:
    missing = {"slide", "x", "y"} - set(refs.columns)
    if missing:
        raise ValueError(f"tile references lack column(s) {sorted(missing)}")
    if len(refs) != n:
        raise ValueError(f"{len(refs)} tile references for {n} coordinates")
    return refs.reset_index(drop=True)


def _refs_from_tuples(pairs: Sequence[tuple], tiles: pd.DataFrame | None, n: int) -> pd.DataFrame:
    if tiles is None:
        raise ValueError(
            "(slide, tile_index) tuples need `tiles` (slide, tile, x, y) to locate them"
        )
    if len(pairs) != n:
        raise ValueError(f"{len(pairs)} tile references for {n} coordinates")
    wanted = pd.DataFrame(list(pairs), columns=["slide", "tile"])
    index = pd.MultiIndex.from_frame(tiles[["slide", "tile"]])
    rows = index.get_indexer(pd.MultiIndex.from_frame(wanted))
    if (rows < 0).any():
        k = int(np.flatnonzero(rows < 0)[0])
        raise HistoatlasError(f"tile {pairs[k]!r} is not in the tiles table")
    located = tiles.iloc[rows][["x", "y"]].reset_index(drop=True)
    return pd.concat([wanted, located], axis=1)
