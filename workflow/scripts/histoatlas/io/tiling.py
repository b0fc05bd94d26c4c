"""Tiling options: a tile's size in pixels and microns, the stride and the tissue filters.

:class:`TileOptions` is what the config's ``tiles:`` section holds, validated once;
:class:`~histoatlas.io.wsi.WSI` takes it (:meth:`WSI.from_options`) or the same values as
keywords. The validators here give the errors every tiling option raises.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from histoatlas.errors import ConfigError, MPPError

# MPP outside (0, MAX_MPP] is a wrong tag (e.g. a 72 dpi screen resolution), not a scan.
MAX_MPP = 100.0


@dataclass(frozen=True)
class TileOptions:
    """How a slide is cut into tiles and which tiles are kept.

    Attributes
    ----------
    px : int
        Tile edge in pixels, as the network sees it.
    um : float or str
        Tile edge in microns, or a magnification such as ``"20x"`` (see
        :func:`parse_tile_um`).
    stride_div : int
        Grid step = tile / stride_div (2: 50 % overlap).
    otsu, tissue_fraction, grayspace_fraction, grayspace_threshold, whitespace_fraction,
    whitespace_threshold
        Tissue detection and tile filters (see :class:`~histoatlas.io.wsi.WSI`).
    allow_model_mismatch : bool
        Extract even when ``px`` differs from the model's ``tile_px``.
    reader : {"auto", "openslide", "fast"}
        Who decodes the tiles (:mod:`histoatlas.io.readers.choice`); the same pixels
        either way.

    Examples
    --------
    >>> TileOptions.from_mapping({"px": 224, "um": "20x", "unrelated": 1}).um
    '20x'
    """

    px: int
    um: float | str
    stride_div: int = 1
    otsu: bool = True
    tissue_fraction: float = 0.5
    grayspace_fraction: float = 0.6
    grayspace_threshold: float = 0.05
    whitespace_fraction: float = 1.0
    whitespace_threshold: float = 230
    allow_model_mismatch: bool = False
    reader: str = "auto"

    @classmethod
    def from_mapping(cls, values: Any) -> TileOptions:
        """The fields found in a mapping or an object with attributes (a rule's params)."""
        names = [f.name for f in fields(cls)]
        if hasattr(values, "keys"):
            found = {k: values[k] for k in names if k in values.keys()}
        else:
            found = {k: getattr(values, k) for k in names if hasattr(values, k)}
        return cls(**found)

    def tissue(self) -> dict[str, Any]:
        """The tissue detection and filter options, as :class:`WSI` takes them."""
        skip = {"px", "um", "stride_div", "allow_model_mismatch", "reader"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


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


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
    return int(value)


def to_float(value: object) -> float:
    """``float(value)``, or NaN where that fails."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def is_nan(value: object) -> bool:
    """An empty sheet cell: a float NaN (pandas gives one for a missing ``mpp``)."""
    return not isinstance(value, str) and math.isnan(to_float(value))


def fraction(name: str, value: object) -> float:
    number = to_float(value)
    if not 0 <= number <= 1:
        raise ConfigError(f"{name}={value!r} must be a number in [0, 1]")
    return number


def slide_mpp(given, from_file, *, name: str, path) -> float:
    """A slide's microns per level-0 pixel: ``given`` (the sheet's), else the file's.

    Parameters
    ----------
    given : float or None
        The sheet's ``mpp``; None or NaN (an empty cell) uses the file's.
    from_file : str or None
        ``openslide.mpp-x`` of the file.
    name, path
        The slide, for messages.

    Raises
    ------
    MPPError
        If there is none, or it is not in (0, 100].
    """
    hint = "set the sheet's `mpp` column for this slide (microns per level-0 pixel)"
    if given is not None and not is_nan(given):
        value, source = given, f"mpp={given!r} (given)"
    else:
        if from_file is None:
            raise MPPError(f"slide {name!r} ({path}) has no MPP in the file; {hint}")
        value, source = from_file, f"openslide.mpp-x={from_file} (from the file)"
    number = to_float(value)
    if not (0 < number <= MAX_MPP):
        raise MPPError(
            f"slide {name!r} ({path}): {source} is not a plausible microns per pixel "
            f"(must be in (0, {MAX_MPP:g}]); {hint}"
        )
    return number
