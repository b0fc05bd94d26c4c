"""The cohort's labelled UMAP plots, read in row batches (the plot rule's work).

``coords.parquet`` and ``tiles.parquet`` are read side by side in aligned batches (both hold
one row per tile in dataset order; their keys are checked), each label resolved as
:func:`~histoatlas.analysis.map_labels.apply_label` resolves it, and the points rasterised
(:mod:`histoatlas.analysis.raster`). One pass finds the label's categories or range and the
layout's extent, a second draws. ``cluster`` assigns every tile to a k-means fitted on at
most :data:`CLUSTER_FIT_ROWS` tiles (all of them in a smaller cohort, as the one-job path
does), reading the activations in row chunks. Memory holds a batch, the picture and, for
``cluster``, the fitting sample: it does not grow with the cohort.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.map_labels import normalized_entropy
from histoatlas.analysis.plotting import (
    MAX_INT_CATEGORIES,
    UNIT_LIMITS,
    category_order,
    qualitative_colours,
    save_figure,
)
from histoatlas.analysis.raster import (
    RasterScatter,
    axes_pixels,
    categorical_legend,
    continuous_legend,
    marker_style,
    raster_figure,
)
from histoatlas.errors import ConfigError, HistoatlasError
from histoatlas.io.slide_rows import VirtualFeatures, chunk_rows
from histoatlas.io.table_rows import iter_batches

BATCH_ROWS = 1 << 16  # rows read at a time: a few MB, whatever the cohort
# k-means is fitted on at most this many tiles, and this many bytes of their activations (a
# seeded sample), then assigns every tile
CLUSTER_FIT_ROWS = 100_000
CLUSTER_FIT_BYTES = 128 * 2**20
KEYS = ["slide", "tile"]


def plot_label(
    coords_path: str | os.PathLike,
    tiles_path: str | os.PathLike,
    png_path: str | os.PathLike,
    label: str,
    *,
    features_path: str | os.PathLike | None = None,
    n_clusters: int = 8,
    seed: int = 0,
    title: str | None = None,
    figsize: tuple[float, float] = (10, 8),
    dpi: int = 100,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Draw the map coloured by one label into ``png_path``; returns the points drawn.

    Parameters
    ----------
    coords_path, tiles_path : path
        ``coords.parquet`` and the dataset's ``tiles.parquet``, rows in the same order.
    png_path : path
        The picture (``figsize * dpi`` pixels).
    label : str
        ``slide``, ``prediction``, ``uncertainty``, ``cluster`` or a column of the tiles
        table (a sheet label).
    features_path : path, optional
        The dataset's ``features.h5`` (for ``cluster``).
    n_clusters, seed : int
        k-means' k and seed (``cluster``); the seed also orders the points' priorities.
    title : str, optional
        First line of the title.
    batch_rows : int
        Rows read at a time.

    Raises
    ------
    HistoatlasError
        If the label's column (or predictions, or activations) is missing, or the two
        tables disagree on their rows.
    """
    coords, tiles = _Table(coords_path), _Table(tiles_path)
    source = _source(label, coords, tiles, features_path, n_clusters, seed, batch_rows)
    with source:
        scan = _scan(coords, tiles, source, batch_rows)
        fig, ax, side = axes_pixels(figsize, dpi)
        radius, alpha = marker_style(scan.n, dpi)
        raster = RasterScatter(side, side, scan.limits(), radius=radius, seed=seed)
        colour, legend = scan.styling(source.name)
        for _, xy, values in _pieces(coords, tiles, source, batch_rows):
            raster.add(xy, scan.encode(values))
        raster_figure(
            raster,
            fig,
            ax,
            colour=colour,
            alpha=alpha,
            legend=legend,
            label_name=source.name,
            title=title,
            unit=scan.unit,
        )
        save_figure(fig, png_path)
    return raster.seen


