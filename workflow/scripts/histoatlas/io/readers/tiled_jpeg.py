"""A decode-once region reader for JPEG-tiled TIFF pyramids (Aperio SVS, generic, Philips).

OpenSlide's ``read_region`` decodes the source tiles a region touches, composites them
with cairo into premultiplied ARGB and hands that to Python, which converts it again: 0.9
to 2 ms of one core per 224 px tile. :class:`TiledJpegRegions` reads the compressed tiles
straight from the file (the TIFF page's tile offsets, byte counts and JPEG tables), decodes
each with libjpeg-turbo once (:func:`imagecodecs.jpeg8_decode`, colour space forced from the
photometric tag as OpenSlide forces it), keeps a few rows of decoded tiles while a grid is
read row by row (:class:`DecodedTiles`), and cuts the regions with NumPy, reproducing
OpenSlide's pixels exactly (:mod:`~histoatlas.io.readers.tile_compose`, including its
sub-pixel filtering at fractional offsets).

Whatever it cannot reproduce it reads through its own OpenSlide handle: a level it does
not map (another compression or format, see :class:`~histoatlas.io.readers.tiff_levels.
LevelMap`), and single reads (a zero-byte, truncated or undecodable source tile, negative
coordinates, regions over 4096 px). ``stats`` counts both.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from histoatlas.errors import TileReadError
from histoatlas.io.readers.tiff_levels import LevelMap, TiffLevel
from histoatlas.io.readers.tile_compose import LevelGeometry, compose, plan_region
from histoatlas.io.regions import OpenSlideRegions

# Hard cap of the decoded-tile cache, whatever the slide's width (a few rows of a
# 100,000 px wide level of 240 px tiles fit).
CACHE_BYTES = 256 * 2**20
# Tile rows of the level kept at least (a 224 px region spans 2 rows of 240 px tiles).
CACHE_ROWS = 3


class UnreadableTile(TileReadError):
    """A source tile the fast path will not decode (zero bytes, truncated, corrupt).

    The reader catches it and reads the region with OpenSlide instead, which decides.
    """


class DecodedTiles:
    """Decoded source tiles, least recently used dropped first; shared by reading threads.

    Its capacity follows the level read: ``CACHE_ROWS`` tile rows of it, or the rows one
    region spans plus one (a grid read row by row then decodes each source tile once), and
    never more than ``CACHE_BYTES``.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._tiles: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._level: int | None = None
        self._fitted: tuple | None = None  # the last fit's arguments: a WSI reads one size
        self.capacity = 0

    def __len__(self) -> int:
        return len(self._tiles)

    def fit(self, level: int, geom: LevelGeometry, width: int, height: int) -> None:
        """Make room for regions of ``width`` x ``height`` read at ``level``."""
        if self._fitted == (level, width, height):  # the same again: nothing changes
            return
        span_rows = -(-(height + 1) // geom.tile_h) + 1
        span_cols = -(-(width + 1) // geom.tile_w) + 1
        tiles = max(CACHE_ROWS, span_rows) * geom.tiles_across + span_rows * span_cols
        tiles = min(tiles, max(2 * span_rows * span_cols, self.max_bytes // geom.tile_bytes))
        with self._lock:
            if level != self._level:  # another level: its own rows, not the largest seen
                self._level, self.capacity = level, tiles
            self.capacity = max(self.capacity, tiles)
            self._fitted = (level, width, height)

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        with self._lock:
            self._tiles[key] = tile
            while len(self._tiles) > self.capacity:
                self._tiles.popitem(last=False)


class TiledJpegRegions:
    """Regions of a JPEG-tiled TIFF slide as OpenSlide gives them, each tile decoded once.

    A region reader (:class:`~histoatlas.io.regions.RegionReader`): one per reading thread
    or process; threads share their decoded tiles (:meth:`share_cache`).

    Parameters
    ----------
    path : Path
        The slide file.
    name : str
        Slide id, for messages.
    levels : LevelMap, optional
        The slide's level map (computed from the file when not given; pass it to readers
        opened later so the TIFF is parsed once).
    fallback : OpenSlideRegions, optional
        An open OpenSlide reader of the same slide, for what the fast path cannot read
        (opened when not given); it also gives ``handle`` and ``background``.

    Attributes
    ----------
    handle : openslide.OpenSlide
        The fallback's handle (levels, dimensions, properties).
    background : (int, int, int)
    stats : collections.Counter
        ``fast`` and ``fallback`` region counts, ``decoded`` tiles, ``cache_hits`` and
        ``fallback: <why>`` per reason.

    Examples
    --------
    >>> reader = TiledJpegRegions(Path("CMU-1-Small-Region.svs"), name="cmu")  # doctest: +SKIP
    >>> reader.read_region((448, 224), 0, (224, 224)).shape  # doctest: +SKIP
    (224, 224, 3)
    """

    kind = "tiled-jpeg"

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        levels: LevelMap | None = None,
        fallback: OpenSlideRegions | None = None,
    ) -> None:
        self.path, self.name = Path(path), name
        self.fallback = fallback if fallback is not None else OpenSlideRegions(path, name=name)
        self.handle = self.fallback.handle
        self.background = self.fallback.background
        self.levels = levels if levels is not None else LevelMap.of(self.path, self.handle)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._fd_lock = threading.Lock()
        self._cache = DecodedTiles()
        self.stats: Counter[str] = Counter()

    def share_cache(self, shared: dict) -> None:
        """Use the decoded tiles (and OpenSlide cache) kept in ``shared`` by other readers."""
        self._cache = shared.setdefault(self.kind, self._cache)
        self.fallback.share_cache(shared)

    @property
    def cached_tiles(self) -> int:
        """Decoded source tiles held now (a few tile rows at most)."""
        return len(self._cache)

    def supports(self, level: int) -> bool:
        """Whether ``level`` is read by the fast path (else ``levels.reason`` says why)."""
        return self.levels.get(level) is not None

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], what: str = ""
    ) -> np.ndarray:
        """RGB ``(size[1], size[0], 3)`` uint8 at ``level`` from level-0 ``location``.

        What the fast path cannot read (``what`` names it in messages) is read by
        OpenSlide, which raises :class:`~histoatlas.errors.TileReadError` on a bad tile.
        """
        (x0, y0), (width, height) = location, size
        x0, y0, width, height = int(x0), int(y0), int(width), int(height)
        lvl = self.levels.get(level)
        if lvl is None:
            why = f"level {level} unsupported"
            return self._fallback(x0, y0, level, (width, height), what, why)
        self._cache.fit(level, lvl.geom, width, height)
        plan = plan_region(lvl.geom, x0, y0, width, height)
        if plan is None:
            return self._fallback(x0, y0, level, (width, height), what, "region not reproducible")
        try:
            pixels = compose(
                plan, lvl.geom, lambda tx, ty: self._tile(lvl, tx, ty), self.background
            )
        except UnreadableTile as err:
            return self._fallback(x0, y0, level, (width, height), what, str(err))
        self.stats["fast"] += 1
        return pixels

    def _fallback(self, x0, y0, level, size, what: str, why: str) -> np.ndarray:
        self.stats["fallback"] += 1
        self.stats[f"fallback: {why}"] += 1
        return self.fallback.read_region((x0, y0), level, size, what)

    # -- source tiles (also what the GPU path sends to nvJPEG) -----------------------------

    def geometry(self, level: int) -> LevelGeometry:
        """The level's grid as OpenSlide paints it (supported levels only)."""
        return self._level(level).geom

    def tables(self, level: int) -> bytes | None:
        """The level's JPEGTables (SOI, quantisation and Huffman tables, EOI), if any."""
        return self._level(level).tables

    def colorspace(self, level: int) -> str:
        """``"RGB"`` or ``"YCbCr"``: how the level's JPEG data is decoded (photometric tag)."""
        return self._level(level).colorspace

    def tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        """One decoded source tile, ``(tile_h, tile_w, 3)`` uint8 (cached).

        Raises
        ------
        UnreadableTile
            If the tile has zero bytes, is truncated or does not decode.
        """
        return self._tile(self._level(level), tx, ty)

    def raw_tile(self, level: int, tx: int, ty: int) -> bytes:
        """The compressed bytes of one source tile (abbreviated stream: tables elsewhere).

        Raises
        ------
        UnreadableTile
            If the tile has zero bytes or the file ends inside it.
        """
        lvl = self._level(level)
        index = ty * lvl.geom.tiles_across + tx
        offset, count = int(lvl.offsets[index]), int(lvl.counts[index])
        if count == 0:
            raise UnreadableTile(f"level {level} tile ({tx}, {ty}) has zero bytes")
        data = _pread(self._fd, count, offset, self._fd_lock)
        if len(data) != count:
            raise UnreadableTile(f"level {level} tile ({tx}, {ty}) is truncated in the file")
        return data

    def _level(self, level: int) -> TiffLevel:
        lvl = self.levels.get(level)
        if lvl is None:
            raise ValueError(
                f"{self.path.name}: level {level} is not read by the fast path: "
                f"{self.levels.reason(level)}"
            )
        return lvl

    def _tile(self, lvl: TiffLevel, tx: int, ty: int) -> np.ndarray:
        key = (lvl.index, tx, ty)
        tile = self._cache.get(key)
        if tile is not None:
            self.stats["cache_hits"] += 1
            return tile
        tile = self._decode(lvl, tx, ty)
        self._cache.put(key, tile)
        self.stats["decoded"] += 1
        return tile

    def _decode(self, lvl: TiffLevel, tx: int, ty: int) -> np.ndarray:
        import imagecodecs

        data = self.raw_tile(lvl.index, tx, ty)
        # libjpeg warns on truncated data and decodes the rest; OpenSlide fails on the
        # warning, imagecodecs ignores it: let OpenSlide decide on such tiles.
        if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
            raise UnreadableTile(f"level {lvl.index} tile ({tx}, {ty}) is not a complete JPEG")
        try:
            tile = imagecodecs.jpeg8_decode(
                data, tables=lvl.tables, colorspace=lvl.colorspace, outcolorspace="RGB"
            )
        except Exception as err:  # imagecodecs raises its own error types
            raise UnreadableTile(f"level {lvl.index} tile ({tx}, {ty}): {err}") from err
        shape = (lvl.geom.tile_h, lvl.geom.tile_w, 3)
        if tile.shape != shape or tile.dtype != np.uint8:
            raise UnreadableTile(
                f"level {lvl.index} tile ({tx}, {ty}) decodes to {tile.shape}, not {shape}"
            )
        return tile

    def close(self) -> None:
        """Close the file and the OpenSlide handle; the reader cannot read afterwards."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.fallback.close()

    def __repr__(self) -> str:
        fast = [k for k in range(len(self.levels.levels)) if self.supports(k)]
        return f"TiledJpegRegions({str(self.path)!r}, fast levels {fast})"


def _pread(fd: int, count: int, offset: int, lock: threading.Lock) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    with lock:  # pragma: no cover - Windows
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, count)
