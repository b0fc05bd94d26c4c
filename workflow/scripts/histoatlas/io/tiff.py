"""Write pyramidal TIFF slides that OpenSlide reads as scanners write them.

Used by the demo cohort, the tests and the benchmarks. Two traps (measured): OpenSlide
ignores levels stored as SubIFDs, so every level is its own page (``subfiletype=1``
after the first); and MPP only reaches ``openslide.mpp-x`` with the resolution unit
set to centimetres.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np


def downsample2(image: np.ndarray) -> np.ndarray:
    """Halve an ``(H, W, 3)`` uint8 image by averaging 2 x 2 blocks."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    blocks = image[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).astype(np.uint16)
    return (blocks.sum(axis=(1, 3)) // 4).astype(np.uint8)


def write_pyramid_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float | None,
    *,
    n_levels: int = 3,
    tile: int = 256,
    quality: int = 90,
) -> None:
    """Write ``image`` as a JPEG-tiled pyramidal TIFF with MPP in its resolution tags.

    Parameters
    ----------
    path : str or PathLike
        Output ``.tiff`` path.
    image : ndarray, shape (H, W, 3), dtype uint8
        Level-0 pixels.
    mpp : float or None
        Microns per pixel at level 0; ``None`` writes no resolution tags (a slide
        without MPP, as some scanners export).
    n_levels : int
        Number of pyramid levels, each half the size of the previous one. Levels
        smaller than one tile are not written.
    tile : int
        Tile edge in pixels (a multiple of 16).
    quality : int
        JPEG quality.

    Examples
    --------
    >>> img = np.full((1024, 1024, 3), 255, np.uint8)
    >>> write_pyramid_tiff("slide.tiff", img, mpp=0.5)  # doctest: +SKIP
    """
    import tifffile

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    level = image
    with tifffile.TiffWriter(path, bigtiff=image.nbytes > 2**31) as tif:
        for i in range(n_levels):
            if i and min(level.shape[:2]) < tile:
                break
            tif.write(level, **_page_options(i, mpp, tile, quality))
            level = downsample2(level)


def write_pyramid_tiff_tiles(
    path: str | os.PathLike,
    size: tuple[int, int],
    region: Callable[[int, int, int, int, int], np.ndarray],
    mpp: float | None,
    *,
    n_levels: int = 3,
    tile: int = 256,
    quality: int = 90,
    maxworkers: int | None = None,
) -> None:
    """Write a pyramidal TIFF tile by tile, in memory bounded by a few tiles.

    The sibling of :func:`write_pyramid_tiff` for slides too large to hold in memory
    (a 40,000 px square RGB slide is 4.8 GB): ``region`` hands out the pixels of each
    tile of each level when tifffile asks for it, and the JPEG encoding runs in
    tifffile's threads.

    Parameters
    ----------
    path : str or PathLike
        Output ``.tiff`` path (BigTIFF when level 0 exceeds 2 GiB of pixels).
    size : (int, int)
        Level-0 ``(width, height)``.
    region : callable
        ``region(level, x, y, w, h)`` returns the ``(h, w, 3)`` uint8 pixels of
        ``level`` (``2**level`` times smaller than level 0) whose top-left corner is
        ``(x, y)`` in that level's pixels. The caller keeps the levels consistent
        (e.g. with :func:`downsample2`).
    mpp : float or None
        Microns per pixel at level 0; ``None`` writes no resolution tags.
    n_levels : int
        Pyramid levels; levels smaller than one tile are not written.
    tile : int
        Tile edge in pixels (a multiple of 16).
    quality : int
        JPEG quality.
    maxworkers : int, optional
        Threads encoding JPEG tiles (tifffile's default: the CPU count).

    Raises
    ------
    ValueError
        If ``region`` returns anything but ``(h, w, 3)`` uint8.

    Examples
    --------
    >>> grey = lambda level, x, y, w, h: np.full((h, w, 3), 200, np.uint8)
    >>> write_pyramid_tiff_tiles("big.tiff", (40_000, 40_000), grey, 0.5)  # doctest: +SKIP
    """
    import tifffile

    width, height = (int(v) for v in size)
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        for level in range(n_levels):
            w, h = max(1, width >> level), max(1, height >> level)
            if level and min(w, h) < tile:
                break
            tif.write(
                _level_tiles(region, level, w, h, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                maxworkers=maxworkers,
                **_page_options(level, mpp, tile, quality),
            )


def _page_options(level: int, mpp: float | None, tile: int, quality: int) -> dict:
    """tifffile's options for one pyramid level: JPEG tiles, each level its own page
    (OpenSlide ignores SubIFDs), MPP in the resolution tags with the unit right."""
    options = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "subfiletype": 1 if level else 0,
        "metadata": None,
    }
    if mpp is not None:
        px_per_cm = 1e4 / (mpp * 2**level)
        options.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    return options


def _level_tiles(region, level: int, width: int, height: int, tile: int) -> Iterator[np.ndarray]:
    """The tiles of one level, row by row, edge tiles padded to full size."""
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            w, h = min(tile, width - x), min(tile, height - y)
            pixels = np.asarray(region(level, x, y, w, h))
            if pixels.shape != (h, w, 3) or pixels.dtype != np.uint8:
                raise ValueError(
                    f"region(level={level}, x={x}, y={y}, w={w}, h={h}) returned "
                    f"{pixels.shape} {pixels.dtype}; expected ({h}, {w}, 3) uint8"
                )
            if (h, w) != (tile, tile):
                padded = np.zeros((tile, tile, 3), np.uint8)
                padded[:h, :w] = pixels
                pixels = padded
            yield pixels
