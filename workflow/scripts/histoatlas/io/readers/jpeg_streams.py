"""Complete JPEG streams from TIFF tiles, and the plan of a batch decoded on a device.

A JPEG-compressed TIFF stores each tile as an abbreviated stream whose quantisation and
Huffman tables sit once in the page's JPEGTables tag, and says in its photometric tag
whether the samples are RGB or YCbCr. A decoder fed one tile at a time (nvJPEG through
``torchvision.io.decode_jpeg``) needs a complete stream that also says the colour space:
:func:`complete_stream` splices the tables into the tile and writes an Adobe APP14 marker
with the transform the photometric tag implies (0: RGB, as Aperio stores it; 1: YCbCr),
dropping JFIF (APP0) and other APP14 markers, which libjpeg would otherwise obey.

:func:`plan_device_batch` is the CPU half of the GPU path: for square regions of a
:class:`~histoatlas.io.readers.tiled_jpeg.TiledJpegRegions`, the complete streams of the
source tiles the pixel-aligned regions need (each once) and the copies that cut the regions
from them. ``histoatlas.backends.torch.jpeg_decode`` decodes and cuts on the device; this
module imports no framework.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histoatlas.errors import TileReadError
from histoatlas.io.readers.tile_compose import LevelGeometry, Plan, plan_region

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
APP0, APP14 = 0xE0, 0xEE
# markers without a length field
_STANDALONE = {0x01, *range(0xD0, 0xD8), SOI, EOI}
ADOBE_TRANSFORM = {"RGB": 0, "YCbCr": 1}


def adobe_marker(transform: int) -> bytes:
    """An Adobe APP14 segment: version 100, no flags, the given colour transform.

    libjpeg reads ``transform`` 0 as RGB and 1 as YCbCr for three-component images.
    """
    body = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, transform)
    return b"\xff" + bytes([APP14]) + struct.pack(">H", len(body) + 2) + body


def header_segments(stream: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The marker segments of a JPEG stream before its first scan.

    Parameters
    ----------
    stream : bytes
        A JPEG stream (complete or abbreviated), or a JPEGTables tag.

    Returns
    -------
    segments : list of (marker, bytes)
        Each segment with its marker and length bytes; SOI and EOI are left out.
    scan : int
        Offset of the first SOS marker (``len(stream)`` when there is none).

    Raises
    ------
    TileReadError
        If the stream does not start with SOI or a segment runs past its end.
    """
    if stream[:2] != b"\xff\xd8":
        raise TileReadError(f"JPEG stream starts with {stream[:2].hex()}, not SOI (ffd8)")
    segments, pos = [], 2
    while pos + 1 < len(stream):
        if stream[pos] != 0xFF:
            raise TileReadError(f"JPEG stream: no marker at byte {pos} ({stream[pos]:#04x})")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (SOS, EOI):
            return segments, pos
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > len(stream):
            raise TileReadError(f"JPEG stream ends inside the marker at byte {pos}")
        (length,) = struct.unpack(">H", stream[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(stream):
            raise TileReadError(f"JPEG segment {marker:#04x} at byte {pos} runs past the end")
        segments.append((marker, stream[pos:end]))
        pos = end
    return segments, len(stream)


def complete_stream(tile: bytes, tables: bytes | None, colorspace: str) -> bytes:
    """A self-contained JPEG stream from a TIFF tile, its page's tables and colour space.

    Parameters
    ----------
    tile : bytes
        The tile's stream as stored (SOI ... EOI, tables possibly missing).
    tables : bytes or None
        The page's JPEGTables (SOI, DQT/DHT segments, EOI), if it has them.
    colorspace : {"RGB", "YCbCr"}
        From the page's photometric tag: what the samples are, whatever the stream's
        own markers say (OpenSlide forces the same).

    Returns
    -------
    bytes
        SOI, an Adobe APP14 marker for ``colorspace``, the tables' segments, the tile's
        header segments without APP0/APP14, and the tile from its first scan on.

    Raises
    ------
    TileReadError
        If the tile or the tables are not well-formed JPEG.

    Examples
    --------
    >>> raw = reader.raw_tile(0, 3, 2)  # doctest: +SKIP
    >>> stream = complete_stream(raw, reader.tables(0), "RGB")  # doctest: +SKIP
    >>> imagecodecs.jpeg8_decode(stream).shape  # doctest: +SKIP
    (240, 240, 3)
    """
    if colorspace not in ADOBE_TRANSFORM:
        raise ValueError(f"colorspace={colorspace!r}: expected one of {list(ADOBE_TRANSFORM)}")
    table_segments = header_segments(tables)[0] if tables else []
    tile_segments, scan = header_segments(tile)
    parts = [b"\xff\xd8", adobe_marker(ADOBE_TRANSFORM[colorspace])]
    parts += [seg for marker, seg in table_segments if marker not in (APP0, APP14)]
    parts += [seg for marker, seg in tile_segments if marker not in (APP0, APP14)]
    parts.append(tile[scan:])
    return b"".join(parts)


# A copy from a decoded tile into a region: (stream index, tile rows r0:r1, tile columns
# c0:c1, region rows, region columns), as (index, r0, r1, c0, c1, R0, R1, C0, C1).
Copy = tuple[int, int, int, int, int, int, int, int, int]


@dataclass
class DeviceBatch:
    """Square regions of one level, as a device decodes and cuts them.

    Attributes
    ----------
    streams : list of bytes
        Complete JPEG streams (:func:`complete_stream`) of the source tiles needed, each once.
    tile_shape : (int, int)
        ``(tile_h, tile_w)`` every stream must decode to.
    size : int
        Region side in level pixels.
    background : (int, int, int)
        RGB of the pixels no tile covers (past the level's edge).
    copies : list of (list of Copy) or None
        Per region, the copies that make it; None: the region is read on the CPU
        (:meth:`read_on_cpu`: filtered at a fractional offset, or touching an unreadable tile).
    coords : ndarray, shape (M, 2), dtype int64
        Level-0 (x, y) of the regions.
    level : int
    reader : TiledJpegRegions
        Reads the regions without copies.
    """

    streams: list[bytes]
    tile_shape: tuple[int, int]
    size: int
    background: tuple[int, int, int]
    copies: list[list[Copy] | None]
    coords: np.ndarray
    level: int
    reader: Any = field(repr=False)

    def read_on_cpu(self, k: int) -> np.ndarray:
        """Region ``k`` from the CPU reader: ``(size, size, 3)`` uint8."""
        x, y = (int(v) for v in self.coords[k])
        return self.reader.read_region((x, y), self.level, (self.size, self.size))


def plan_device_batch(reader: Any, coords: np.ndarray, level: int, size: int) -> DeviceBatch:
    """Which source tiles square regions need, as complete streams, and how to cut them.

    Parameters
    ----------
    reader : TiledJpegRegions
    coords : array_like, shape (M, 2)
        Level-0 (x, y) of the regions' top-left corners.
    level : int
        A level the reader maps (``reader.supports(level)``).
    size : int
        Region side in level pixels.

    Returns
    -------
    DeviceBatch
        Regions OpenSlide filters (fractional offsets) or that touch a zero-byte or
        truncated tile get no copies: they are read on the CPU, so every pixel is OpenSlide's.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    geom = reader.geometry(level)
    plans = [plan_region(geom, int(x), int(y), size, size) for x, y in coords]
    index: dict[tuple[int, int], int | None] = {}
    streams: list[bytes] = []
    copies: list[list[Copy] | None] = []
    for plan in plans:
        cuts = _cuts(plan, geom) if plan is not None and plan.exact else None
        for tx, ty, *_ in cuts or []:
            if (tx, ty) not in index:
                stream = _stream(reader, level, tx, ty)
                index[(tx, ty)] = None if stream is None else len(streams)
                streams += [] if stream is None else [stream]
        if cuts is not None and all(index[(c[0], c[1])] is not None for c in cuts):
            copies.append([(index[(c[0], c[1])], *c[2:]) for c in cuts])
        else:
            copies.append(None)
    shape = (geom.tile_h, geom.tile_w)
    return DeviceBatch(streams, shape, size, reader.background, copies, coords, level, reader)


def _stream(reader: Any, level: int, tx: int, ty: int) -> bytes | None:
    """The tile's complete stream, or None when it cannot be read as a whole JPEG."""
    try:
        raw = reader.raw_tile(level, tx, ty)
        if not raw.endswith(b"\xff\xd9"):
            return None
        return complete_stream(raw, reader.tables(level), reader.colorspace(level))
    except TileReadError:  # UnreadableTile included
        return None


def _cuts(plan: Plan, geom: LevelGeometry) -> list[tuple[int, ...]]:
    """(tx, ty, tile rows, tile columns, region rows, region columns) of a pixel-aligned
    region's copies, clipped to the level (the rest stays background)."""
    th, tw = geom.tile_h, geom.tile_w
    by, bx = plan.y.base, plan.x.base
    r0, r1 = max(0, by), min(geom.height, by + plan.height)
    c0, c1 = max(0, bx), min(geom.width, bx + plan.width)
    if r0 >= r1 or c0 >= c1 or not plan.painted:
        return []
    cuts = []
    for ty in range(r0 // th, (r1 - 1) // th + 1):
        for tx in range(c0 // tw, (c1 - 1) // tw + 1):
            y0, y1 = max(r0, ty * th), min(r1, (ty + 1) * th)
            x0, x1 = max(c0, tx * tw), min(c1, (tx + 1) * tw)
            tile = (y0 - ty * th, y1 - ty * th, x0 - tx * tw, x1 - tx * tw)
            cuts.append((tx, ty, *tile, y0 - by, y1 - by, x0 - bx, x1 - bx))
    return cuts
