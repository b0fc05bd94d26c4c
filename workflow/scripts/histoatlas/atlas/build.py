"""Build the atlas folder: the page, its data files, the mosaic pyramid and thumbnails.

Layout of the folder (every path the page uses is relative, so the folder can be
copied, zipped or put on any static file host as it is)::

    index.html               the page (a copy of assets/index.html)
    assets/                  its JavaScript and CSS, vendored OpenSeadragon + licence
    data/meta.js             cohort, labels (names, categories, palettes), mosaic, files
    data/points.js           UMAP position of every drawn point (uint16 x, y)
    data/mosaic.js           the point shown in each mosaic cell
    data/label-{k}.js        codes of label k per point (loaded when chosen)
    data/tiles.js            slide, tile, level-0 x, y, cell, thumbnail per point
                             (loaded after the first paint)
    mosaic_files/{L}/{c}_{r}.jpeg   Deep Zoom pyramid of the mosaic, one cell per top tile
    thumbs/{s}.jpeg          thumbnail sprite sheets
    saliency/{k}.png, {k}_overlay.png   saliency maps of explained tiles

The drawn points are the whole cohort up to ``max_points``; above that a seeded sample
that always keeps the mosaic's and the saliency maps' tiles. They are drawn in a seeded
random order, as in the UMAP plots, so no category hides the others.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.mosaic_grid import grid_cells, unit_square
from histoatlas.analysis.tile_reader import TileReader
from histoatlas.atlas.encode import quantize_unit, smallest_uint, to_json, write_data_script
from histoatlas.atlas.labels import encode_label
from histoatlas.atlas.page import copy_page
from histoatlas.atlas.pyramid import descriptor, max_level, write_pyramid
from histoatlas.atlas.tiles import SHEET_COLS, mosaic_rows, write_thumbnails
from histoatlas.errors import ConfigError, EmptyDatasetError, HistoatlasError

log = logging.getLogger(__name__)

MOSAIC_FOLDER = "mosaic_files"


@dataclass(frozen=True)
class AtlasSettings:
    """What the atlas draws (config ``atlas:``).

    Every field changes the page's files, so each is a param of the ``build_atlas`` rule.

    Attributes
    ----------
    tile_px : int
        Pixels of each mosaic cell at full zoom (the tiles are read again at this size).
    max_points : int
        Points drawn in the UMAP scatter; a larger cohort is sampled.
    thumbnail_px : int
        Pixels of the hover thumbnails.
    max_thumbnails : int
        Points with a thumbnail (a seeded sample of the drawn points; 0: none).
    jpeg_quality : int
        Of pyramid tiles and thumbnail sheets.
    seed : int
        Of the samples and the drawing order.
    """

    tile_px: int = 224
    max_points: int = 1_000_000
    thumbnail_px: int = 64
    max_thumbnails: int = 20_000
    jpeg_quality: int = 85
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tile_px", "max_points", "thumbnail_px"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"atlas.{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.max_thumbnails) < 0:
            raise ConfigError(f"atlas.max_thumbnails must be >= 0, got {self.max_thumbnails!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ConfigError(f"atlas.jpeg_quality must lie in [1, 100], got {self.jpeg_quality!r}")


def build_atlas(
    out_dir: str | os.PathLike,
    *,
    points: pd.DataFrame,
    labels: Mapping[str, Any],
    slides: pd.DataFrame,
    mosaic: pd.DataFrame,
    mosaic_cols: int,
    saliency: pd.DataFrame | None = None,
    cohort: str = "",
    settings: AtlasSettings | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Write the interactive atlas of a cohort into ``out_dir`` (which must not exist).

    Parameters
    ----------
    out_dir : path
        The atlas folder; open ``out_dir/index.html``.
    points : DataFrame
        One row per tile, as ``coords.parquet`` (a SlideMap's ``data``): ``slide``,
        ``tile``, ``x``, ``y``, ``umap_x``, ``umap_y``, optional ``pred_<class>``.
    labels : mapping
        Label name -> values, shape (N,), in the order of ``points`` (see
        :func:`histoatlas.atlas.labels.cohort_labels`); the first is shown first.
    slides : DataFrame
        The dataset's ``slides.parquet`` (to read tiles back).
    mosaic : DataFrame
        ``mosaic.parquet`` of the same map: ``cell_i``, ``cell_j``, ``index`` (row of
        ``points``), ``slide``, ``x``, ``y``.
    mosaic_cols : int
        Its grid columns (and rows), ``mosaic.num_tiles_x``.
    saliency : DataFrame, optional
        ``maps.csv`` of the saliency maps (``slide``, ``x``, ``y``, ``class_name``,
        ``probability``, ``method``, ``png``, ``overlay``).
    cohort : str
        Shown as the page's title.
    settings : AtlasSettings, optional
    num_workers : int, optional
        Threads reading tiles.

    Returns
    -------
    dict
        Counts: ``n_points``, ``n_drawn``, ``n_cells``, ``n_pyramid_tiles``,
        ``n_thumbnails``, ``n_saliency``, ``bytes`` (of the data files).

    Raises
    ------
    EmptyDatasetError
        If there are no points.
    HistoatlasError
        If the mosaic or a label does not match the points (the message says which).
    """
    settings = settings or AtlasSettings()
    out = Path(out_dir)
    if out.exists():
        raise HistoatlasError(f"atlas folder {out} exists; remove it or choose another")
    points = _check_points(points)
    cells = _check_mosaic(mosaic, points, mosaic_cols)
    maps = _match_saliency(saliency, points)
    keep = np.concatenate([cells["index"].to_numpy(), maps["row"].to_numpy()])
    order = draw_order(len(points), settings.max_points, keep=keep, seed=settings.seed)
    (out / "data").mkdir(parents=True)
    meta, summary = _write_data(
        out, points, labels, slides, cells, maps, order, mosaic_cols, settings, num_workers
    )
    meta["cohort"] = str(cohort)
    summary["bytes"] += write_data_script(out / "data/meta.js", "meta", meta)
    copy_page(out)
    log.info("atlas: %s", to_json(summary))
    return summary


