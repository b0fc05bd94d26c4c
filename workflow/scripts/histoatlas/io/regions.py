"""Reading regions of a slide: the reader interface and its OpenSlide implementation.

A *region reader* holds one open file (one per reading thread or process) and returns
``read_region(location, level, size)`` as an RGB ``(h, w, 3)`` uint8 array, level-0
location, pixels outside the scanned area in the slide's background colour. :class:`WSI`
decides where to read and resizes; readers only decode. :class:`OpenSlideRegions` reads any
format OpenSlide knows; :mod:`histoatlas.io.readers` holds the decode-once reader of
JPEG-tiled TIFFs behind the same interface, and the choice between them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from histoatlas.errors import SlideError, TileReadError

# Memory cap of one read while building a thumbnail (bytes of RGBA at the read level).
THUMBNAIL_STRIP_BYTES = 64 * 2**20
# OpenSlide's decoded-tile cache shared by the reading threads of one iter_batches call.
TILE_CACHE_BYTES = 128 * 2**20


class RegionReader(Protocol):
    """What :class:`~histoatlas.io.wsi.WSI` reads tiles with."""

    name: str
    kind: str  # "openslide", "tiled-jpeg": recorded with the features
    handle: object  # an openslide.OpenSlide of the slide: levels, dimensions, properties
    background: tuple[int, int, int]

    def share_cache(self, shared: dict) -> None:
        """Share decoded tiles with the other readers of one pool (``shared`` starts empty)."""

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], what: str = ""
    ) -> np.ndarray:
        """RGB ``(size[1], size[0], 3)`` uint8 at ``level`` from level-0 ``location``."""

    def close(self) -> None:
        """Release the file."""


class OpenSlideRegions:
    """Regions of one slide through an OpenSlide handle of its own.

    Parameters
    ----------
    path : Path
        The file OpenSlide opens.
    name : str
        Slide id, for messages.

    Attributes
    ----------
    handle : openslide.OpenSlide
        The open slide (its levels, dimensions and properties).
    background : (int, int, int)
        RGB shown where the slide has no pixels (``openslide.background-color``).

    Raises
    ------
    SlideError
        If OpenSlide cannot open the file.
    """

    kind = "openslide"

    def __init__(self, path: Path, *, name: str) -> None:
        import openslide

        self.path, self.name = Path(path), name
        try:
            self.handle = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as err:
            raise SlideError(
                f"slide {name!r}: OpenSlide cannot open {path} ({err}); check that the file "
                "is a complete whole-slide image in a format OpenSlide reads"
            ) from err
        colour = self.handle.properties.get("openslide.background-color", "FFFFFF")
        self.background = _parse_hex_colour(colour)

    def share_cache(self, shared: dict) -> None:
        """Use the ``openslide.OpenSlideCache`` in ``shared`` (made by the first reader)."""
        import openslide

        if self.kind not in shared:
            shared[self.kind] = openslide.OpenSlideCache(TILE_CACHE_BYTES)
        self.handle.set_cache(shared[self.kind])

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], what: str = ""
    ) -> np.ndarray:
        """``OpenSlide.read_region`` as RGB; transparency shows the background colour.

        Raises
        ------
        TileReadError
            If OpenSlide fails to decode the region (a corrupt or truncated file).
        """
        import openslide
        from PIL import Image

        try:
            region = self.handle.read_region(location, level, size)
        except openslide.OpenSlideError as err:
            raise TileReadError(
                f"slide {self.name!r}: cannot read level-0 {what or location} at level {level} "
                f"from {self.path} ({err}); the file is corrupt or truncated"
            ) from err
        # Pixels outside the scanned area are transparent (alpha 0, RGB 0). (The alpha
        # band alone: getextrema() of all four bands costs three times as much.)
        if region.getchannel("A").getextrema()[0] < 255:
            canvas = Image.new("RGBA", region.size, (*self.background, 255))
            region = Image.alpha_composite(canvas, region)
        return np.asarray(region.convert("RGB"))

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self.handle.close()


def read_downscaled(reader: RegionReader, level: int, out_size: tuple[int, int]) -> np.ndarray:
    """The whole slide at ``out_size`` (w, h) from ``level``, read in strips of bounded memory.

    Parameters
    ----------
    reader : RegionReader
    level : int
        Pyramid level to read (its resolution at least ``out_size``'s).
    out_size : (int, int)
        Width and height of the result.

    Returns
    -------
    ndarray, shape (h, w, 3), dtype uint8
        Box-filtered from the level's pixels.
    """
    from PIL import Image

    out_w, out_h = out_size
    level_w, level_h = reader.handle.level_dimensions[level]
    level_ds = reader.handle.level_downsamples[level]
    rows_per_px = level_h / out_h
    step = max(1, int(THUMBNAIL_STRIP_BYTES / (4 * level_w * rows_per_px)))
    strips = []
    for r0 in range(0, out_h, step):
        r1 = min(out_h, r0 + step)
        y0, y1 = round(r0 * rows_per_px), round(r1 * rows_per_px)
        y_level0 = round(y0 * level_ds)
        region = reader.read_region(
            (0, y_level0), level, (level_w, max(1, y1 - y0)), f"rows {y_level0}.. (thumbnail)"
        )
        strip = Image.fromarray(region).resize((out_w, r1 - r0), Image.Resampling.BOX)
        strips.append(np.asarray(strip))
    return np.concatenate(strips)


def _parse_hex_colour(text: str) -> tuple[int, int, int]:
    try:
        return tuple(bytes.fromhex(text.strip().lstrip("#"))[:3])  # type: ignore[return-value]
    except ValueError:
        return (255, 255, 255)


def resolve_slide_path(path: str | os.PathLike, name: str | None) -> tuple[Path, str]:
    """The file to open (a DICOM folder gives its first .dcm) and the slide's default name.

    Raises
    ------
    SlideError
        If the path does not exist, or is a folder without ``.dcm`` files.
    """
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
