"""Read whole-slide images as a grid of tiles of a fixed physical size.

:class:`WSI` opens any slide OpenSlide reads (SVS, NDPI, MRXS, SCN, BIF, generic or
Philips TIFF, DICOM), lays a grid of ``tile_um``-micron tiles over level 0, picks the
tiles on tissue (Otsu on a thumbnail) and reads them from the coarsest pyramid level
that still has the resolution ``tile_px`` needs, resized to ``tile_px``. Only the
tiles asked for are read: a whole level is never loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from histoatlas.errors import ConfigError, MPPError, SlideError, TileReadError
from histoatlas.io import tissue
from histoatlas.io.batches import TileBatch, iter_tile_batches
from histoatlas.io.tiling import (
    fraction,
    is_nan,
    parse_tile_um,
    positive_int,
    to_float,
)

__all__ = ["WSI", "TileBatch", "parse_tile_um"]

# MPP outside (0, MAX_MPP] is a wrong tag (e.g. a 72 dpi screen resolution), not a scan.
MAX_MPP = 100.0
# A level whose downsample exceeds the one needed by less than this (relative) still
# counts as adequate: pyramids store 2.0003 or 4.002 for nominal 2 and 4.
LEVEL_TOLERANCE = 0.01
# Memory cap of one read while building a thumbnail (bytes of RGBA at the read level).
THUMBNAIL_STRIP_BYTES = 64 * 2**20


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
        self.tile_px = positive_int("tile_px", tile_px)
        self.tile_um = parse_tile_um(tile_um, self.tile_px)
        self.stride_div = positive_int("stride_div", stride_div)
        self.otsu = bool(otsu)
        self.tissue_fraction = fraction("tissue_fraction", tissue_fraction)
        self.grayspace_fraction = fraction("grayspace_fraction", grayspace_fraction)
        self.grayspace_threshold = fraction("grayspace_threshold", grayspace_threshold)
        self.whitespace_fraction = fraction("whitespace_fraction", whitespace_fraction)
        self.whitespace_threshold = to_float(whitespace_threshold)
        if not 0 <= self.whitespace_threshold <= 255:
            raise ConfigError(f"whitespace_threshold={whitespace_threshold!r} must lie in [0, 255]")

        self.path, default_name = _resolve_path(path, name)
        self.name = name if name is not None else default_name
        self._slide = self.open_handle()
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

    @classmethod
    def from_options(
        cls, path: str | os.PathLike, tiles, *, mpp: float | None = None, name: str | None = None
    ) -> WSI:
        """A WSI tiled as a :class:`~histoatlas.io.tiling.TileOptions` says."""
        return cls(
            path,
            tiles.px,
            tiles.um,
            stride_div=tiles.stride_div,
            mpp=mpp,
            name=name,
            **tiles.tissue(),
        )

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

    def open_handle(self):
        """A new OpenSlide handle on the slide (one per reading thread or process)."""
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
        if mpp is not None and not is_nan(mpp):
            source = f"mpp={mpp!r} (given)"
        else:
            mpp = self._slide.properties.get("openslide.mpp-x")
            if mpp is None:
                raise MPPError(f"slide {self.name!r} ({self.path}) has no MPP in the file; {hint}")
            source = f"openslide.mpp-x={mpp} (from the file)"
        value = to_float(mpp)
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
        batch_size = positive_int("batch_size", batch_size)
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        for name, value in (("num_workers", num_workers), ("prefetch", prefetch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} must be an integer >= 0")
        return self._batches(batch_size, num_workers, prefetch, bool(processes))

    def _batches(
        self, batch_size: int, num_workers: int, prefetch: int, processes: bool
    ) -> Iterator[TileBatch]:
        self.qc = None
        counts: dict[str, int] = {}
        yield from iter_tile_batches(self, batch_size, num_workers, prefetch, processes, counts)
        self.qc = counts

    def read_chunk(self, handle, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read and filter tiles with a handle of :meth:`open_handle` (None: this object's).

        Parameters
        ----------
        handle : openslide.OpenSlide or None
            One reading thread's or process's own handle.
        coords : ndarray, shape (M, 2)
            Level-0 (x, y) of the tiles.

        Returns
        -------
        tiles : ndarray, shape (K, tile_px, tile_px, 3), dtype uint8
            The tiles that pass the filters, in order.
        keep : ndarray, shape (M,), dtype bool
            Which of ``coords`` passed.
        """
        slide = self._slide if handle is None else handle
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
        self._slide = self.open_handle()

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
        downsample = max(1.0, max(self.dimensions) / positive_int("max_px", max_px))
        return self._read_downscaled(downsample)[0]


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


def _parse_hex_colour(text: str) -> tuple[int, int, int]:
    try:
        return tuple(bytes.fromhex(text.strip().lstrip("#"))[:3])  # type: ignore[return-value]
    except ValueError:
        return (255, 255, 255)
