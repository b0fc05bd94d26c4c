"""Which TIFF page holds each OpenSlide level, and whether its tiles are plain JPEG.

OpenSlide takes the tiled pages of an Aperio or Philips TIFF as levels in file order, and
those of a generic TIFF that are the first page or marked reduced-resolution, widest first;
Aperio's thumbnail, label and macro are stripped pages, not levels. :func:`map_levels`
repeats that choice with tifffile and checks it: same size as OpenSlide's level (Philips:
at least as large, OpenSlide clips the padding), same tile size, and the tiles are what
OpenSlide decodes directly with libjpeg (JPEG, RGB or YCbCr, 8 bit, 3 samples, contiguous).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoatlas.io.readers.tile_compose import LevelGeometry

# TIFF tag values (TIFF 6.0)
JPEG = 7
CONTIG = 1
PHOTOMETRIC_COLORSPACE = {2: "RGB", 6: "YCbCr"}
# OpenSlide vendors whose pyramid levels are plain tiled TIFF pages
VENDORS = ("aperio", "generic-tiff", "philips")


@dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class TiffLevel:
    """A level the fast path reads: its grid, tile table and JPEG settings.

    Attributes
    ----------
    index : int
        OpenSlide level.
    geom : LevelGeometry
    offsets, counts : ndarray, shape (tiles_down * tiles_across,), dtype int64
        Byte offset and count of each tile in the file, row by row.
    tables : bytes or None
        The page's JPEGTables.
    colorspace : {"RGB", "YCbCr"}
        From the photometric tag; forced on the decoder, as OpenSlide does.
    page : int
        The TIFF page (IFD) the level is.
    """

    index: int
    geom: LevelGeometry
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes | None
    colorspace: str
    page: int = -1


@dataclass(frozen=True, eq=False)
class LevelMap:
    """Each OpenSlide level of a slide: its :class:`TiffLevel`, or why the fast path skips it.

    Attributes
    ----------
    levels : tuple of TiffLevel or None
        One entry per OpenSlide level.
    reasons : dict of int to str
        For each None entry, why (names the level, page and culprit).
    """

    levels: tuple[TiffLevel | None, ...]
    reasons: dict[int, str]

    @classmethod
    def of(cls, path: Path, slide: Any) -> LevelMap:
        """The map of a slide file and its OpenSlide handle (see :func:`map_levels`)."""
        levels, reasons = map_levels(Path(path), slide)
        return cls(tuple(levels), reasons)

    def get(self, level: int) -> TiffLevel | None:
        """The level's tile table, or None where the fast path does not read it."""
        return self.levels[level] if 0 <= level < len(self.levels) else None

    def reason(self, level: int) -> str:
        """Why ``level`` is not read by the fast path; ``""`` when it is."""
        if self.get(level) is not None:
            return ""
        return self.reasons.get(level, f"level {level} does not exist")


def map_levels(path: Path, slide: Any) -> tuple[list[TiffLevel | None], dict[int, str]]:
    """Each OpenSlide level's TIFF page, or why the fast path does not read that level.

    Parameters
    ----------
    path : Path
        The slide file.
    slide : openslide.OpenSlide
        The slide opened with OpenSlide (its vendor, levels and tile-size properties).

    Returns
    -------
    levels : list of TiffLevel or None
        One entry per OpenSlide level; None where the fast path does not read it.
    reasons : dict of int to str
        For each None entry, why (names the level, page and culprit).
    """
    import tifffile

    n = int(slide.level_count)
    vendor = slide.properties.get("openslide.vendor")
    if vendor not in VENDORS:
        why = f"format {vendor!r}: the fast reader covers {', '.join(VENDORS)} TIFF"
        return [None] * n, dict.fromkeys(range(n), why)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            candidates = _level_pages(pages, vendor)
            if len(candidates) != n:
                why = f"OpenSlide has {n} levels, the TIFF {len(candidates)} level pages"
                return [None] * n, dict.fromkeys(range(n), why)
            levels, reasons = [], {}
            for level, index in enumerate(candidates):
                entry = _level_entry(pages[index], index, level, slide, vendor)
                if isinstance(entry, str):
                    levels.append(None)
                    reasons[level] = entry
                else:
                    levels.append(entry)
            return levels, reasons
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, AttributeError) as err:
        why = f"tifffile cannot map the levels ({type(err).__name__}: {err})"
        return [None] * n, dict.fromkeys(range(n), why)


def _level_pages(pages: list, vendor: str) -> list[int]:
    """Indices of the pages OpenSlide takes as levels, in level order."""
    if vendor == "generic-tiff":
        found = [
            i for i, p in enumerate(pages) if p.is_tiled and (i == 0 or int(p.subfiletype) & 1)
        ]
        return sorted(found, key=lambda i: -pages[i].imagewidth)  # stable, as GLib's sort
    return [i for i, p in enumerate(pages) if p.is_tiled]  # aperio, philips: file order


def _level_entry(page, index: int, level: int, slide: Any, vendor: str) -> TiffLevel | str:
    """The level's tile table, or why the fast path does not read it."""
    where = f"level {level} (TIFF page {index})"
    width, height = (int(v) for v in slide.level_dimensions[level])
    pw, ph = int(page.imagewidth), int(page.imagelength)
    if vendor == "philips":
        if width > pw or height > ph:
            return f"{where}: level {width}x{height} exceeds the page's {pw}x{ph}"
    elif (width, height) != (pw, ph):
        return f"{where}: OpenSlide's {width}x{height} is not the page's {pw}x{ph}"
    compression = int(page.compression)
    if compression != JPEG:
        return f"{where}: compression {_tag_name(page.compression)}, not JPEG"
    photometric = int(page.photometric)
    if (
        photometric not in PHOTOMETRIC_COLORSPACE
        or int(page.planarconfig) != CONTIG
        or int(page.bitspersample) != 8
        or int(page.samplesperpixel) != 3
        or int(getattr(page, "imagedepth", 1)) != 1
    ):
        return (
            f"{where}: photometric {_tag_name(page.photometric)}, planar "
            f"{int(page.planarconfig)}, {page.samplesperpixel} x {page.bitspersample} bit: "
            "OpenSlide reads it through libtiff, not as plain JPEG"
        )
    tw, th = int(page.tilewidth), int(page.tilelength)
    props = slide.properties
    hint = (
        props.get(f"openslide.level[{level}].tile-width"),
        props.get(f"openslide.level[{level}].tile-height"),
    )
    if None not in hint and (int(hint[0]), int(hint[1])) != (tw, th):
        return f"{where}: OpenSlide's tiles are {hint[0]}x{hint[1]}, the page's {tw}x{th}"
    across, down = math.ceil(pw / tw), math.ceil(ph / th)
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    if len(offsets) != across * down or len(counts) != len(offsets):
        return f"{where}: {len(offsets)} tile offsets for a {across}x{down} grid"
    geom = LevelGeometry(width, height, tw, th, across, down, float(slide.level_downsamples[level]))
    tables = bytes(page.jpegtables) if page.jpegtables is not None else None
    colorspace = PHOTOMETRIC_COLORSPACE[photometric]
    return TiffLevel(level, geom, offsets, counts, tables, colorspace, index)


def _tag_name(value) -> str:
    return getattr(value, "name", str(value))