def _write_data(out, points, labels, slides, cells, maps, order, cols, settings, num_workers):
    """Every data file but meta.js, the pyramid, thumbnails, saliency: (meta, summary)."""
    point_of_row = np.full(len(points), -1, np.int64)
    point_of_row[order] = np.arange(len(order))
    # the map in the unit square and the slides in order of first appearance, for all files
    unit = unit_square(points[["umap_x", "umap_y"]].to_numpy(np.float64))
    slide_names = pd.unique(points["slide"])
    size = _write_points(out, unit, order)
    label_meta, label_bytes = _write_labels(out, labels, order, len(points))
    thumbs, thumb_of_point = _thumbnails(out, points, order, slides, settings, num_workers)
    size += label_bytes + _write_tiles(out, points, unit, slide_names, order, cols, thumb_of_point)
    cell_point = np.full(cols * cols, -1, np.int32)
    cell_point[cells["cell_j"] * cols + cells["cell_i"]] = point_of_row[cells["index"]]
    size += write_data_script(out / "data/mosaic.js", "mosaic", {"cells": cell_point})
    n_tiles = _write_mosaic(out, cells, slides, cols, settings, num_workers)
    saliency_meta = _copy_saliency(out, maps, point_of_row)
    meta = {
        "version": 1,
        "n_total": len(points),
        "n_drawn": len(order),
        "labels": label_meta,
        "slides": [str(s) for s in slide_names],
        "has_probability": bool(_pred_columns(points)),
        "mosaic": _mosaic_meta(cols, settings.tile_px),
        "thumbs": thumbs,
        "saliency": saliency_meta,
        "settings": asdict(settings),
    }
    summary = {
        "n_points": len(points),
        "n_drawn": len(order),
        "n_cells": len(cells),
        "n_pyramid_tiles": n_tiles,
        "n_thumbnails": thumbs["points"] if thumbs else 0,
        "n_saliency": len(saliency_meta),
        "bytes": size,
    }
    return meta, summary


