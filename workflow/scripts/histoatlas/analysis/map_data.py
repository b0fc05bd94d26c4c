"""The tables behind a :class:`~histoatlas.analysis.slidemap.SlideMap`: its points from a
dataset (tiles, slide means or slide centroids), prediction columns, and joining a saved map
back to its dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.errors import HistoatlasError

COORDS_FILE = "coords.parquet"
UMAP_FILE = "umap.joblib"


def map_points(dataset: Any, map_slide: str | None, class_names: list[str]):
    """``(data, features, groups)``: the points to map, their activations, and the slide of
    each (for the per-slide sample; None when there is one point per slide)."""
    tiles = with_pred_columns(dataset.tiles, dataset.predictions, class_names)
    if map_slide is None:
        return tiles.copy(), dataset.features, tiles["slide"].to_numpy()
    if map_slide == "average":
        data, features = slide_means(dataset, tiles)
        return data, features, None
    rows = centroid_rows(dataset)
    return tiles.iloc[rows].copy(), dataset.features[rows], None


def with_pred_columns(
    tiles: pd.DataFrame, predictions: np.ndarray | None, class_names: list[str]
) -> pd.DataFrame:
    """``tiles`` with ``pred_<class>`` and ``pred_label`` columns when predictions exist."""
    if predictions is None:
        return tiles
    names = class_names or [str(k) for k in range(predictions.shape[1])]
    columns = [f"pred_{c}" for c in names]
    if all(c in tiles.columns for c in columns):
        return tiles
    tiles = tiles.copy()
    for k, column in enumerate(columns):
        tiles[column] = predictions[:, k]
    labels = np.asarray(names, dtype=object)
    tiles["pred_label"] = labels[predictions.argmax(axis=1)] if len(tiles) else labels[:0]
    return tiles


def slide_means(dataset: Any, tiles: pd.DataFrame):
    """Per-slide table (slides with tiles) and mean activation, for ``map_slide="average"``."""
    groups = tiles.groupby("slide", sort=False).indices
    listed = [] if dataset.slides is None else list(dataset.slides["slide"])
    order = [s for s in listed if s in groups] + [s for s in groups if s not in set(listed)]
    means = np.stack([dataset.features[groups[s]].mean(axis=0) for s in order])
    table = pd.DataFrame({"slide": order})
    if dataset.slides is not None:
        table = table.merge(dataset.slides, on="slide", how="left")
    pred_columns = [c for c in tiles.columns if c.startswith("pred_") and c != "pred_label"]
    if pred_columns:
        values = tiles[pred_columns].to_numpy(np.float64)
        probs = np.stack([values[groups[s]].mean(axis=0) for s in order])
        for k, column in enumerate(pred_columns):
            table[column] = probs[:, k]
        names = np.asarray([c.removeprefix("pred_") for c in pred_columns], dtype=object)
        table["pred_label"] = names[probs.argmax(axis=1)]
    return table, means.astype(np.float32)


def centroid_rows(dataset: Any) -> np.ndarray:
    """Per slide, the row of the tile whose activation is nearest the slide's mean."""
    rows = []
    for indices in dataset.tiles.groupby("slide", sort=False).indices.values():
        feats = dataset.features[indices]
        rows.append(indices[np.argmin(((feats - feats.mean(axis=0)) ** 2).sum(axis=1))])
    return np.asarray(rows, dtype=np.int64)


def match_rows(
    coords: pd.DataFrame, table: pd.DataFrame, keys: list[str], source: Path
) -> np.ndarray:
    """Row of ``table`` for each row of ``coords`` (by ``keys``); every one must exist."""
    index = pd.MultiIndex.from_frame(table[keys])
    if not index.is_unique:
        raise HistoatlasError(f"the tiles table repeats ({', '.join(keys)}) keys")
    rows = index.get_indexer(pd.MultiIndex.from_frame(coords[keys]))
    if (rows < 0).any():
        first = coords.iloc[int(np.flatnonzero(rows < 0)[0])][keys].to_dict()
        raise HistoatlasError(
            f"{int((rows < 0).sum())} points of {source} are not in the dataset (first: "
            f"{first}); the map belongs to another dataset: rerun fit_umap"
        )
    return rows


def join_columns(coords: pd.DataFrame, table: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    extra = table.iloc[rows].reset_index(drop=True)
    extra = extra[[c for c in extra.columns if c not in coords.columns]]
    return pd.concat([coords.reset_index(drop=True), extra], axis=1)


def read_map(path, *, dataset: Any = None, tiles=None, slides=None) -> dict:
    """The parts of a saved map (``coords.parquet``, ``umap.joblib`` beside it), joined to a
    dataset or a tiles table; the keywords of :class:`SlideMap` (see ``SlideMap.load``)."""
    path = Path(path)
    folder = path.parent if path.suffix == ".parquet" else path
    coords_path = path if path.suffix == ".parquet" else path / COORDS_FILE
    if not coords_path.is_file():
        raise HistoatlasError(f"{coords_path} does not exist; run fit_umap first")
    coords = pd.read_parquet(coords_path)
    map_slide = coords.attrs.get("histoatlas", {}).get("map_slide")
    coords.attrs = {}
    umap_path = folder / UMAP_FILE
    umap = umap_path if umap_path.is_file() else None
    activations, class_names = None, []
    if dataset is not None:
        class_names = list(getattr(dataset, "class_names", ()) or ())
        tiles = with_pred_columns(dataset.tiles, dataset.predictions, class_names)
        slides = dataset.slides
    if map_slide == "average" and dataset is not None:
        table, means = slide_means(dataset, tiles)
        rows = match_rows(coords, table, ["slide"], coords_path)
        data = join_columns(coords, table, rows)
        activations = means[rows]
    elif tiles is not None and "tile" in coords.columns:
        rows = match_rows(coords, tiles, ["slide", "tile"], coords_path)
        data = join_columns(coords, tiles, rows)
        if dataset is not None:
            activations = dataset.features[rows]
    else:
        data = coords
    return {
        "data": data,
        "umap": umap,
        "slides": slides,
        "activations": activations,
        "class_names": class_names,
        "map_slide": map_slide,
    }
