"""Read whole-slide images as a grid of tiles of a fixed physical size.

:class:`WSI` opens any slide OpenSlide reads (SVS, NDPI, MRXS, SCN, BIF, generic or
Philips TIFF, DICOM), lays a grid of ``tile_um``-micron tiles over level 0, picks the
tiles on tissue (Otsu on a thumbnail) and reads them from the coarsest pyramid level
that still has the resolution ``tile_px`` needs, resized to ``tile_px``. Only the
tiles asked for are read: a whole level is never loaded.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from histoatlas import tissue
from histoatlas.errors import ConfigError, MPPError, SlideError, TileReadError

# MPP outside (0, MAX_MPP] is a wrong tag (e.g. a 72 dpi screen resolution), not a scan.
MAX_MPP = 100.0
# A level whose downsample exceeds the one needed by less than this (relative) still
# counts as adequate: pyramids store 2.0003 or 4.002 for nominal 2 and 4.
LEVEL_TOLERANCE = 0.01
# Memory cap of one read while building a thumbnail (bytes of RGBA at the read level).
THUMBNAIL_STRIP_BYTES = 64 * 2**20
# Decoded-tile cache shared by the reading threads of one iter_batches call.
TILE_CACHE_BYTES = 128 * 2**20
# Most tiles one reading task reads (and filters) at a time.
READ_CHUNK = 16


class TileBatch(NamedTuple):
    """A batch of tiles from :meth:`WSI.iter_batches`.

    Attributes
    ----------
    tiles : ndarray, shape (B, tile_px, tile_px, 3), dtype uint8
    grid : ndarray, shape (B, 2), dtype int32
        Grid index (i, j) of each tile.
    coords : ndarray, shape (B, 2), dtype int64
        Level-0 (x, y) of each tile's top-left corner.
    """

    tiles: np.ndarray
    grid: np.ndarray
    coords: np.ndarray


def parse_tile_um(tile_um: float | str, tile_px: int) -> float:
    """Tile edge in microns, from microns or from a magnification string.

    A magnification ``"<m>x"`` means ``10 / m`` microns per pixel (1.0 at 10x, 0.5 at
    20x, 0.25 at 40x), so the tile covers ``tile_px * 10 / m`` microns.

    Parameters
    ----------
    tile_um : float or str
        Microns (a number or a numeric string) or a magnification such as ``"20x"``.
    tile_px : int
        Tile edge in pixels.

    Returns
    -------
    float
        Tile edge in microns, > 0.

    Raises
    ------
    ConfigError
        If ``tile_um`` is neither a positive number nor ``"<positive number>x"``.

    Examples
    --------
    >>> parse_tile_um("20x", 224)
    112.0
    >>> parse_tile_um(302, 299)
    302.0
    """
    value: Any = tile_um
    try:
        if isinstance(tile_um, str) and tile_um.strip().lower().endswith("x"):
            value = int(tile_px) * 10.0 / float(tile_um.strip()[:-1])
        else:
            value = float(tile_um)
    except (TypeError, ValueError, ZeroDivisionError):
        value = math.nan
    if isinstance(tile_um, bool) or not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"tile_um={tile_um!r} is not a tile size: give microns (a positive number, "
            "e.g. 112) or a magnification (e.g. '20x')"
        )
    return float(value)


class WSI:
    """A whole-slide image tiled into a grid of ``tile_px`` tiles of ``tile_um`` microns.

    Parameters
    ----------
    path : str or PathLike
        Slide file. For DICOM, the ``.dcm`` file of one instance (OpenSlide finds the
        others in its folder) or the folder itself.
    tile_px : int
        Edge of the tiles returned, in pixels.
    tile_um : float or str
        Edge of a tile in microns, or a magnification such as ``"20x"``
        (see :func:`parse_tile_um`).
    stride_div : int
        The grid step is ``patch_size_level0 // stride_div``: 2 gives 50 % overlap.
    mpp : float, optional
        Microns per level-0 pixel; overrides the file's ``openslide.mpp-x``. ``None``
        or NaN (an empty sheet cell) uses the file's.
    name : str, optional
        Slide id used in messages; defaults to the file (or DICOM folder) name
        without suffix.
    otsu : bool
        Select candidate tiles by Otsu tissue detection on a thumbnail; ``False``
        makes every grid tile a candidate.
    tissue_fraction : float
        Least fraction of a tile's footprint that must be tissue for it to be a
        candidate.
    grayspace_fraction, grayspace_threshold : float
        Drop a tile when more than ``grayspace_fraction`` of its pixels have HSV
        saturation below ``grayspace_threshold`` (slideflow's defaults).
    whitespace_fraction, whitespace_threshold : float
        Drop a tile when more than ``whitespace_fraction`` of its pixels have a mean
        RGB above ``whitespace_threshold``; the default 1.0 disables it, as in slideflow.

    Attributes
    ----------
    name : str
    path : Path
        The file OpenSlide opened.
    mpp : float
        Microns per level-0 pixel.
    dimensions : (int, int)
        Level-0 (width, height).
    tile_px : int
    tile_um : float
        Tile edge in microns.
    patch_size_level0 : int
        Tile edge in level-0 pixels, ``round(tile_um / mpp)``.
    stride_level0 : int
        Grid step in level-0 pixels.
    grid_shape : (int, int)
        ``(n_x, n_y)``: full tiles that fit inside the slide.
    read_level : int
        Pyramid level tiles are read from.
    read_downsample : float
        Downsample of ``read_level``.
    qc : dict or None
        After :meth:`iter_batches` has run to the end: ``n_grid``, ``n_candidates``,
        ``n_kept``, ``n_filtered``.

    Raises
    ------
    SlideError
        If the file is missing or OpenSlide cannot open it.
    MPPError
        If there is no MPP (neither in the file nor given) or it is <= 0 or > 100.
    ConfigError
        If a tiling option is out of range.

    Examples
    --------
    >>> wsi = WSI("slide.svs", tile_px=224, tile_um="20x")  # doctest: +SKIP
    >>> wsi.grid_shape, len(wsi.candidates)  # doctest: +SKIP
    ((41, 33), 512)
    >>> for batch in wsi.iter_batches(64):  # doctest: +SKIP
    ...     model(batch.tiles)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tile_px: int,
        tile_um: float | str,
        *,
        stride_div: int = 1,
        mpp: float | None = None,
        name: str | None = None,
        otsu: bool = True,
        tissue_fraction: float = 0.5,
        grayspace_fraction: float = 0.6,
        grayspace_threshold: float = 0.05,
        whitespace_fraction: float = 1.0,
        whitespace_threshold: float = 230,
    ) -> None:
        # Options first, so a bad one fails before the slide is opened.
        self.tile_px = _positive_int("tile_px", tile_px)
        self.tile_um = parse_tile_um(tile_um, self.tile_px)
        self.stride_div = _positive_int("stride_div", stride_div)
        self.otsu = bool(otsu)
        self.tissue_fraction = _fraction("tissue_fraction", tissue_fraction)
        self.grayspace_fraction = _fraction("grayspace_fraction", grayspace_fraction)
        self.grayspace_threshold = _fraction("grayspace_threshold", grayspace_threshold)
        self.whitespace_fraction = _fraction("whitespace_fraction", whitespace_fraction)
        self.whitespace_threshold = _to_float(whitespace_threshold)
        if not 0 <= self.whitespace_threshold <= 255:
            raise ConfigError(f"whitespace_threshold={whitespace_threshold!r} must lie in [0, 255]")

        self.path, default_name = _resolve_path(path, name)
        self.name = name if name is not None else default_name
        self._slide = self._open()
        try:
            self.mpp = self._get_mpp(mpp)
            self._set_grid()
        except BaseException:
            self._slide.close()
            raise
        self.dimensions: tuple[int, int] = tuple(int(v) for v in self._slide.dimensions)
        background = self._slide.properties.get("openslide.background-color", "FFFFFF")
        self._background = _parse_hex_colour(background)
        self._tissue_mask: np.ndarray | None = None
        self.qc: dict[str, int] | None = None

    def _set_grid(self) -> None:
        """Level-0 patch, stride, grid and read level from tile_um, tile_px and mpp."""
        self.patch_size_level0 = int(round(self.tile_um / self.mpp))
        self.stride_level0 = self.patch_size_level0 // self.stride_div
        if self.stride_level0 < 1:
            raise ConfigError(
                f"slide {self.name!r}: tile_um={self.tile_um:g} at mpp={self.mpp:g} with "
                f"stride_div={self.stride_div} gives a grid step under one pixel; "
                "use a larger tile_um or a smaller stride_div"
            )
        self.grid_shape: tuple[int, int] = tuple(
            (size - self.patch_size_level0) // self.stride_level0 + 1
            if size >= self.patch_size_level0
            else 0
            for size in self._slide.dimensions
        )
        self.read_level = self._level_for(self.patch_size_level0 / self.tile_px)
        self.read_downsample = float(self._slide.level_downsamples[self.read_level])
        self._region_px = max(1, round(self.patch_size_level0 / self.read_downsample))

    # -- opening --------------------------------------------------------------

    def _open(self):
        """Open a new OpenSlide handle on the slide (one per thread)."""
        import openslide

        try:
            return openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideError as err:
            raise SlideError(
                f"slide {self.name!r}: OpenSlide cannot open {self.path} ({err}); "
                "check that the file is a complete whole-slide image in a format "
                "OpenSlide reads"
            ) from err

    def _get_mpp(self, mpp: float | None) -> float:
        hint = "set the sheet's `mpp` column for this slide (microns per level-0 pixel)"
        if mpp is not None and not _is_nan(mpp):
            source = f"mpp={mpp!r} (given)"
        else:
            mpp = self._slide.properties.get("openslide.mpp-x")
            if mpp is None:
                raise MPPError(f"slide {self.name!r} ({self.path}) has no MPP in the file; {hint}")
            source = f"openslide.mpp-x={mpp} (from the file)"
        value = _to_float(mpp)
        if not (0 < value <= MAX_MPP):
            raise MPPError(
                f"slide {self.name!r} ({self.path}): {source} is not a plausible "
                f"microns per pixel (must be in (0, {MAX_MPP:g}]); {hint}"
            )
        return value

    def _level_for(self, downsample: float) -> int:
        """Coarsest level whose downsample is at most ``downsample`` (within tolerance)."""
        ok = [
            level
            for level, ds in enumerate(self._slide.level_downsamples)
            if ds <= downsample * (1 + LEVEL_TOLERANCE)
        ]
        return max(ok, default=0)

    def close(self) -> None:
        """Close the OpenSlide handle; the object cannot read tiles afterwards."""
        self._slide.close()

    def __enter__(self) -> WSI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"WSI({self.name!r}, path={str(self.path)!r}, mpp={self.mpp:.4g}, "
            f"dimensions={self.dimensions}, tile_px={self.tile_px}, "
            f"tile_um={self.tile_um:g}, patch_size_level0={self.patch_size_level0}, "
            f"stride_level0={self.stride_level0}, grid_shape={self.grid_shape}, "
            f"read_level={self.read_level})"
        )

    # -- grid ------------------------------------------------------------------

    @property
    def tissue_mask(self) -> np.ndarray:
        """Candidate grid tiles, bool ``(n_x, n_y)``; computed on first use."""
        if self._tissue_mask is None:
            if not self.otsu:
                self._tissue_mask = np.ones(self.grid_shape, bool)
            elif 0 in self.grid_shape:
                self._tissue_mask = np.zeros(self.grid_shape, bool)
            else:
                self._tissue_mask = self._detect_tissue()
        return self._tissue_mask

    def _detect_tissue(self) -> np.ndarray:
        width, height = self.dimensions
        # Fine enough for a few mask pixels per grid step, coarse enough to stay small.
        longest = max(width, height)
        downsample = max(min(longest / 1024, self.stride_level0 / 4), longest / 4096, 1.0)
        thumb, scale = self._read_downscaled(downsample)
        fractions = tissue.grid_fractions(
            tissue.tissue_mask(thumb),
            scale,
            patch=self.patch_size_level0,
            stride=self.stride_level0,
            grid_shape=self.grid_shape,
        )
        return fractions >= self.tissue_fraction

    @property
    def candidates(self) -> np.ndarray:
        """Grid indices (i, j) of candidate tiles, int32 ``(M, 2)``, row by row."""
        # argwhere on the (n_y, n_x) transpose orders by j, then i.
        return np.ascontiguousarray(np.argwhere(self.tissue_mask.T)[:, ::-1], dtype=np.int32)

    def coords_of(self, ij: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) of the top-left corner of grid tiles.

        Parameters
        ----------
        ij : array_like, shape (M, 2) or (2,)
            Grid indices (i, j).

        Returns
        -------
        ndarray, same shape, dtype int64
            ``ij * stride_level0``.
        """
        return np.asarray(ij, dtype=np.int64) * self.stride_level0

    def tile_at(self, x: float, y: float) -> tuple[int, int]:
        """Grid index (i, j) of the tile containing level-0 point (x, y).

        With overlapping tiles (``stride_div > 1``) a point lies in several; this is
        the one that starts last, i.e. ``floor(x / stride)`` clipped to the grid.

        Raises
        ------
        SlideError
            If the point is outside the slide, or in the margin that no full tile
            covers.

        Examples
        --------
        >>> wsi.tile_at(1000, 250)  # doctest: +SKIP
        (4, 1)
        """
        width, height = self.dimensions
        if not (0 <= x < width and 0 <= y < height):
            raise SlideError(
                f"slide {self.name!r}: point (x, y) = ({x}, {y}) is outside the slide "
                f"(level-0 size {width} x {height})"
            )
        index = []
        for value, n in zip((x, y), self.grid_shape, strict=True):
            k = min(int(value // self.stride_level0), n - 1)
            if k < 0 or value >= k * self.stride_level0 + self.patch_size_level0:
                raise SlideError(
                    f"slide {self.name!r}: point (x, y) = ({x}, {y}) is outside the tile "
                    f"grid {self.grid_shape} (full tiles of {self.patch_size_level0} px "
                    "from the top-left corner)"
                )
            index.append(k)
        return index[0], index[1]

    # -- reading ---------------------------------------------------------------

    def read_tile(self, x: int, y: int) -> np.ndarray:
        """Read the tile whose top-left corner is level-0 (x, y).

        Returns
        -------
        ndarray, shape (tile_px, tile_px, 3), dtype uint8

        Raises
        ------
        TileReadError
            If OpenSlide fails to read the region (corrupt or truncated file).
        """
        return self._read(self._slide, int(x), int(y))

    def __getitem__(self, ij: tuple[int, int]) -> np.ndarray:
        """Read grid tile (i, j): column i, row j."""
        i, j = (int(v) for v in ij)
        n_x, n_y = self.grid_shape
        if not (0 <= i < n_x and 0 <= j < n_y):
            raise IndexError(
                f"slide {self.name!r}: tile (i, j) = ({i}, {j}) is outside the grid "
                f"of shape (n_x, n_y) = {self.grid_shape}"
            )
        return self.read_tile(i * self.stride_level0, j * self.stride_level0)

    def _read(self, slide, x: int, y: int) -> np.ndarray:
        from PIL import Image

        size = (self._region_px, self._region_px)
        region = self._read_region(slide, (x, y), self.read_level, size, f"(x, y) = ({x}, {y})")
        if size[0] != self.tile_px:
            region = region.resize((self.tile_px, self.tile_px), Image.Resampling.BILINEAR)
        return np.asarray(region)

    def _read_region(self, slide, location, level, size, what):
        """``slide.read_region`` as an RGB PIL image; transparency shows the background."""
        import openslide
        from PIL import Image

        try:
            region = slide.read_region(location, level, size)
        except openslide.OpenSlideError as err:
            raise TileReadError(
                f"slide {self.name!r}: cannot read level-0 {what} at level {level} "
                f"from {self.path} ({err}); the file is corrupt or truncated"
            ) from err
        # Pixels outside the scanned area are transparent (alpha 0, RGB 0). (The alpha
        # band alone: getextrema() of all four bands costs three times as much.)
        if region.getchannel("A").getextrema()[0] < 255:
            canvas = Image.new("RGBA", region.size, (*self._background, 255))
            region = Image.alpha_composite(canvas, region)
        return region.convert("RGB")

    def passes_filters(self, tile: np.ndarray) -> bool:
        """Whether a tile passes this slide's grayspace and whitespace filters.

        Parameters
        ----------
        tile : ndarray, shape (H, W, 3), dtype uint8

        Returns
        -------
        bool
        """
        return bool(self._filter(tile))

    def _filter(self, tiles: np.ndarray) -> np.ndarray:
        return tissue.passes_filters(
            tiles,
            grayspace_fraction_max=self.grayspace_fraction,
            grayspace_threshold=self.grayspace_threshold,
            whitespace_fraction_max=self.whitespace_fraction,
            whitespace_threshold=self.whitespace_threshold,
        )

    def iter_batches(
        self,
        batch_size: int,
        *,
        num_workers: int | None = None,
        prefetch: int = 1,
        processes: bool = False,
    ) -> Iterator[TileBatch]:
        """Read the kept tiles (candidates passing the filters) in batches.

        Candidates are cut into chunks of consecutive tiles; a pool of workers, each
        with its own OpenSlide handle, reads, decodes and filters whole chunks, and the
        kept tiles come out in candidate order. Every batch holds ``batch_size`` tiles
        except the last; a slide with no kept tiles yields nothing. When the iterator
        is exhausted, :attr:`qc` holds the tile counts.

        Parameters
        ----------
        batch_size : int
            Tiles per batch.
        num_workers : int, optional
            Reading workers; default ``min(4, os.cpu_count())``. 0 reads in the
            calling thread.
        prefetch : int
            Batches read ahead while the consumer works on the current one. 0 reads a
            batch only when it is asked for, with every worker on it: right when the
            consumer (a model on the CPU) needs the same cores as the readers.
        processes : bool
            Workers are processes instead of threads. Threads share one decoded-tile
            cache but contend for Python's GIL; processes scale with the cores (for a
            GPU that outruns the threads) at the cost of copying the tiles back.

        Yields
        ------
        TileBatch

        Raises
        ------
        TileReadError
            If a tile cannot be read.

        Examples
        --------
        >>> for batch in wsi.iter_batches(32):  # doctest: +SKIP
        ...     print(batch.tiles.shape, batch.coords[0])
        (32, 224, 224, 3) [2240  448]
        """
        batch_size = _positive_int("batch_size", batch_size)
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        for name, value in (("num_workers", num_workers), ("prefetch", prefetch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} must be an integer >= 0")
        return self._iter_batches(batch_size, num_workers, prefetch, bool(processes))

    def _iter_batches(
        self, batch_size: int, num_workers: int, prefetch: int, processes: bool
    ) -> Iterator[TileBatch]:
        self.qc = None
        grid = self.candidates
        coords = self.coords_of(grid)
        n = len(grid)
        # chunks small enough that one batch keeps every worker busy
        chunk = max(1, min(READ_CHUNK, -(-batch_size // max(1, num_workers))))
        # in flight: what the current batch still lacks, plus `prefetch` batches
        ahead = (prefetch + 1) * batch_size
        pending: deque = deque()  # (first row, chunk length, ticket)
        submitted = in_flight = n_kept = filled = 0
        out, out_rows = self._empty_batch(batch_size), np.empty(batch_size, np.int64)
        with _ChunkReader(self, num_workers, processes, chunk, ahead // chunk + 2) as reader:
            while True:
                while submitted < n and in_flight < ahead - filled and reader.has_room():
                    stop = min(n, submitted + chunk)
                    pending.append(
                        (submitted, stop - submitted, reader.submit(coords[submitted:stop]))
                    )
                    in_flight += stop - submitted
                    submitted = stop
                if not pending:
                    break
                start, size, ticket = pending.popleft()
                tiles, keep = reader.result(ticket)
                in_flight -= size
                rows = start + np.flatnonzero(keep)
                n_kept += len(rows)
                pos = 0
                while pos < len(rows):  # copy into the batch under way, yield when full
                    take = min(batch_size - filled, len(rows) - pos)
                    out[filled : filled + take] = tiles[pos : pos + take]
                    out_rows[filled : filled + take] = rows[pos : pos + take]
                    filled += take
                    pos += take
                    if filled == batch_size:
                        yield TileBatch(out, grid[out_rows], coords[out_rows])
                        out, filled = self._empty_batch(batch_size), 0
            if filled:
                rows = out_rows[:filled]
                yield TileBatch(out[:filled], grid[rows], coords[rows])
        self.qc = {
            "n_grid": self.grid_shape[0] * self.grid_shape[1],
            "n_candidates": n,
            "n_kept": n_kept,
            "n_filtered": n - n_kept,
        }

    def _empty_batch(self, size: int) -> np.ndarray:
        return np.empty((size, self.tile_px, self.tile_px, 3), np.uint8)

    def _read_chunk(self, slide, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read and filter consecutive tiles: (kept tiles, keep mask over ``coords``)."""
        tiles = np.stack([self._read(slide, int(x), int(y)) for x, y in coords])
        keep = self._filter(tiles)
        return (tiles if keep.all() else tiles[keep]), keep

    def __getstate__(self) -> dict:
        """Pickle without the OpenSlide handle; unpickling opens a new one."""
        state = dict(self.__dict__)
        del state["_slide"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._slide = self._open()

    def _read_downscaled(self, downsample: float) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole slide at about ``downsample``, read in strips of bounded memory.

        Returns the RGB image and its scale (level-0 pixels per image pixel, x and y).
        """
        from PIL import Image

        width, height = self.dimensions
        out_w, out_h = max(1, round(width / downsample)), max(1, round(height / downsample))
        level = self._level_for(downsample)
        level_w, level_h = self._slide.level_dimensions[level]
        level_ds = self._slide.level_downsamples[level]
        rows_per_px = level_h / out_h
        step = max(1, int(THUMBNAIL_STRIP_BYTES / (4 * level_w * rows_per_px)))
        strips = []
        for r0 in range(0, out_h, step):
            r1 = min(out_h, r0 + step)
            y0, y1 = round(r0 * rows_per_px), round(r1 * rows_per_px)
            region = self._read_region(
                self._slide,
                (0, round(y0 * level_ds)),
                level,
                (level_w, max(1, y1 - y0)),
                f"rows {round(y0 * level_ds)}.. (thumbnail)",
            )
            strips.append(np.asarray(region.resize((out_w, r1 - r0), Image.Resampling.BOX)))
        return np.concatenate(strips), (width / out_w, height / out_h)

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """The whole slide downscaled so its longer side is ``max_px`` (or less).

        Parameters
        ----------
        max_px : int
            Longer side of the result; slides smaller than that are not enlarged.

        Returns
        -------
        ndarray, shape (h, w, 3), dtype uint8
        """
        downsample = max(1.0, max(self.dimensions) / _positive_int("max_px", max_px))
        return self._read_downscaled(downsample)[0]


class _ChunkReader:
    """Reads chunks of tiles (``WSI._read_chunk``) in worker threads or processes.

    ``submit(coords)`` starts a chunk and returns a ticket; ``result(ticket)`` waits for
    it and returns ``(kept tiles, keep mask)``, tickets in submission order. Threads
    each hold an OpenSlide handle and share one decoded-tile cache. Processes (forked:
    fast to start, nothing re-imported) each open their own handle and write the kept
    tiles into one of ``slots`` chunk-sized slots of memory shared with this process,
    so only the keep mask travels through a pipe; the tiles returned are a view of the
    slot, valid until the next ``submit`` or ``result``.
    """

    def __init__(self, wsi: WSI, num_workers: int, processes: bool, chunk: int, slots: int):
        import multiprocessing

        self.wsi = wsi
        self.num_workers = num_workers
        self.processes = processes and num_workers > 0
        if self.processes and "fork" not in multiprocessing.get_all_start_methods():
            self.processes = False  # spawned workers would re-import everything: use threads
        self.chunk, self.n_slots = chunk, slots
        self._pool: Any = None
        self._handles: list[Any] = []
        self._free: deque[int] = deque()
        self._used: int | None = None

    def __enter__(self) -> _ChunkReader:
        if self.num_workers <= 0:
            return self
        if self.processes:
            import mmap
            import multiprocessing
            import pickle

            px = self.wsi.tile_px
            self._buffer = mmap.mmap(-1, self.n_slots * self.chunk * px * px * 3)  # shared
            self._slots = np.frombuffer(self._buffer, np.uint8).reshape(
                self.n_slots, self.chunk, px, px, 3
            )
            self._free.extend(range(self.n_slots))
            self._pool = ProcessPoolExecutor(
                self.num_workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_process_reader,
                initargs=(pickle.dumps(self.wsi), self._slots),
            )
            return self

        import openslide

        local = threading.local()
        lock = threading.Lock()
        # One decoded-tile cache for all handles: neighbouring tiles read by different
        # threads share the slide's JPEG tiles, which would otherwise be decoded twice.
        cache = openslide.OpenSlideCache(TILE_CACHE_BYTES)

        def read(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            slide = getattr(local, "slide", None)
            if slide is None:
                slide = local.slide = self.wsi._open()
                slide.set_cache(cache)
                with lock:
                    self._handles.append(slide)
            return self.wsi._read_chunk(slide, coords)

        self._read = read
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix=f"wsi-{self.wsi.name}")
        return self

    def has_room(self) -> bool:
        """Whether another chunk can be submitted (processes: a slot is free)."""
        self._release()
        return not self.processes or bool(self._free)

    def submit(self, coords: np.ndarray) -> Any:
        self._release()
        if self._pool is None:
            return coords  # read in result(), in the calling thread
        if self.processes:
            slot = self._free.popleft()
            return slot, self._pool.submit(_read_chunk_in_process, slot, coords)
        return self._pool.submit(self._read, coords)

    def result(self, ticket: Any) -> tuple[np.ndarray, np.ndarray]:
        self._release()
        if self._pool is None:
            return self.wsi._read_chunk(self.wsi._slide, ticket)
        if self.processes:
            slot, future = ticket
            keep = future.result()
            self._used = slot
            return self._slots[slot, : int(keep.sum())], keep
        return ticket.result()

    def _release(self) -> None:
        if self._used is not None:
            self._free.append(self._used)
            self._used = None

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for slide in self._handles:
            slide.close()
        # the shared slots go with their last view (an mmap cannot close under one)


# The slide and shared slots of a reading process (see _ChunkReader), set when it starts.
_PROCESS_WSI: WSI | None = None
_PROCESS_SLOTS: np.ndarray | None = None


def _init_process_reader(pickled_wsi: bytes, slots: np.ndarray) -> None:
    import pickle

    global _PROCESS_WSI, _PROCESS_SLOTS
    _PROCESS_WSI = pickle.loads(pickled_wsi)  # opens this process's own handle
    _PROCESS_SLOTS = slots


def _read_chunk_in_process(slot: int, coords: np.ndarray) -> np.ndarray:
    tiles, keep = _PROCESS_WSI._read_chunk(_PROCESS_WSI._slide, coords)
    _PROCESS_SLOTS[slot, : len(tiles)] = tiles
    return keep


def _resolve_path(path: str | os.PathLike, name: str | None) -> tuple[Path, str]:
    """The file to open (a DICOM folder gives its first .dcm) and the default name."""
    path = Path(path)
    label = name if name is not None else path.stem
    if not path.exists():
        raise SlideError(f"slide {label!r}: file not found: {path}; check the sheet's `path`")
    if path.is_dir():
        dicoms = sorted(path.glob("*.dcm"))
        if not dicoms:
            raise SlideError(
                f"slide {label!r}: {path} is a folder without .dcm files; give the "
                "slide file itself"
            )
        return dicoms[0], path.name
    return path, path.stem


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
    return int(value)


def _to_float(value: object) -> float:
    """``float(value)``, or NaN where that fails."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _is_nan(value: object) -> bool:
    """An empty sheet cell: a float NaN (pandas gives one for a missing ``mpp``)."""
    return not isinstance(value, str) and math.isnan(_to_float(value))


def _fraction(name: str, value: object) -> float:
    number = _to_float(value)
    if not 0 <= number <= 1:
        raise ConfigError(f"{name}={value!r} must be a number in [0, 1]")
    return number


def _parse_hex_colour(text: str) -> tuple[int, int, int]:
    try:
        return tuple(bytes.fromhex(text.strip().lstrip("#"))[:3])  # type: ignore[return-value]
    except ValueError:
        return (255, 255, 255)