def draw_order(n: int, max_points: int, *, keep: np.ndarray = (), seed: int = 0) -> np.ndarray:
    """Rows of the points to draw, in drawing order.

    All ``n`` rows when ``n <= max_points``; else ``keep`` plus a seeded sample of the
    others, ``max_points`` in all. Always a seeded random order.

    Returns
    -------
    ndarray, shape (min(n, max(max_points, len(unique keep))),), dtype int64

    Examples
    --------
    >>> sorted(draw_order(5, 3, keep=np.array([4]), seed=0).tolist()).count(4)
    1
    """
    rng = np.random.default_rng(seed)
    if n <= max_points:
        return rng.permutation(n)
    keep = np.unique(np.asarray(keep, dtype=np.int64))
    rest = np.setdiff1d(np.arange(n), keep, assume_unique=True)
    extra = rng.choice(rest, size=max(max_points - len(keep), 0), replace=False)
    return rng.permutation(np.concatenate([keep, extra]))


def _check_points(points: pd.DataFrame) -> pd.DataFrame:
    missing = {"slide", "tile", "x", "y", "umap_x", "umap_y"} - set(points.columns)
    if missing:
        raise HistoatlasError(
            f"atlas points lack column(s) {sorted(missing)}; pass coords.parquet joined with "
            "the dataset's tiles (SlideMap.load(coords, tiles=...).data)"
        )
    if len(points) == 0:
        raise EmptyDatasetError("atlas: the map has no points (the cohort has no tiles)")
    return points.reset_index(drop=True)


def _check_mosaic(mosaic: pd.DataFrame, points: pd.DataFrame, cols: int) -> pd.DataFrame:
    missing = {"cell_i", "cell_j", "index", "slide", "x", "y"} - set(mosaic.columns)
    if missing:
        raise HistoatlasError(f"mosaic.parquet lacks column(s) {sorted(missing)}")
    cells = mosaic.reset_index(drop=True)
    index = cells["index"].to_numpy()
    if len(cells) and (
        cells[["cell_i", "cell_j"]].to_numpy().max() >= cols
        or index.max() >= len(points)
        or (points["slide"].to_numpy()[index] != cells["slide"].to_numpy()).any()
        or (points["x"].to_numpy()[index] != cells["x"].to_numpy()).any()
        or (points["y"].to_numpy()[index] != cells["y"].to_numpy()).any()
    ):
        raise HistoatlasError(
            f"mosaic.parquet does not match the UMAP coordinates or a {cols}-column grid "
            "(made from another map or mosaic.num_tiles_x); rerun render_mosaic"
        )
    return cells


def _match_saliency(saliency: pd.DataFrame | None, points: pd.DataFrame) -> pd.DataFrame:
    columns = ["row", "slide", "x", "y", "class_name", "probability", "method", "png", "overlay"]
    if saliency is None or len(saliency) == 0:
        return pd.DataFrame(columns=columns).astype({"row": np.int64})
    keys = pd.MultiIndex.from_frame(points[["slide", "x", "y"]].astype({"slide": str}))
    wanted = pd.MultiIndex.from_frame(saliency[["slide", "x", "y"]].astype({"slide": str}))
    rows = keys.get_indexer(wanted) if keys.is_unique else np.full(len(saliency), -1)
    if (rows < 0).any():
        log.warning("atlas: %d saliency maps are of tiles not in the map", int((rows < 0).sum()))
    maps = saliency.assign(row=rows)[rows >= 0]
    return maps[columns].reset_index(drop=True)


def _pred_columns(points: pd.DataFrame) -> list[str]:
    return [c for c in points.columns if c.startswith("pred_") and c != "pred_label"]


def _write_points(out: Path, unit: np.ndarray, order: np.ndarray) -> int:
    xy = quantize_unit(unit[order])
    return write_data_script(out / "data/points.js", "points", {"xy": xy})


def _write_labels(out: Path, labels: Mapping[str, Any], order: np.ndarray, n: int):
    if not labels:
        raise HistoatlasError("atlas: no labels to colour by; give at least one (e.g. slide)")
    meta, size = [], 0
    for k, (name, values) in enumerate(labels.items()):
        if len(values) != n:
            raise HistoatlasError(f"atlas label {name!r}: {len(values)} values for {n} points")
        encoded = encode_label(str(name), values).take(order)
        file = f"data/label-{k}.js"
        size += write_data_script(out / file, f"label-{k}", {"codes": encoded.codes})
        meta.append({**encoded.meta(), "file": file})
    return meta, size