class _Table:
    """A Parquet table's path, schema and length (its rows are read by ``iter_batches``)."""

    def __init__(self, path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        meta = pq.ParquetFile(path)
        self.schema_arrow, self.num_rows = meta.schema_arrow, meta.metadata.num_rows


# -- labels -----------------------------------------------------------------------------


@dataclass
class _Source:
    """How to read one label: its name, the tiles columns it needs, and its values."""

    name: str
    columns: list[str]
    values: Any  # (tiles piece, first row) -> Series
    float_kind: bool = False
    _tmp: Any = None

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _source(label, coords, tiles, features_path, n_clusters, seed, batch_rows) -> _Source:
    names = tiles.schema_arrow.names
    preds = [c for c in names if c.startswith("pred_") and c != "pred_label"]
    if label == "prediction":
        if "pred_label" not in names:
            raise HistoatlasError(
                "label 'prediction' needs predictions (pred_label); extract with "
                "`features.include_preds: true`, or drop it from the plots"
            )
        return _Source("prediction", ["pred_label"], lambda t, _: t["pred_label"].to_pandas())
    if label == "uncertainty":
        if "uncertainty" in names:
            return _Source("uncertainty", ["uncertainty"], _floats("uncertainty"), True)
        if not preds:
            raise HistoatlasError(
                "this map has no predictions (pred_<class> columns); extract with "
                "`features.include_preds: true`, or load the map with its dataset"
            )
        return _Source("uncertainty", preds, _entropy(preds), True)
    if label == "cluster":
        return _cluster_source(features_path, coords.num_rows, n_clusters, seed, batch_rows)
    if label not in names or label == "label":
        available = ", ".join(dict.fromkeys(coords.schema_arrow.names + names))
        raise HistoatlasError(f"no column {label!r} to label the map by; have: {available}")
    return _Source(label, [label], lambda t, _: t[label].to_pandas())


def _floats(column):
    return lambda t, _: t[column].to_pandas().astype(np.float64)


def _entropy(preds):
    def values(t, _):
        probs = np.stack([t[c].to_numpy(zero_copy_only=False) for c in preds], axis=1)
        return pd.Series(normalized_entropy(probs))

    return values


def _cluster_source(features_path, n, n_clusters, seed, batch_rows) -> _Source:
    tmp = tempfile.TemporaryDirectory(prefix="histoatlas-clusters-")
    ids = np.lib.format.open_memmap(
        os.path.join(tmp.name, "ids.npy"), mode="w+", dtype=np.int32, shape=(n,)
    )
    try:
        cluster_ids(features_path, n_clusters, seed=seed, out=ids, batch_rows=batch_rows)
    except BaseException:
        tmp.cleanup()
        raise
    source = _Source("cluster", [], lambda t, start: pd.Series(ids[start : start + len(t)]))
    source._tmp = tmp
    return source


def cluster_ids(
    features_path: str | os.PathLike | None,
    n_clusters: int,
    *,
    seed: int = 0,
    out: np.ndarray | None = None,
    batch_rows: int = BATCH_ROWS,
) -> np.ndarray:
    """k-means cluster of every row of a dataset's ``features.h5``, numbered by size.

    Fitted on every row up to :data:`CLUSTER_FIT_ROWS` rows and :data:`CLUSTER_FIT_BYTES`
    (then equal to :meth:`SlideMap.cluster <histoatlas.analysis.map_labels.MapLabels.cluster>`),
    else on a seeded sample of that many; rows are then assigned in chunks.

    Parameters
    ----------
    features_path : path
        ``features.h5`` (its ``features`` dataset, rows in dataset order).
    n_clusters : int
        k.
    seed : int
        Seed of the sample and of k-means.
    out : ndarray of int, shape (N,), optional
        Where to write the ids (e.g. a memory-mapped file).

    Returns
    -------
    ndarray, shape (N,)
        0 is the largest cluster.
    """
    from sklearn.cluster import KMeans

    if features_path is None:
        raise HistoatlasError("clustering needs the activations (the dataset's features.h5)")
    data = VirtualFeatures.open(features_path)
    n, width = data.n_rows, data.width
    if not 1 <= n_clusters <= n:
        raise ConfigError(f"n_clusters={n_clusters} must lie in [1, {n}] (the number of points)")
    ids = np.empty(n, dtype=np.int32) if out is None else out
    cap = min(CLUSTER_FIT_ROWS, max(n_clusters, chunk_rows(width, chunk_bytes=CLUSTER_FIT_BYTES)))
    rows = np.arange(n)
    if n > cap:
        rows = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
    sample = data.read_rows(rows)  # one slide file open at a time
    model = KMeans(n_clusters=n_clusters, random_state=seed, n_init="auto")
    model.fit(_checked(sample, features_path))
    del sample
    step = min(batch_rows, chunk_rows(width))
    for start, block in data.iter_chunks(rows=step):
        ids[start : start + len(block)] = model.predict(_checked(block, features_path))
    # renumber by size so the ids do not depend on k-means' arbitrary order
    counts = np.bincount(ids, minlength=n_clusters)
    rank = np.empty(n_clusters, dtype=np.int64)
    rank[np.lexsort((np.arange(n_clusters), -counts))] = np.arange(n_clusters)
    for start in range(0, n, batch_rows):
        ids[start : start + batch_rows] = rank[ids[start : start + batch_rows]]
    return ids


def _checked(block: np.ndarray, features_path) -> np.ndarray:
    block = np.asarray(block, dtype=np.float32)
    if np.isnan(block).any():
        raise HistoatlasError(
            f"{features_path} reads NaN rows: a per-slide file it points to has moved or "
            "changed; rerun merge_dataset"
        )
    return block


# -- reading ----------------------------------------------------------------------------


def _pieces(coords, tiles, source: _Source, batch_rows: int):
    """``(first_row, xy, values)`` of aligned pieces of the two tables, keys checked."""
    left = iter_batches(coords.path, columns=[*KEYS, "umap_x", "umap_y"], batch_rows=batch_rows)
    right = iter_batches(
        tiles.path, columns=list(dict.fromkeys(KEYS + source.columns)), batch_rows=batch_rows
    )
    a = b = None
    start = 0
    while True:
        a = a if a is not None and len(a) else next(left, None)
        b = b if b is not None and len(b) else next(right, None)
        if a is None or b is None:
            if a is not None or b is not None:
                raise HistoatlasError(
                    "coords.parquet and tiles.parquet differ in length; rerun the UMAP"
                )
            return
        k = min(len(a), len(b))
        pa_, pb = a.slice(0, k), b.slice(0, k)
        if not (pa_["tile"].equals(pb["tile"]) and pa_["slide"].equals(pb["slide"])):
            raise HistoatlasError(
                f"coords.parquet and tiles.parquet disagree on the tiles of rows {start}-"
                f"{start + k}: the map belongs to another dataset; rerun the UMAP"
            )
        xy = np.stack(
            [
                pa_[c].to_numpy(zero_copy_only=False).astype(np.float64)
                for c in ("umap_x", "umap_y")
            ],
            axis=1,
        )
        yield start, xy, source.values(pb, start)
        a, b, start = a.slice(k), b.slice(k), start + k


@dataclass
class _Scan:
    """What a pass over the label and the layout found."""

    n: int = 0
    lo: np.ndarray = field(default_factory=lambda: np.full(2, np.inf))
    hi: np.ndarray = field(default_factory=lambda: np.full(2, -np.inf))
    uniques: set = field(default_factory=set)
    missing: bool = False
    integer: bool = True
    numeric: bool = True
    vmin: float = np.inf
    vmax: float = -np.inf
    categorical: bool = True
    order: list = field(default_factory=list)

    @property
    def unit(self) -> bool:
        return self.n > 0 and self.lo.min() >= 0 and self.hi.max() <= 1

    def limits(self) -> tuple[float, float, float, float]:
        if self.unit or not np.isfinite(self.lo).all():
            return (*UNIT_LIMITS, *UNIT_LIMITS)
        centre, half = (self.lo + self.hi) / 2, max((self.hi - self.lo).max(), 1e-9) * 0.55
        return (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)

    def encode(self, values: pd.Series) -> np.ndarray:
        """Category codes (NaN for missing), or the values themselves."""
        if self.categorical:
            codes = pd.Categorical(values, categories=self.order).codes.astype(np.float64)
            return np.where(codes < 0, np.nan, codes)
        return pd.to_numeric(values, errors="raise").to_numpy(np.float64)

    def styling(self, name: str):
        """``(colour, legend)``: values to RGBA rows, and the legend or colour bar."""
        if self.categorical:
            colours = np.asarray(qualitative_colours(len(self.order))).reshape(-1, 4)
            return (
                lambda codes: colours[codes.astype(np.int64)],
                categorical_legend(self.order, colours, self.missing, name),
            )
        from matplotlib import colormaps
        from matplotlib.colors import Normalize

        norm, cmap = Normalize(self.vmin, self.vmax), colormaps["viridis"]
        return (lambda v: cmap(norm(v))), continuous_legend("viridis", self.vmin, self.vmax, name)


def _scan(coords, tiles, source: _Source, batch_rows: int) -> _Scan:
    """One pass: the layout's extent, and the label's kind, categories or range, decided as
    :func:`~histoatlas.analysis.plotting.is_categorical` decides on the whole column."""
    scan = _Scan()
    for _, xy, values in _pieces(coords, tiles, source, batch_rows):
        scan.n += len(xy)
        finite = xy[np.isfinite(xy).all(axis=1)]
        if len(finite):
            scan.lo, scan.hi = (
                np.minimum(scan.lo, finite.min(0)),
                np.maximum(scan.hi, finite.max(0)),
            )
        present = values.dropna()
        scan.missing |= len(present) < len(values)
        scan.numeric &= pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
            values
        )
        scan.integer &= pd.api.types.is_integer_dtype(values)
        if scan.numeric and len(present):
            scan.vmin = min(scan.vmin, float(present.min()))
            scan.vmax = max(scan.vmax, float(present.max()))
        # every category of a text label; an integer one only until it is too many
        if not scan.numeric or (scan.integer and len(scan.uniques) <= MAX_INT_CATEGORIES):
            scan.uniques.update(pd.unique(present))
    if source.float_kind or (scan.numeric and not scan.integer) or (scan.integer and scan.missing):
        scan.categorical = False
    elif scan.integer and scan.numeric:
        scan.categorical = len(scan.uniques) <= MAX_INT_CATEGORIES
    if scan.categorical:
        scan.order = category_order(pd.Series(list(scan.uniques), dtype=object))
    return scan
