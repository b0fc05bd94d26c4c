"""Tiles read back from the slides for the atlas: mosaic cells and hover thumbnails.

Tiles are read at the size the atlas shows them, straight from each slide's pyramid, in
parallel (:class:`histoatlas.analysis.tile_reader.TileReader`). Thumbnails of many tiles
go into sprite sheets (``cols x cols`` thumbnails per JPEG), so 10^4 thumbnails are a dozen
files rather than 10^4.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from histoatlas.analysis.tile_reader import TileReader

SHEET_COLS = 32  # thumbnails per sheet row (and rows per sheet)


def mosaic_rows(
    reader: TileReader, cells: pd.DataFrame, n_cols: int, n_rows: int, background: tuple
) -> Iterator[list[np.ndarray]]:
    """Top-level pyramid tiles of a mosaic, one picture row at a time (top row first).

    Parameters
    ----------
    reader : TileReader
        At the atlas's tile size.
    cells : DataFrame
        ``mosaic.parquet``: ``cell_i``, ``cell_j`` (``cell_j = 0`` at the bottom),
        ``slide``, ``x``, ``y``.
    n_cols, n_rows : int
        Grid size.
    background : (int, int, int)
        Colour of empty cells.

    Yields
    ------
    list of ndarray
        ``n_cols`` tiles ``(tile_px, tile_px, 3)`` uint8.
    """
    px = reader.tile_px
    blank = np.empty((px, px, 3), np.uint8)
    blank[...] = background
    picture_row = n_rows - 1 - cells["cell_j"].to_numpy()
    by_row = pd.Series(np.arange(len(cells))).groupby(picture_row).indices
    for r in range(n_rows):
        row = [blank] * n_cols
        members = by_row.get(r)
        if members is not None:
            chosen = cells.iloc[members]
            for i, tile in zip(chosen["cell_i"], reader.read(chosen), strict=True):
                row[int(i)] = tile
        yield row


def write_thumbnails(
    reader: TileReader, refs: pd.DataFrame, folder: str | os.PathLike, *, quality: int = 85
) -> list[str]:
    """Write thumbnails of ``refs`` (slide, x, y) into sprite sheets.

    Thumbnail ``k`` sits in sheet ``k // SHEET_COLS**2`` at column ``k % SHEET_COLS`` and
    row ``(k // SHEET_COLS) % SHEET_COLS``.

    Returns
    -------
    list of str
        Sheet file names (``0.jpeg``, ``1.jpeg``, ...), in ``folder``.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    px, per_sheet = reader.tile_px, SHEET_COLS * SHEET_COLS
    names = []
    for s in range(math.ceil(len(refs) / per_sheet)):
        chunk = refs.iloc[s * per_sheet : (s + 1) * per_sheet]
        n_rows = math.ceil(len(chunk) / SHEET_COLS)
        sheet = np.full((n_rows * px, SHEET_COLS * px, 3), 255, np.uint8)
        for k, tile in enumerate(reader.read(chunk)):
            r, c = divmod(k, SHEET_COLS)
            sheet[r * px : (r + 1) * px, c * px : (c + 1) * px] = tile
        names.append(f"{s}.jpeg")
        Image.fromarray(sheet).save(folder / names[-1], quality=quality)
    return names
