"""The per-slide HDF5 file: activations, tile locations and predictions of one slide.

Dataset names follow CLAM and TRIDENT (``features``, ``coords``), and ``coords`` carries
TRIDENT's attributes, so their readers load the file untouched. TRIDENT's conventions:
``patch_size`` is the tile edge at the target magnification (``tile_px``),
``patch_size_level0`` the same edge in level-0 pixels, magnifications are ``10 / mpp``
(10x at 1 um/px) and ``overlap`` is in target-magnification pixels, so that
``patch_size * level0_magnification / target_magnification == patch_size_level0``.
Datasets are chunked float32/int arrays, written batch by batch (:class:`SlideH5Writer`):
HDF5 virtual datasets (the cohort's ``features.h5``) and any reader map them directly.
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
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, F), got {features.shape}")
    _check_attrs(attrs)
    n_classes = None if predictions is None else np.shape(predictions)[-1]
    with SlideH5Writer(path, n_features=features.shape[1], n_classes=n_classes) as writer:
        writer.append(features=features, coords=coords, grid=grid, predictions=predictions)
        writer.close(attrs)


class SlideH5Writer:
    """A per-slide file that grows batch by batch and appears only when complete.

    The datasets are resizable (chunked) and grow with each :meth:`append` inside the
    file's temporary name (:func:`~histoatlas.atomic.partial_path`); :meth:`close` writes
    the attributes and renames the file. A slide's memory is one batch, never its N x F,
    and a failed or killed job leaves no file that looks finished.

    Parameters
    ----------
    path : str or PathLike
        Output ``{slide}.h5``.
    n_features : int
        Width F of ``features``.
    n_classes : int, optional
        Width C of ``predictions``; None writes no ``predictions`` dataset.

    Examples
    --------
    >>> with SlideH5Writer("s1.h5", n_features=64, n_classes=2) as writer:  # doctest: +SKIP
    ...     for feats, preds, coords, grid in batches:
    ...         writer.append(features=feats, coords=coords, grid=grid, predictions=preds)
    ...     writer.close(attrs)
    """

    def __init__(
        self, path: str | os.PathLike, *, n_features: int, n_classes: int | None = None
    ) -> None:
        import h5py

        widths = {"features": (n_features, np.float32), "coords": (2, np.int64)}
        widths["grid"] = (2, np.int32)
        if n_classes is not None:
            widths["predictions"] = (n_classes, np.float32)
        self.n = 0
        self._atomic = atomic_output(path)
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            for name, (width, dtype) in widths.items():
                # chunks of ~1 MiB: a batch appends cheaply, a row range reads cheaply
                rows = int(np.clip(2**18 // max(width, 1), 16, 4096))
                self._file.create_dataset(
                    name,
                    (0, width),
                    dtype=dtype,
                    maxshape=(None, width),
                    chunks=(rows, max(width, 1)),
                )
        except BaseException:
            self.abort()
            raise

    def append(self, *, features, coords, grid, predictions=None) -> None:
        """Add rows (one batch) at the end of every dataset.

        Raises
        ------
        ValueError
            If the arrays disagree in length or width with each other or the file.
        """
        arrays = {"features": features, "coords": coords, "grid": grid}
        if "predictions" in self._file:
            arrays["predictions"] = predictions
        n = len(features)
        for name, array in arrays.items():
            dataset = self._file[name]
            array = np.asarray(array, dtype=dataset.dtype)
            if array.ndim != 2 or len(array) != n:
                raise ValueError(
                    f"{name} must be 2-D with {n} rows (one per tile), got {array.shape}"
                )
            if array.shape[1] != dataset.shape[1]:
                raise ValueError(f"{name} must be (N, {dataset.shape[1]}), got {array.shape}")
            dataset.resize(self.n + n, axis=0)
            dataset[self.n :] = array
        self.n += n

    def close(self, attrs: dict) -> None:
        """Write the attributes (see :func:`write_slide_h5`) and rename the file to its name."""
        _check_attrs(attrs)
        try:
            for key, value in trident_coords_attrs(attrs).items():
                self._file["coords"].attrs[key] = value
            for key, value in attrs.items():
                self._file.attrs[key] = _encode(key, value)
            self._file.close()
        except BaseException as e:
            self.abort(e)
            raise
        self._atomic.__exit__(None, None, None)

    def abort(self, error: BaseException | None = None) -> None:
        """Close and remove the temporary file (nothing is renamed)."""
        file = getattr(self, "_file", None)
        if file is not None and file.id.valid:
            file.close()
        error = error or RuntimeError("slide file not completed")
        self._atomic.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> SlideH5Writer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._file.id.valid:  # not closed: an error, or close() never called
            self.abort(error)


def _check_attrs(attrs: dict) -> None:
    missing = [k for k in FILE_ATTRS if attrs.get(k) is None]
    if missing:
        raise ValueError(f"attrs lack {missing} (write_slide_h5 needs every one of {FILE_ATTRS})")


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
    with open_slide_h5(path, ("features", "coords", "grid")) as f:
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
    with open_slide_h5(path, ("coords",)) as f:
        return slide_attrs(f)


def slide_attrs(f) -> dict:
    """:func:`read_slide_attrs` of a per-slide file that is already open (``h5py.File``)."""
    attrs = {k: _decode(k, v) for k, v in f.attrs.items()}
    attrs["n_tiles"] = int(f["coords"].shape[0])
    return attrs


def open_slide_h5(path: str | os.PathLike, needed: tuple[str, ...] = ("features", "coords")):
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
