"""The per-slide HDF5 file: activations, tile locations and predictions of one slide.

Dataset names follow CLAM and TRIDENT (``features``, ``coords``), and ``coords`` carries
TRIDENT's attributes, so their readers load the file untouched. TRIDENT's conventions:
``patch_size`` is the tile edge at the target magnification (``tile_px``),
``patch_size_level0`` the same edge in level-0 pixels, magnifications are ``10 / mpp``
(10x at 1 um/px) and ``overlap`` is in target-magnification pixels, so that
``patch_size * level0_magnification / target_magnification == patch_size_level0``.
Datasets are plain contiguous float32/int arrays: HDF5 virtual datasets (the cohort's
``features.h5``) and any reader map them directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoatlas.atomic import atomic_output
from histoatlas.errors import HistoatlasError

JSON_ATTRS = ("layers", "layer_slices", "class_names", "reader_levels")
FILE_ATTRS = (
    "slide",
    "slide_path",
    "mpp",
    "level0_width",
    "level0_height",
    "tile_px",
    "tile_um",
    "patch_size_level0",
    "stride_div",
    "grid_shape",
    "layers",
    "layer_slices",
    "pooling",
    "model",
    "model_sha256",
    "class_names",
    "histoatlas_version",
)
# Optional file attributes: the tiling's tile counts (grid tiles, tissue candidates, tiles
# kept after the filters, candidates filtered out), read by histoatlas.pipeline.qc.
QC_ATTRS = ("n_grid", "n_candidates", "n_kept", "n_filtered")
# Optional file attributes: who decoded the tiles (histoatlas.io.readers.choice): the reader
# of the level read ("tiled-jpeg" or "openslide"), why, the option asked for, the level, the
# reader "auto" takes at each level and the regions the decode-once reader left to
# OpenSlide. They change no feature. What reading cost (ms per tile) is said in the log and
# the job's report, not here: a timing would make the same slide give other bytes.
READER_ATTRS = (
    "reader",
    "reader_reason",
    "reader_option",
    "read_level",
    "reader_levels",
    "reader_fallbacks",
)
COORDS_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "level0_width",
    "level0_height",
)


@dataclass
class SlideFeatures:
    """The contents of a per-slide HDF5 file.

    Attributes
    ----------
    features : ndarray, shape (N, F), dtype float32
    coords : ndarray, shape (N, 2), dtype int64
        Level-0 (x, y) of each tile's top-left corner.
    grid : ndarray, shape (N, 2), dtype int32
        (i, j) grid index of each tile.
    predictions : ndarray, shape (N, C), dtype float32, or None
    attrs : dict
        File attributes; ``layers``, ``layer_slices`` and ``class_names`` decoded from
        JSON, ``grid_shape`` as a tuple, numbers as Python numbers.
    coords_attrs : dict
        TRIDENT's attributes of the ``coords`` dataset.
    """

    features: np.ndarray
    coords: np.ndarray
    grid: np.ndarray
    predictions: np.ndarray | None
    attrs: dict
    coords_attrs: dict

    def __len__(self) -> int:
        return len(self.features)


def trident_coords_attrs(attrs: dict) -> dict:
    """TRIDENT's ``coords`` attributes, derived from the file attributes.

    Parameters
    ----------
    attrs : dict
        Needs ``mpp``, ``tile_px``, ``tile_um``, ``patch_size_level0``, ``stride_div``,
        ``level0_width`` and ``level0_height``.

    Returns
    -------
    dict
        ``patch_size``, ``patch_size_level0``, ``level0_magnification``,
        ``target_magnification``, ``overlap``, ``level0_width``, ``level0_height``.
    """
    tile_px = int(attrs["tile_px"])
    return {
        "patch_size": tile_px,
        "patch_size_level0": int(attrs["patch_size_level0"]),
        "level0_magnification": 10.0 / float(attrs["mpp"]),
        "target_magnification": 10.0 * tile_px / float(attrs["tile_um"]),
        "overlap": int(round(tile_px - tile_px / float(attrs["stride_div"]))),
        "level0_width": int(attrs["level0_width"]),
        "level0_height": int(attrs["level0_height"]),
    }


def write_slide_h5(
    path: str | os.PathLike,
    *,
    features: np.ndarray,
    coords: np.ndarray,
    grid: np.ndarray,
    predictions: np.ndarray | None,
    attrs: dict,
) -> None:
    """Write one slide's activations atomically (a killed job leaves no file).

    Parameters
    ----------
    path : str or PathLike
        Output ``{slide}.h5``.
    features : ndarray, shape (N, F)
        Stored as float32. N may be 0 (a slide without tissue).
    coords : ndarray, shape (N, 2)
        Level-0 (x, y) of each tile's top-left corner; stored as int64.
    grid : ndarray, shape (N, 2)
        (i, j) grid index of each tile; stored as int32.
    predictions : ndarray, shape (N, C), or None
        Stored as float32; None writes no ``predictions`` dataset.
    attrs : dict
        Every name of :data:`FILE_ATTRS`. ``layers``, ``layer_slices`` and
        ``class_names`` may be Python objects (stored as JSON). Other keys (such as the
        tile counts of :data:`QC_ATTRS` and the reader's :data:`READER_ATTRS`) are stored
        as they are.

    Raises
    ------
    ValueError
        If attributes are missing or None, or the arrays disagree in length or shape.

    Examples
    --------
    >>> write_slide_h5("s1.h5", features=f, coords=c, grid=g, predictions=None,
    ...                attrs=attrs)  # doctest: +SKIP
    """
    import h5py

    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    grid = np.asarray(grid, dtype=np.int32)
    arrays = {"features": features, "coords": coords, "grid": grid}
    if predictions is not None:
        arrays["predictions"] = np.asarray(predictions, dtype=np.float32)
    n = len(features)
    for name, array in arrays.items():
        if array.ndim != 2 or len(array) != n:
            raise ValueError(f"{name} must be 2-D with {n} rows (one per tile), got {array.shape}")
    if coords.shape[1] != 2 or grid.shape[1] != 2:
        raise ValueError(f"coords and grid must be (N, 2), got {coords.shape} and {grid.shape}")
    missing = [k for k in FILE_ATTRS if attrs.get(k) is None]
    if missing:
        raise ValueError(f"attrs lack {missing} (write_slide_h5 needs every one of {FILE_ATTRS})")
    coords_attrs = trident_coords_attrs(attrs)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
        for key, value in coords_attrs.items():
            f["coords"].attrs[key] = value
        for key, value in attrs.items():
            f.attrs[key] = _encode(key, value)


def read_slide_h5(path: str | os.PathLike) -> SlideFeatures:
    """Read a per-slide HDF5 file written by :func:`write_slide_h5`.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    SlideFeatures

    Raises
    ------
    HistoatlasError
        If the file is missing, not HDF5, or lacks ``features``, ``coords`` or ``grid``.

    Examples
    --------
    >>> sf = read_slide_h5("results/features/demo/s1.h5")  # doctest: +SKIP
    >>> sf.features.shape, sf.attrs["layers"]  # doctest: +SKIP
    ((812, 64), ['postconv'])
    """
    with _open_slide_h5(path, ("features", "coords", "grid")) as f:
        return SlideFeatures(
            features=f["features"][()].astype(np.float32, copy=False),
            coords=f["coords"][()].astype(np.int64, copy=False),
            grid=f["grid"][()].astype(np.int32, copy=False),
            predictions=(
                f["predictions"][()].astype(np.float32, copy=False) if "predictions" in f else None
            ),
            attrs={k: _decode(k, v) for k, v in f.attrs.items()},
            coords_attrs={k: _decode(k, v) for k, v in f["coords"].attrs.items()},
        )


def read_slide_attrs(path: str | os.PathLike) -> dict:
    """The attributes of a per-slide file (decoded as :func:`read_slide_h5` decodes them)
    and its tile count ``n_tiles``, without reading the activations. HistoatlasError if the
    file is missing, not HDF5 or has no ``coords``."""
    with _open_slide_h5(path, ("coords",)) as f:
        attrs = {k: _decode(k, v) for k, v in f.attrs.items()}
        attrs["n_tiles"] = int(f["coords"].shape[0])
    return attrs


def _open_slide_h5(path: str | os.PathLike, needed: tuple[str, ...]):
    """A per-slide file open for reading, with the datasets ``needed``.

    Raises
    ------
    HistoatlasError
        If the file is missing, not HDF5, or lacks a dataset.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise HistoatlasError(f"per-slide feature file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise HistoatlasError(f"{path} is not a readable HDF5 file: {e}") from None
    missing = [name for name in needed if name not in f]
    if missing:
        f.close()
        raise HistoatlasError(
            f"{path} lacks dataset(s) {missing}: not a histoatlas per-slide file "
            "(re-extract the slide with histoatlas)"
        )
    return f


def _encode(key: str, value):
    if key in JSON_ATTRS and not isinstance(value, str):
        return json.dumps(value)
    if key == "grid_shape":
        return np.asarray(value, dtype=np.int64)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _decode(key: str, value):
    if isinstance(value, bytes):
        value = value.decode()
    if key in JSON_ATTRS and isinstance(value, str):
        return json.loads(value)
    if key == "grid_shape":
        return tuple(int(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
