"""Tiles of many slides read back at one size, in parallel: for mosaics and the atlas.

A tile is named by its slide and level-0 top-left corner (``slide``, ``x``, ``y``) and
read straight from the slide's pyramid (:class:`histoatlas.io.wsi.WSI`) at ``tile_px``.
Where the model saw only the centre of each tile (``view_fraction`` < 1 in the slides
table: an encoder preset that crops, such as GigaPath), that centre is what is read.
Threads each keep their own OpenSlide handle per slide; one task reads a chunk of one
slide's tiles, which amortises the handle and keeps the threads busy.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.errors import HistoatlasError
from histoatlas.io.wsi import WSI

READ_CHUNK = 16  # tiles of one slide per task
SLIDE_COLUMNS = ("slide", "path", "mpp", "tile_um")


def slides_table(slides: pd.DataFrame | None, refs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The slide table indexed by slide, checked to locate the slides of ``refs``.

    Parameters
    ----------
    slides : DataFrame or None
        The dataset's ``slides.parquet``: ``slide``, ``path``, ``mpp``, ``tile_um``
        (and, checked on opening when present, ``patch_size_level0``).
    refs : DataFrame, optional
        Tiles to read (``slide``, ...): each of their slides must be in the table.

    Returns
    -------
    DataFrame
        ``slides`` indexed by ``slide`` (the column kept).

    Raises
    ------
    HistoatlasError
        If a column or a slide is missing (the message names them).
    """
    if slides is None or not set(SLIDE_COLUMNS) <= set(slides.columns):
        have = "none" if slides is None else ", ".join(slides.columns)
        raise HistoatlasError(
            f"reading tiles from slides needs a slides table with {sorted(SLIDE_COLUMNS)} "
            f"(the dataset's slides.parquet); got: {have}"
        )
    table = slides.set_index("slide", drop=False)
    if refs is not None:
        _check_known(table, refs)
    return table


def _check_known(table: pd.DataFrame, refs: pd.DataFrame) -> None:
    unknown = sorted(set(refs["slide"]) - set(table.index))
    if unknown:
        raise HistoatlasError(f"slide(s) {unknown[:5]} are not in the slides table")


class TileReader:
    """Reads tiles of many slides at one size, in parallel; a context manager.

    Parameters
    ----------
    slides : DataFrame
        The dataset's slide table (see :func:`slides_table`).
    tile_px : int
        Edge of the tiles returned.
    num_workers : int, optional
        Threads; default ``min(8, cpu count)``.

    Examples
    --------
    >>> with TileReader(slides, 224) as reader:  # doctest: +SKIP
    ...     tiles = reader.read(refs)  # refs: DataFrame with slide, x, y
    """

    def __init__(self, slides: pd.DataFrame, tile_px: int, *, num_workers: int | None = None):
        self.slides = slides_table(slides)
        self.tile_px = int(tile_px)
        self._pool = ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1))
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads and close every slide handle."""
        self._pool.shutdown(wait=True)
        for wsi in self._opened:
            wsi.close()
        self._opened.clear()

    def read(self, refs: pd.DataFrame) -> list[np.ndarray]:
        """Read the tiles whose level-0 top-left corners are ``refs`` (slide, x, y).

        Returns
        -------
        list of ndarray, shape (tile_px, tile_px, 3), dtype uint8
            In the order of ``refs``.
        """
        refs = refs.reset_index(drop=True)
        _check_known(self.slides, refs)
        out: list[np.ndarray | None] = [None] * len(refs)
        slide_col, xs, ys = refs["slide"].to_numpy(), refs["x"].to_numpy(), refs["y"].to_numpy()

        def task(slide: str, rows: np.ndarray) -> None:
            wsi, offset = self._wsi(slide)
            for r in rows:
                out[r] = wsi.read_tile(int(xs[r]) + offset, int(ys[r]) + offset)

        futures = []
        for slide, rows in pd.Series(slide_col).groupby(slide_col, sort=False).indices.items():
            for start in range(0, len(rows), READ_CHUNK):
                futures.append(self._pool.submit(task, slide, rows[start : start + READ_CHUNK]))
        for future in futures:
            future.result()
        return out

    def _wsi(self, slide: str) -> tuple[WSI, int]:
        cache = self._local.__dict__.setdefault("wsis", {})
        if slide not in cache:
            cache[slide] = self._open(slide)
            with self._lock:
                self._opened.append(cache[slide][0])
        return cache[slide]

    def _open(self, slide: str) -> tuple[WSI, int]:
        """The slide tiled to what the model saw of each tile, and that view's offset."""
        row = self.slides.loc[slide]
        fraction = float(row.get("view_fraction", 1.0))
        fraction = 1.0 if pd.isna(fraction) else fraction
        tile_um = float(row["tile_um"])
        wsi = WSI(row["path"], self.tile_px, tile_um * fraction, mpp=row["mpp"], name=slide)
        patch = int(round(tile_um / wsi.mpp))
        expected = row.get("patch_size_level0")
        if expected is not None and not pd.isna(expected) and patch != expected:
            wsi.close()
            raise HistoatlasError(
                f"slide {slide!r}: reopened with tile_um={row['tile_um']} at mpp={wsi.mpp:g} "
                f"its tiles span {patch} level-0 px, the dataset says "
                f"{int(expected)}; the slides table does not match the slide (rerun merge_dataset)"
            )
        return wsi, (patch - wsi.patch_size_level0) // 2
