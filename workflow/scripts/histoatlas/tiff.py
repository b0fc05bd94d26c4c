"""Write pyramidal TIFF slides that OpenSlide reads as scanners write them.

Used by the demo cohort, the tests and the benchmarks. Two traps (measured): OpenSlide
ignores levels stored as SubIFDs, so every level is its own page (``subfiletype=1``
after the first); and MPP only reaches ``openslide.mpp-x`` with the resolution unit
set to centimetres.
"""

from __future__ import annotations

import os

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
            extra = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * 2**i)
                extra = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=1 if i else 0,
                metadata=None,
                **extra,
            )
            level = downsample2(level)
