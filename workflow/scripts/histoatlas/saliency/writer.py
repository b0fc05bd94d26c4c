"""The saliency rule's work: every selected tile's maps on disk, a manifest and an overview.

Per tile and method: ``{maps_dir}/{name}/{method}.npy`` (the ``(H, W)`` float32 mask),
``{method}.png`` (inferno heatmap) and ``{method}_overlay.png``. The whole folder appears at
once (built beside it, then renamed), so a killed job leaves no half-filled ``maps_dir``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoatlas.atomic import atomic_output, partial_path
from histoatlas.backends.gradients import check_class_idx
from histoatlas.errors import ConfigError, EmptyDatasetError, ModelError
from histoatlas.io.wsi import WSI
from histoatlas.saliency.maps import SaliencyMap
from histoatlas.saliency.methods import METHODS, check_method
from histoatlas.saliency.plot_utils import inferno, overlay, overview
from histoatlas.saliency.select import tile_dir_name

log = logging.getLogger(__name__)

SUFFIXES = {"npy": ".npy", "png": ".png", "overlay": "_overlay.png"}
MANIFEST_TILE_COLUMNS = ("name", "slide", "x", "y", "class_idx", "class_name", "probability")


def write_saliency_maps(
    tiles,
    model: Any,
    *,
    maps_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    overview_png: str | os.PathLike,
    methods: Sequence[str] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    smooth: bool | dict = False,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    read_tile: Callable[[Any], np.ndarray] | None = None,
    alpha: float = 0.5,
):
    """Compute and save the maps of every selected tile, a manifest and an overview.

    Parameters
    ----------
    tiles : pandas.DataFrame
        ``tiles.csv`` as :func:`histoatlas.saliency.select.select_tiles` writes it
        (without a ``name`` column, names are made as that function makes them).
    model : LoadedModel, torch.nn.Module or keras.Model
        The network; a bare module or Keras model needs ``preprocess``.
    maps_dir, manifest, overview_png : path
        Outputs (a folder, a CSV, a PNG).
    methods : list of str, optional
        Subset of :data:`METHODS` (default: all), in column order.
    method_params : dict, optional
        Method -> its keyword options (``{"integrated_gradients": {"x_steps": 50}}``).
    smooth : bool or dict
        SmoothGrad for every method (see :class:`SaliencyMap`).
    preprocess : callable, optional
        uint8 ``(H, W, 3)`` -> float32; default ``model.preprocess``. The maps are drawn
        over ``model.model_view(tile)`` (the tile resized and cropped as the network sees
        it, when its params.json says so), or over the tile itself for a bare network.
    read_tile : callable, optional
        Row of ``tiles`` -> uint8 ``(tile_px, tile_px, 3)``; default reads it from the
        row's slide with :class:`histoatlas.WSI`.
    alpha : float
        Heatmap weight in the overlays.

    Returns
    -------
    pandas.DataFrame
        The manifest: the tile columns, ``method``, the files (``npy``, ``png``,
        ``overlay``) and ``constant`` (the map holds one value everywhere, e.g. a Grad-CAM
        without positive evidence for the class; the log says so too).

    Raises
    ------
    EmptyDatasetError
        ``tiles`` has no rows.
    ModelError
        The model's classes are not those of ``tiles``, or ``preprocess`` is missing.
    ConfigError
        Unknown method or option, or a tile listed twice.
    """
    import pandas as pd

    if len(tiles) == 0:
        raise EmptyDatasetError("tiles.csv lists no tiles: nothing to explain")
    methods = [check_method(m) for m in (METHODS if methods is None else methods)]
    compute = _MapComputer.of(model, methods, method_params, smooth, preprocess)
    tiles = _checked_tiles(tiles, list(getattr(model, "class_names", []) or []))
    reader = _SlideTileReader() if read_tile is None else None
    try:
        records, rows, labels = _write_all(
            tiles, compute, read_tile or reader, Path(maps_dir), alpha
        )
    finally:
        if reader is not None:
            reader.close()
    table = pd.DataFrame(records, columns=[*MANIFEST_TILE_COLUMNS, "method", *SUFFIXES, "constant"])
    with atomic_output(manifest) as tmp:
        table.to_csv(tmp, index=False)
    fig = overview(rows, labels=labels)
    with atomic_output(overview_png) as tmp:
        fig.savefig(tmp, dpi=100)
    return table


class _MapComputer:
    """One tile's maps of every method; one :class:`SaliencyMap` per explained class.

    ``view`` gives the tile as the network sees it (see ``LoadedModel.model_view``): the
    pixels the maps explain, and so the picture they are drawn over.
    """

    def __init__(self, model, methods, method_params, smooth, preprocess, view=None) -> None:
        self.model, self.methods = model, methods
        self.params, self.smooth, self.preprocess = method_params, smooth, preprocess
        self.view = view
        self.explainers: dict[int, SaliencyMap] = {}

    @classmethod
    def of(cls, model, methods, method_params, smooth, preprocess) -> _MapComputer:
        """The model's own preprocess and view, unless ``preprocess`` is given."""
        view = getattr(model, "model_view", None) if preprocess is None else None
        preprocess = preprocess or getattr(model, "preprocess", None)
        if preprocess is None:
            raise ModelError("a bare torch module needs preprocess= (uint8 tile -> float32)")
        return cls(model, methods, method_params, smooth, preprocess, view)

    def __call__(self, tile: np.ndarray, class_idx: int) -> tuple[np.ndarray, dict]:
        """``(the tile as the network sees it, {method: map})``."""
        if class_idx not in self.explainers:
            self.explainers[class_idx] = SaliencyMap(self.model, class_idx)
        masks = self.explainers[class_idx].all(
            self.preprocess(tile), methods=self.methods, params=self.params, smooth=self.smooth
        )
        return (tile if self.view is None else self.view(tile)), masks


