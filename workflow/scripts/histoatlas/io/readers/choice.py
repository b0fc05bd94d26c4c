"""Which region reader reads a slide's tiles, per slide and per pyramid level, and why.

``tiles.reader`` (config) / ``WSI(reader=...)``: ``"auto"`` (the default) takes the
decode-once :class:`~histoatlas.io.readers.tiled_jpeg.TiledJpegRegions` where it maps the
level the tiles are read from (JPEG-tiled Aperio SVS, generic or Philips TIFF) and
OpenSlide elsewhere; ``"openslide"`` always takes OpenSlide; ``"fast"`` insists on the
decode-once reader and fails where it does not apply. Both give the same pixels, so the
option changes no feature (and no featureset name).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from histoatlas.errors import ConfigError
from histoatlas.io.readers.tiff_levels import LevelMap
from histoatlas.io.readers.tiled_jpeg import TiledJpegRegions
from histoatlas.io.regions import OpenSlideRegions, RegionReader

READER_OPTIONS = ("auto", "openslide", "fast")
# What the decode-once reader needs beyond OpenSlide (in pyproject and every conda env).
DECODER_MODULES = ("tifffile", "imagecodecs")
OPENSLIDE = OpenSlideRegions.kind
TILED_JPEG = TiledJpegRegions.kind


@dataclass(frozen=True)
class ReaderChoice:
    """Who reads a slide's tiles, at which level, and why.

    Attributes
    ----------
    option : {"auto", "openslide", "fast"}
        What was asked for.
    kind : {"tiled-jpeg", "openslide"}
        The reader of ``level``.
    level : int
        The pyramid level the tiles are read from.
    reason : str
        Why that reader (the level's TIFF page and JPEG tiles, or why not).
    levels : LevelMap or None
        Every level's mapping (None when OpenSlide was asked for).
    """

    option: str
    kind: str
    level: int
    reason: str
    levels: LevelMap | None = None

    def level_kinds(self) -> list[str]:
        """The reader ``"auto"`` would take for each pyramid level (empty: not mapped)."""
        if self.levels is None:
            return []
        return [TILED_JPEG if lvl is not None else OPENSLIDE for lvl in self.levels.levels]

    def describe(self) -> str:
        """One line for the log: reader, level and reason."""
        asked = f"tiles.reader={self.option}"
        return f"reader {self.kind} at level {self.level} ({asked}): {self.reason}"


def reader_option(value: object) -> str:
    """``value`` checked as a ``tiles.reader`` option.

    Raises
    ------
    ConfigError
        If it is not one of :data:`READER_OPTIONS`.
    """
    if value not in READER_OPTIONS:
        raise ConfigError(
            f"reader={value!r} must be one of {', '.join(map(repr, READER_OPTIONS))} "
            "(tiles.reader in the config)"
        )
    return str(value)


def choose_reader(
    path: Path, opened: OpenSlideRegions, level: int, option: str, *, name: str
) -> ReaderChoice:
    """The reader for tiles read at ``level`` of a slide.

    Parameters
    ----------
    path : Path
        The slide file.
    opened : OpenSlideRegions
        The slide, open (its vendor, levels and properties decide).
    level : int
        The level the tiles are read from.
    option : {"auto", "openslide", "fast"}
    name : str
        Slide id, for messages.

    Returns
    -------
    ReaderChoice

    Raises
    ------
    ConfigError
        If ``option`` is ``"fast"`` and the decode-once reader does not read ``level``.
    """
    if option == "openslide":
        return ReaderChoice(option, OPENSLIDE, level, "tiles.reader is 'openslide'")
    missing = [m for m in DECODER_MODULES if importlib.util.find_spec(m) is None]
    levels = None if missing else LevelMap.of(path, opened.handle)
    lvl = None if levels is None else levels.get(level)
    if lvl is not None:
        geom = lvl.geom
        reason = (
            f"TIFF page {lvl.page}, {lvl.colorspace} JPEG tiles of {geom.tile_w}x{geom.tile_h} "
            "px, each decoded once with libjpeg-turbo (OpenSlide's pixels)"
        )
        return ReaderChoice(option, TILED_JPEG, level, reason, levels)
    why = f"{' and '.join(missing)} not installed" if levels is None else levels.reason(level)
    if option == "fast":
        raise ConfigError(
            f"slide {name!r}: tiles.reader='fast' cannot read level {level} of {path} ({why}); "
            "use 'auto', which reads such slides with OpenSlide"
        )
    return ReaderChoice(option, OPENSLIDE, level, why, levels)


def open_region_reader(
    path: Path, choice: ReaderChoice, *, name: str, opened: OpenSlideRegions | None = None
) -> RegionReader:
    """A new reader of the chosen kind (one per reading thread or process).

    ``opened``, an OpenSlide reader of the slide already open, is used rather than a new one.
    """
    if choice.kind == TILED_JPEG:
        return TiledJpegRegions(path, name=name, levels=choice.levels, fallback=opened)
    return opened if opened is not None else OpenSlideRegions(path, name=name)
