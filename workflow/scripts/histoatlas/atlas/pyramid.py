"""A Deep Zoom image pyramid written tile row by tile row, never the whole picture at once.

Deep Zoom (the format OpenSeadragon reads) stores level ``L`` of a ``W x H`` picture at
``ceil(W / 2**(M - L)) x ceil(H / 2**(M - L))`` pixels, ``M = ceil(log2(max(W, H)))``,
cut into ``tile_size`` squares (``{folder}/{L}/{column}_{row}.jpeg``; here with no
overlap). When the tile size is the mosaic's cell size, the top level's tiles are the
cells themselves, and each tile of the level below is the 2 x 2 block above it halved.
So the writer takes the picture as rows of tiles and keeps at most two rows per level
in memory: a 1000 x 1000-cell mosaic of 224 px tiles (50 GB as one array) streams through.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"
FORMAT = "jpeg"


def max_level(width: int, height: int) -> int:
    """The top level ``M`` of a ``width x height`` Deep Zoom pyramid (level 0 is 1 x 1).

    Examples
    --------
    >>> max_level(1, 1), max_level(2, 1), max_level(224 * 12, 224 * 12)
    (0, 1, 12)
    """
    return math.ceil(math.log2(max(width, height, 1)))


def level_size(width: int, height: int, level: int) -> tuple[int, int]:
    """Pixels ``(w, h)`` of ``level``."""
    scale = 2 ** (max_level(width, height) - level)
    return math.ceil(width / scale), math.ceil(height / scale)


def descriptor(url: str, width: int, height: int, tile_size: int) -> dict[str, Any]:
    """The pyramid's ``.dzi`` descriptor as the JSON object OpenSeadragon accepts inline.

    A page opened from ``file://`` cannot fetch a ``.dzi`` file (Chromium refuses the
    request), so the descriptor goes into the page's data instead.
    """
    return {
        "Image": {
            "xmlns": DZI_NAMESPACE,
            "Url": url,
            "Format": FORMAT,
            "Overlap": "0",
            "TileSize": str(int(tile_size)),
            "Size": {"Width": str(int(width)), "Height": str(int(height))},
        }
    }


def write_pyramid(
    folder: str | os.PathLike,
    rows: Iterable[list[np.ndarray]],
    *,
    width: int,
    height: int,
    tile_size: int,
    quality: int = 85,
) -> int:
    """Write a Deep Zoom pyramid from the top level's tiles, row by row.

    Parameters
    ----------
    folder : path
        The ``*_files`` folder; level folders ``0 .. M`` are created in it.
    rows : iterable of list of ndarray
        Top-level tiles, top row first, each row left to right; tile ``(c, r)`` is
        ``(h, w, 3)`` uint8 with ``w = min(tile_size, width - c * tile_size)`` (and ``h``
        likewise): full tiles except at the right and bottom edges.
    width, height : int
        Pixels of the whole picture.
    tile_size : int
        Edge of the tiles.
    quality : int
        JPEG quality.

    Returns
    -------
    int
        Tiles written, over all levels.

    Raises
    ------
    ValueError
        If a row has the wrong number of tiles or a tile the wrong shape (named by level,
        column and row).
    """
    folder = Path(folder)
    top = max_level(width, height)
    written = [0]

    def save(level_rows: Iterator[list], level: int) -> Iterator[list]:
        w, h = level_size(width, height, level)
        n_cols, n_rows = math.ceil(w / tile_size), math.ceil(h / tile_size)
        (folder / str(level)).mkdir(parents=True, exist_ok=True)
        r = -1
        for r, row in enumerate(level_rows):
            _check_row(row, level, r, w, h, n_cols, n_rows, tile_size)
            for c, tile in enumerate(row):
                tile.save(folder / str(level) / f"{c}_{r}.{FORMAT}", quality=quality)
            written[0] += len(row)
            yield row
        if r + 1 != n_rows:
            raise ValueError(f"level {level}: got {r + 1} rows of tiles, expected {n_rows}")

    stream = save((_as_images(row) for row in rows), top)
    for level in range(top - 1, -1, -1):
        stream = save(_halve(stream), level)
    for _ in stream:
        pass
    return written[0]


def _as_images(row: list[np.ndarray]) -> list:
    from PIL import Image

    return [Image.fromarray(np.asarray(tile, dtype=np.uint8)).convert("RGB") for tile in row]


def _check_row(row, level, r, w, h, n_cols, n_rows, tile_size) -> None:
    if r >= n_rows:
        raise ValueError(f"level {level}: more than the {n_rows} rows of tiles expected")
    if len(row) != n_cols:
        raise ValueError(f"level {level}, row {r}: {len(row)} tiles, expected {n_cols}")
    want_h = min(tile_size, h - r * tile_size)
    for c, tile in enumerate(row):
        want = (min(tile_size, w - c * tile_size), want_h)
        if tile.size != want:
            raise ValueError(
                f"level {level}, tile ({c}, {r}): {tile.size[0]} x {tile.size[1]} px, "
                f"expected {want[0]} x {want[1]}"
            )


def _halve(rows: Iterator[list]) -> Iterator[list]:
    """Rows of the level below: each tile the 2 x 2 block of tiles above, halved."""
    pending = None
    for row in rows:
        if pending is None:
            pending = row
            continue
        yield _merge(pending, row)
        pending = None
    if pending is not None:
        yield _merge(pending, None)


def _merge(upper: list, lower: list | None) -> list:
    from PIL import Image

    out = []
    for c in range(0, len(upper), 2):
        block = [upper[c : c + 2], lower[c : c + 2] if lower is not None else []]
        width = sum(t.size[0] for t in block[0])
        height = block[0][0].size[1] + (block[1][0].size[1] if block[1] else 0)
        canvas = Image.new("RGB", (width, height))
        y = 0
        for pair in block:
            x = 0
            for tile in pair:
                canvas.paste(tile, (x, y))
                x += tile.size[0]
            if pair:
                y += pair[0].size[1]
        out.append(canvas.reduce(2))
    return out