def _write_all(tiles, compute: _MapComputer, read_tile, maps_dir: Path, alpha: float):
    """Every tile's maps into a folder beside ``maps_dir``, renamed into place at the end."""
    tmp_dir = partial_path(maps_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    records, rows, labels = [], [], []
    try:
        for row in tiles.itertuples(index=False):
            start = time.perf_counter()
            tile, masks = compute(_checked_tile(read_tile(row), row), int(row.class_idx))
            (tmp_dir / row.name).mkdir(parents=True)
            for method, mask in masks.items():
                records.append(_write_map(tmp_dir, maps_dir, row, method, mask, tile, alpha))
            rows.append((tile, masks))
            labels.append(_row_label(row))
            log.info(f"{row.name}: {', '.join(masks)} in {time.perf_counter() - start:.1f} s")
        shutil.rmtree(maps_dir, ignore_errors=True)
        os.replace(tmp_dir, maps_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return records, rows, labels


def _write_map(tmp_dir: Path, maps_dir: Path, row, method: str, mask, tile, alpha) -> dict:
    """One map's three files (under ``tmp_dir``), and its manifest row (under ``maps_dir``)."""
    from PIL import Image

    files = {k: maps_dir / row.name / f"{method}{s}" for k, s in SUFFIXES.items()}
    np.save(tmp_dir / row.name / files["npy"].name, mask)
    Image.fromarray(inferno(mask)).save(tmp_dir / row.name / files["png"].name)
    Image.fromarray(overlay(tile, mask, alpha=alpha)).save(
        tmp_dir / row.name / files["overlay"].name
    )
    constant = bool(mask.min() == mask.max())
    if constant:
        log.info(_constant_note(row, method, float(mask.flat[0])))
    return {
        **{k: getattr(row, k) for k in MANIFEST_TILE_COLUMNS},
        "method": method,
        **{k: str(v) for k, v in files.items()},
        "constant": constant,
    }


def _checked_tiles(tiles, class_names: list[str]):
    """``tiles.csv`` with its ``name`` column; classes and names checked."""
    _check_classes(tiles, class_names)
    if "name" not in tiles.columns:
        tiles = tiles.assign(
            name=[
                tile_dir_name(*r)
                for r in tiles[["slide", "x", "y", "class_name"]].itertuples(index=False)
            ]
        )
    repeated = sorted(set(tiles["name"][tiles["name"].duplicated()]))
    if repeated:
        raise ConfigError(f"tiles.csv lists tile(s) {repeated} more than once")
    return tiles


def _checked_tile(tile, row) -> np.ndarray:
    tile = np.asarray(tile)
    if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8:
        raise ValueError(
            f"tile {row.name}: expected uint8 RGB (H, W, 3), got {tile.shape} {tile.dtype}"
        )
    return tile


def _constant_note(row: Any, method: str, value: float) -> str:
    """The log's warning for a map that holds one value everywhere."""
    why = (
        "Grad-CAM keeps positive evidence only, and the layer holds none for this class here"
        if method == "gradcam" and value == 0
        else "the explained output does not change with the input here"
    )
    return (
        f"warning: {row.name}: the {method} map of class {row.class_name!r} is {value:g} "
        f"everywhere ({why}); maps.csv marks it constant"
    )


def _row_label(row: Any) -> str:
    label = f"{row.slide} ({int(row.x)}, {int(row.y)})\n{row.class_name}"
    prob = float(row.probability)
    return f"{label} p={prob:.2f}" if np.isfinite(prob) else label


def _check_classes(tiles, class_names: list[str]) -> None:
    """Fail when tiles.csv's class names are not the model's (another model made them)."""
    if not class_names:
        return
    for idx, name in tiles[["class_idx", "class_name"]].drop_duplicates().itertuples(index=False):
        check_class_idx(int(idx), len(class_names))
        if str(class_names[int(idx)]) != str(name):
            raise ModelError(
                f"tiles.csv explains class {name!r} as index {idx}, but the model's class "
                f"{idx} is {class_names[int(idx)]!r} (classes: {', '.join(class_names)}): "
                "the dataset was made with another model"
            )


class _SlideTileReader:
    """Row of tiles.csv -> its uint8 tile, keeping one open WSI per slide."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}

    def __call__(self, row: Any) -> np.ndarray:
        if row.slide not in self._open:
            # WSI reads NaN (no sheet mpp) as "use the file's"
            self._open[row.slide] = WSI(
                row.path, int(row.tile_px), row.tile_um, mpp=row.mpp, name=str(row.slide)
            )
        return self._open[row.slide].read_tile(int(row.x), int(row.y))

    def close(self) -> None:
        for wsi in self._open.values():
            wsi.close()
        self._open.clear()
