"""Read whole-slide images as a grid of tiles of a fixed physical size.

:class:`WSI` opens any slide OpenSlide reads (SVS, NDPI, MRXS, SCN, BIF, generic or
Philips TIFF, DICOM), lays a grid of ``tile_um``-micron tiles over level 0, picks the
tiles on tissue (Otsu on a thumbnail) and reads them from the coarsest pyramid level
that still has the resolution ``tile_px`` needs, resized to ``tile_px``. Only the
tiles asked for are read: a whole level is never loaded. JPEG-tiled TIFF pyramids are
read by the decode-once reader, everything else by OpenSlide, with the same pixels
(:mod:`histoatlas.io.readers`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from histoatlas.errors import ConfigError
from histoatlas.io import tissue
from histoatlas.io.batches import TileBatch, iter_tile_batches
from histoatlas.io.grid import TileGrid
from histoatlas.io.readers.choice import (
    ReaderChoice,
    choose_reader,
    open_region_reader,
    reader_option,
)
from histoatlas.io.regions import OpenSlideRegions, RegionReader, resolve_slide_path
from histoatlas.io.tiling import fraction, parse_tile_um, positive_int, slide_mpp, to_float

__all__ = ["WSI", "TileBatch", "parse_tile_um"]


class WSI(TileGrid):
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
    reader : {"auto", "openslide", "fast"}
        Who decodes the tiles: ``"auto"``, the decode-once reader where it maps
        ``read_level``, else OpenSlide; ``"fast"`` fails where it does not (see
        :mod:`histoatlas.io.readers.choice`). The pixels are the same.

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
    reader_choice : ReaderChoice
        The reader of ``read_level`` (``kind``) and why (``reason``).
    qc : dict or None
        After :meth:`iter_batches` has run to the end: ``n_grid``, ``n_candidates``,
        ``n_kept``, ``n_filtered``.
    read_stats : dict or None
        After :meth:`iter_batches` has run to the end: ``read_cpu_s`` (CPU seconds of the
        reading threads: reading, resizing, filters), ``n_fallback``.

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
        reader: str = "auto",
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
        self.reader_option = reader_option(reader)

        self.path, default_name = resolve_slide_path(path, name)
        self.name = name if name is not None else default_name
        self._reader: RegionReader = OpenSlideRegions(self.path, name=self.name)
        try:
            self.mpp = self._get_mpp(mpp)
            self._set_grid()
            self.reader_choice: ReaderChoice = choose_reader(
                self.path, self._reader, self.read_level, self.reader_option, name=self.name
            )
            self._reader = self.open_reader(opened=self._reader)
        except BaseException:
            self._reader.close()
            raise
        self.dimensions: tuple[int, int] = tuple(int(v) for v in self._slide.dimensions)
        self._tissue_mask: np.ndarray | None = None
        self.qc: dict[str, int] | None = None
        self.read_stats: dict | None = None

    @property
    def _slide(self):
        """The OpenSlide handle of this object's own reader (levels, properties)."""
        return self._reader.handle

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
            reader=tiles.reader,
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

    def open_reader(self, opened: OpenSlideRegions | None = None) -> RegionReader:
        """A new region reader of the chosen kind (one per reading thread or process)."""
        return open_region_reader(self.path, self.reader_choice, name=self.name, opened=opened)

    def _get_mpp(self, mpp: float | None) -> float:
        file_mpp = self._slide.properties.get("openslide.mpp-x")
        return slide_mpp(mpp, file_mpp, name=self.name, path=self.path)

    def close(self) -> None:
        """Close the slide; the object cannot read tiles afterwards."""
        self._reader.close()

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
            f"read_level={self.read_level}, reader={self.reader_choice.kind!r})"
        )

    # -- reading ---------------------------------------------------------------

    def read_tile(self, x: int, y: int) -> np.ndarray:
        """Read the tile whose top-left corner is level-0 (x, y).

        Returns
        -------
        ndarray, shape (tile_px, tile_px, 3), dtype uint8

        Raises
        ------
        TileReadError
            If the region cannot be decoded (corrupt or truncated file).
        """
        return self._read(self._reader, int(x), int(y))

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

    def _read(self, reader: RegionReader, x: int, y: int) -> np.ndarray:
        from PIL import Image

        size = (self._region_px, self._region_px)
        region = reader.read_region((x, y), self.read_level, size, f"(x, y) = ({x}, {y})")
        if size[0] != self.tile_px:
            resized = Image.fromarray(region).resize(
                (self.tile_px, self.tile_px), Image.Resampling.BILINEAR
            )
            region = np.asarray(resized)
        return region

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
        with its own reader (:meth:`open_reader`), reads, decodes and filters whole chunks,
        and the kept tiles come out in candidate order. Every batch holds ``batch_size``
        tiles except the last; a slide with no kept tiles yields nothing. When the iterator
        is exhausted, :attr:`qc` holds the tile counts and :attr:`read_stats` the cost.

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
        self.qc = self.read_stats = None
        counts: dict = {}
        yield from iter_tile_batches(self, batch_size, num_workers, prefetch, processes, counts)
        self.read_stats = {k: counts.pop(k) for k in ("read_cpu_s", "n_fallback")}
        self.qc = counts

    def read_chunk(self, reader, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read and filter tiles with a reader of :meth:`open_reader` (None: this object's).

        Parameters
        ----------
        reader : RegionReader or None
            One reading thread's or process's own reader.
        coords : ndarray, shape (M, 2)
            Level-0 (x, y) of the tiles.

        Returns
        -------
        tiles : ndarray, shape (K, tile_px, tile_px, 3), dtype uint8
            The tiles that pass the filters, in order.
        keep : ndarray, shape (M,), dtype bool
            Which of ``coords`` passed.
        """
        reader = self._reader if reader is None else reader
        tiles = np.empty((len(coords), self.tile_px, self.tile_px, 3), np.uint8)
        for k, (x, y) in enumerate(coords):
            tiles[k] = self._read(reader, int(x), int(y))
        keep = self._filter(tiles)
        return (tiles if keep.all() else tiles[keep]), keep

    def __getstate__(self) -> dict:
        """Pickle without the open file; unpickling opens a new reader."""
        state = dict(self.__dict__)
        del state["_reader"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reader = self.open_reader()