def _write_tiles(out, points, unit, slide_names, order, cols, thumb_of_point) -> int:
    drawn = points.iloc[order]
    # index into meta.slides (the slides in order of first appearance in the points)
    all_codes = pd.Categorical(drawn["slide"], categories=slide_names).codes
    i, j = grid_cells(unit, cols)
    cell = (j * cols + i)[order]
    payload = {
        "slide": all_codes.astype(smallest_uint(max(int(all_codes.max()), 0))),
        "tile": _uint(drawn["tile"]),
        "x": _uint(drawn["x"]),
        "y": _uint(drawn["y"]),
        "cell": cell.astype(smallest_uint(cols * cols)),
        "thumb": thumb_of_point,
    }
    preds = _pred_columns(points)
    if preds:
        best = drawn[preds].to_numpy(np.float64).max(axis=1)
        payload["prob"] = np.round(np.nan_to_num(best) * 100).astype(np.uint8)
    return write_data_script(out / "data/tiles.js", "tiles", payload)


def _uint(values: pd.Series) -> np.ndarray:
    values = values.to_numpy(np.int64)
    if len(values) and values.min() < 0:
        raise HistoatlasError(f"negative tile position or index {values.min()} in the points")
    return values.astype(smallest_uint(int(values.max()) if len(values) else 0))


def _thumbnails(out, points, order, slides, settings, num_workers):
    """Thumbnail sheets of a sample of the drawn points; per point its slot or none."""
    n = min(len(order), settings.max_thumbnails)
    rng = np.random.default_rng(settings.seed + 1)
    chosen = np.sort(rng.choice(len(order), size=n, replace=False)) if n else np.array([], int)
    slot = np.full(len(order), n, dtype=smallest_uint(n))  # n: no thumbnail
    slot[chosen] = np.arange(n)
    if not n:
        return None, slot
    refs = points.iloc[order[chosen]][["slide", "x", "y"]]
    with TileReader(slides, settings.thumbnail_px, num_workers=num_workers) as r:
        sheets = write_thumbnails(r, refs, out / "thumbs", quality=settings.jpeg_quality)
    meta = {"px": settings.thumbnail_px, "cols": SHEET_COLS, "sheets": sheets, "points": n}
    return meta, slot


def _write_mosaic(out, cells, slides, cols, settings, num_workers) -> int:
    size = cols * settings.tile_px
    with TileReader(slides, settings.tile_px, num_workers=num_workers) as reader:
        rows = mosaic_rows(reader, cells, cols, cols, (255, 255, 255))
        return write_pyramid(
            out / MOSAIC_FOLDER,
            rows,
            width=size,
            height=size,
            tile_size=settings.tile_px,
            quality=settings.jpeg_quality,
        )


def _mosaic_meta(cols: int, tile_px: int) -> dict[str, Any]:
    size = cols * tile_px
    return {
        "cols": cols,
        "rows": cols,
        "tile_px": tile_px,
        "top_level": max_level(size, size),
        "dzi": descriptor(f"{MOSAIC_FOLDER}/", size, size, tile_px),
    }


def _copy_saliency(out: Path, maps: pd.DataFrame, point_of_row: np.ndarray) -> list[dict]:
    entries = []
    for k, row in enumerate(maps.itertuples(index=False)):
        files = {}
        for kind in ("png", "overlay"):
            source = Path(str(getattr(row, kind)))
            if not source.is_file():
                raise HistoatlasError(
                    f"saliency map {source} listed in maps.csv does not exist; rerun saliency_maps"
                )
            files[kind] = f"saliency/{k}{'' if kind == 'png' else '_overlay'}.png"
            (out / "saliency").mkdir(exist_ok=True)
            shutil.copyfile(source, out / files[kind])
        entries.append(
            {
                "point": int(point_of_row[row.row]),
                "class_name": str(row.class_name),
                "probability": float(row.probability),
                "method": str(row.method),
                **files,
            }
        )
    return entries
