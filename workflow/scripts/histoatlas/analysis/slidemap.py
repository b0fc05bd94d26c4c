"""``SlideMap``: a cohort's tiles (or slides) laid out by UMAP, with labels to colour by.

Mirrors slideflow's ``SlideMap``: build it from a dataset's activations
(:meth:`SlideMap.from_features`, which ``DatasetFeatures.map_activations`` calls), from
precomputed coordinates (:meth:`SlideMap.from_xy`) or from disk (:meth:`SlideMap.load`);
label it, plot it, cluster it, project new activations onto it and turn it into a
mosaic map. ``data`` holds one row per point: the tile keys and labels of the dataset
plus ``umap_x``/``umap_y`` in [0, 1] and, once labelled, ``label``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.umap_fit import FittedUMAP, fit_umap
from histoatlas.errors import ConfigError, EmptyDatasetError, HistoatlasError

log = logging.getLogger(__name__)

COORDS_FILE = "coords.parquet"
UMAP_FILE = "umap.joblib"
KEY_COLUMNS = ("slide", "tile", "x", "y")
MAP_SLIDE = (None, "average", "centroid")


class SlideMap:
    """A 2-D map of tiles or slides, with labels.

    Build one with :meth:`from_features`, :meth:`from_xy` or :meth:`load` rather than
    calling the constructor.

    Parameters
    ----------
    data : DataFrame
        One row per point with ``umap_x`` and ``umap_y``; tile maps also carry
        ``slide``, ``tile``, ``x``, ``y`` (level-0 top-left) and the dataset's label and
        ``pred_<class>`` columns.
    umap : FittedUMAP, path or None
        The fitted map (a ``umap.joblib`` path is loaded on first use).
    slides : DataFrame, optional
        The dataset's slide table (``path``, ``mpp``, ``tile_px``, ``tile_um``, ...), which
        mosaic maps need to read tiles.
    activations : ndarray, shape (N, F), optional
        Activations of the points, row for row (for :meth:`cluster`).
    class_names : sequence of str
        Classes of the ``pred_<class>`` columns.
    map_slide : {None, "average", "centroid"}
        ``None`` for a map of tiles; otherwise one point per slide.

    Attributes
    ----------
    data : DataFrame
    slides : DataFrame or None
    class_names : list of str
    map_slide : str or None
    label_name : str or None
        What ``data["label"]`` holds, once a ``label*`` method has run.

    Examples
    --------
    >>> dataset = DatasetFeatures.from_dataset("results/demo/dataset")  # doctest: +SKIP
    >>> sm = SlideMap.from_features(dataset, max_tiles_per_slide=500)  # doctest: +SKIP
    >>> sm.label("subtype").save_plot("umap_subtype.png")  # doctest: +SKIP
    >>> sm.generate_mosaic(num_tiles_x=30).save("mosaic.png")  # doctest: +SKIP
    """

    def __init__(
        self,
        data: pd.DataFrame,
        *,
        umap: FittedUMAP | str | os.PathLike | None = None,
        slides: pd.DataFrame | None = None,
        activations: np.ndarray | None = None,
        class_names: Sequence[str] = (),
        map_slide: str | None = None,
    ) -> None:
        missing = {"umap_x", "umap_y"} - set(data.columns)
        if missing:
            raise ValueError(f"data lacks column(s) {sorted(missing)}")
        if map_slide not in MAP_SLIDE:
            raise ConfigError(f"map_slide must be None, 'average' or 'centroid', got {map_slide!r}")
        if activations is not None and len(activations) != len(data):
            raise ValueError(f"{len(activations)} activation rows for {len(data)} points")
        self.data = data.reset_index(drop=True)
        self._umap = umap
        self.slides = slides
        self._activations = activations
        self.class_names = list(class_names)
        self.map_slide = map_slide
        self.label_name: str | None = None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        kind = "tiles" if self.map_slide is None else f"slides ({self.map_slide})"
        label = f", label={self.label_name!r}" if self.label_name else ""
        return f"SlideMap({len(self)} {kind}{label})"

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_features(
        cls,
        dataset: Any,
        *,
        map_slide: str | None = None,
        reference: FittedUMAP | str | os.PathLike | None = None,
        max_tiles_per_slide: int | None = None,
        pca_dim: int | None = None,
        random_state: int = 0,
        chunk_size: int = 50_000,
        **umap_kwargs: Any,
    ) -> SlideMap:
        """Fit UMAP on a dataset's activations (or project them onto a reference map).

        Parameters
        ----------
        dataset : DatasetFeatures
            Activations (``features``), ``tiles``, ``slides``, ``predictions`` and
            ``class_names``.
        map_slide : {None, "average", "centroid"}
            ``None`` maps every tile. ``"average"`` maps each slide's mean activation;
            ``"centroid"`` maps each slide's tile nearest (Euclidean) to that mean.
        reference : FittedUMAP or path, optional
            An existing map (``umap.joblib``) to project onto instead of fitting; the
            UMAP settings below are then ignored and the file is only read.
        max_tiles_per_slide : int, optional
            Fit on at most this many tiles per slide (seeded); all are then projected.
        pca_dim : int, optional
            PCA to this many dimensions before UMAP.
        random_state : int
            Seed of the sample, PCA and UMAP.
        chunk_size : int
            Rows per ``transform`` call.
        **umap_kwargs
            Passed to ``umap.UMAP`` (defaults ``n_neighbors=50, min_dist=0.1,
            metric="cosine"``, as slideflow's).

        Returns
        -------
        SlideMap

        Raises
        ------
        EmptyDatasetError
            If the dataset has no tiles (or too few to fit).
        """
        if map_slide not in MAP_SLIDE:
            raise ConfigError(f"map_slide must be None, 'average' or 'centroid', got {map_slide!r}")
        if len(dataset.tiles) == 0:
            raise EmptyDatasetError(
                f"UMAP: the cohort has no tiles ({len(dataset.slides)} slides, every one "
                "without tissue after filtering); check the slides, or relax the tissue "
                "filters in config `tiles:`"
            )
        class_names = list(getattr(dataset, "class_names", ()) or ())
        tiles = _with_pred_columns(dataset.tiles, dataset.predictions, class_names)
        if map_slide is None:
            data, features, groups = tiles.copy(), dataset.features, tiles["slide"].to_numpy()
        elif map_slide == "average":
            data, features = _slide_means(dataset, tiles)
            groups = None
        else:
            rows = _centroid_rows(dataset)
            data, features, groups = tiles.iloc[rows].copy(), dataset.features[rows], None

        if reference is not None:
            fitted = reference if isinstance(reference, FittedUMAP) else FittedUMAP.load(reference)
            coords = fitted.transform(features, chunk_size=chunk_size)
        else:
            fitted, coords = fit_umap(
                features,
                groups,
                max_tiles_per_slide=max_tiles_per_slide if map_slide is None else None,
                pca_dim=pca_dim,
                random_state=random_state,
                chunk_size=chunk_size,
                **umap_kwargs,
            )
        data["umap_x"], data["umap_y"] = coords[:, 0], coords[:, 1]
        return cls(
            data,
            umap=fitted,
            slides=getattr(dataset, "slides", None),
            activations=features,
            class_names=class_names,
            map_slide=map_slide,
        )

    @classmethod
    def from_xy(
        cls,
        x: Sequence[float] | np.ndarray,
        y: Sequence[float] | np.ndarray,
        *,
        tiles: pd.DataFrame | None = None,
        slides: pd.DataFrame | None = None,
        class_names: Sequence[str] = (),
    ) -> SlideMap:
        """A map from precomputed coordinates (no UMAP model: no ``umap_transform``).

        Parameters
        ----------
        x, y : array-like, shape (N,)
            Coordinates of each point (used as given).
        tiles : DataFrame, optional
            One row per point: ``slide``, ``tile``, ``x``, ``y`` and labels.
        slides : DataFrame, optional
            Slide table, for mosaic maps.
        class_names : sequence of str
            Classes of ``pred_<class>`` columns in ``tiles``.

        Returns
        -------
        SlideMap
        """
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
        data = pd.DataFrame(index=range(len(x))) if tiles is None else tiles.copy()
        if len(data) != len(x):
            raise ValueError(f"{len(data)} tiles rows for {len(x)} points")
        data = data.reset_index(drop=True)
        data["umap_x"], data["umap_y"] = x, y
        return cls(data, slides=slides, class_names=class_names)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        dataset: Any = None,
        tiles: pd.DataFrame | None = None,
        slides: pd.DataFrame | None = None,
    ) -> SlideMap:
        """Read a map written by :meth:`save` (``coords.parquet`` + ``umap.joblib``).

        Parameters
        ----------
        path : path
            The folder (or its ``coords.parquet``).
        dataset : DatasetFeatures, optional
            Joins the dataset's labels, predictions and activations to the points (by
            ``slide`` and ``tile``), enabling every ``label*`` method and ``cluster``.
        tiles : DataFrame, optional
            Without ``dataset``: a tiles table (e.g. ``tiles.parquet``) for labels.
        slides : DataFrame, optional
            Without ``dataset``: the slide table, for mosaic maps.

        Returns
        -------
        SlideMap
            The UMAP model is read lazily, on first use.
        """
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
            tiles = _with_pred_columns(dataset.tiles, dataset.predictions, class_names)
            slides = dataset.slides
        if map_slide == "average" and dataset is not None:
            table, means = _slide_means(dataset, tiles)
            rows = _match_rows(coords, table, ["slide"], coords_path)
            data = _join(coords, table, rows)
            activations = means[rows]
        elif tiles is not None and "tile" in coords.columns:
            rows = _match_rows(coords, tiles, ["slide", "tile"], coords_path)
            data = _join(coords, tiles, rows)
            if dataset is not None:
                activations = dataset.features[rows]
        else:
            data = coords
        return cls(
            data,
            umap=umap,
            slides=slides,
            activations=activations,
            class_names=class_names,
            map_slide=map_slide,
        )

    # -- model -----------------------------------------------------------------

    @property
    def umap(self) -> FittedUMAP | None:
        """The fitted map, or ``None`` for a map built from coordinates."""
        if isinstance(self._umap, (str, os.PathLike)):
            self._umap = FittedUMAP.load(self._umap)
        return self._umap

    @property
    def coords(self) -> np.ndarray:
        """``(N, 2)`` float64 layout (``umap_x``, ``umap_y``)."""
        return self.data[["umap_x", "umap_y"]].to_numpy(np.float64)

    def umap_transform(self, array: np.ndarray, *, chunk_size: int = 50_000) -> np.ndarray:
        """Project new activations onto this map.

        Parameters
        ----------
        array : ndarray, shape (N, F)
            Activations of the layers the map was fitted on.
        chunk_size : int
            Rows per ``transform`` call.

        Returns
        -------
        ndarray, shape (N, 2), dtype float32
            In the map's [0, 1] frame.

        Raises
        ------
        HistoatlasError
            If the map has no UMAP model (built with :meth:`from_xy`).
        """
        if self.umap is None:
            raise HistoatlasError(
                "this SlideMap has no fitted UMAP (built from coordinates, or loaded from a "
                "folder without umap.joblib); build it with SlideMap.from_features"
            )
        return self.umap.transform(array, chunk_size=chunk_size)

    # -- labels ----------------------------------------------------------------

    def _set_label(self, values: Any, name: str) -> SlideMap:
        self.data["label"] = pd.Series(values, index=self.data.index)
        self.label_name = name
        return self

    def label(self, column: str) -> SlideMap:
        """Label points by a column of ``data`` (a sheet label, ``slide``, ``pred_label``).

        Returns
        -------
        SlideMap
            ``self``, for chaining.

        Raises
        ------
        HistoatlasError
            If the column does not exist (the message lists those that do).
        """
        if column not in self.data.columns or column == "label":
            available = ", ".join(c for c in self.data.columns if c != "label")
            raise HistoatlasError(f"no column {column!r} to label the map by; have: {available}")
        return self._set_label(self.data[column].to_numpy(), column)

    def label_by_slide(self, labels: Mapping[str, Any], *, name: str = "label") -> SlideMap:
        """Label points by a ``{slide: label}`` mapping; slides not in it are missing.

        Returns
        -------
        SlideMap
            ``self``.
        """
        if "slide" not in self.data.columns:
            raise HistoatlasError("this map has no `slide` column to label by")
        return self._set_label(self.data["slide"].map(dict(labels)).to_numpy(), name)

    def label_by_preds(self, class_index: int | str) -> SlideMap:
        """Label points by the predicted probability of one class (continuous).

        Parameters
        ----------
        class_index : int or str
            Index into ``class_names`` (or the class name).

        Returns
        -------
        SlideMap
            ``self``.
        """
        columns = self._pred_columns()
        names = [c.removeprefix("pred_") for c in columns]
        if isinstance(class_index, str):
            if class_index not in names:
                raise HistoatlasError(f"no class {class_index!r}; classes: {', '.join(names)}")
            class_index = names.index(class_index)
        if not -len(columns) <= class_index < len(columns):
            raise HistoatlasError(
                f"class_index {class_index} out of range for {len(columns)} classes "
                f"({', '.join(names)})"
            )
        column = columns[class_index]
        return self._set_label(self.data[column].to_numpy(np.float64), f"p({names[class_index]})")

    def label_by_uncertainty(self) -> SlideMap:
        """Label points by prediction uncertainty (continuous, in [0, 1]).

        Uses an ``uncertainty`` column when the data has one; otherwise the normalised
        entropy of the predicted class probabilities, ``-sum(p log p) / log(C)``
        (0: one class certain, 1: all classes equally likely).

        Returns
        -------
        SlideMap
            ``self``.
        """
        if "uncertainty" in self.data.columns:
            return self._set_label(self.data["uncertainty"].to_numpy(np.float64), "uncertainty")
        probs = self.data[self._pred_columns()].to_numpy(np.float64)
        return self._set_label(normalized_entropy(probs), "uncertainty")

    def _pred_columns(self) -> list[str]:
        named = [f"pred_{c}" for c in self.class_names]
        if named and all(c in self.data.columns for c in named):
            return named
        found = [c for c in self.data.columns if c.startswith("pred_") and c != "pred_label"]
        if not found:
            raise HistoatlasError(
                "this map has no predictions (pred_<class> columns); extract with "
                "`features.include_preds: true`, or load the map with its dataset"
            )
        return found

    def cluster(self, n_clusters: int, *, seed: int = 0) -> np.ndarray:
        """K-means on the activations; labels the map by cluster (``data["cluster"]``).

        Parameters
        ----------
        n_clusters : int
            Number of clusters ``k``.
        seed : int
            Seed of k-means.

        Returns
        -------
        ndarray, shape (N,), dtype int64
            Cluster of each point, ``0 .. k-1``, numbered by size (0 is the largest).

        Raises
        ------
        HistoatlasError
            If the map carries no activations (load it with ``dataset=``).
        ConfigError
            If ``n_clusters`` is below 1 or above the number of points.
        """
        from sklearn.cluster import KMeans

        if self._activations is None:
            raise HistoatlasError(
                "clustering needs the activations: build the map with from_features, or "
                "SlideMap.load(folder, dataset=DatasetFeatures.from_dataset(...))"
            )
        if not 1 <= n_clusters <= len(self):
            raise ConfigError(
                f"n_clusters={n_clusters} must lie in [1, {len(self)}] (the number of points)"
            )
        raw = KMeans(n_clusters=n_clusters, random_state=seed, n_init="auto").fit_predict(
            self._activations
        )
        # renumber by size so the ids do not depend on k-means' arbitrary order
        counts = np.bincount(raw, minlength=n_clusters)
        rank = np.empty(n_clusters, dtype=np.int64)
        rank[np.lexsort((np.arange(n_clusters), -counts))] = np.arange(n_clusters)
        ids = rank[raw]
        self.data["cluster"] = ids
        self._set_label(ids, "cluster")
        return ids

    # -- output ----------------------------------------------------------------

    def plot(self, ax: Any = None, **kwargs: Any):
        """Scatter plot of the map coloured by the current label.

        Parameters
        ----------
        ax : matplotlib Axes, optional
        **kwargs
            Passed to :func:`histoatlas.analysis.plotting.plot_umap` (``title``, ``max_points``,
            ``seed``, ``s``, ``alpha``, ``cmap``, ``categorical``, scatter keywords).

        Returns
        -------
        matplotlib Axes
        """
        from histoatlas.analysis.plotting import plot_umap

        labels = self.data["label"] if self.label_name is not None else None
        kwargs.setdefault("label_name", self.label_name)
        return plot_umap(self.coords, labels, ax=ax, **kwargs)

    def save_plot(
        self,
        path: str | os.PathLike,
        *,
        figsize: tuple[float, float] = (10, 8),
        dpi: int = 100,
        **kwargs: Any,
    ) -> None:
        """Write :meth:`plot` to an image file of ``figsize * dpi`` pixels, atomically."""
        from histoatlas.analysis.plotting import save_figure, umap_figure

        labels = self.data["label"] if self.label_name is not None else None
        kwargs.setdefault("label_name", self.label_name)
        save_figure(umap_figure(self.coords, labels, figsize=figsize, dpi=dpi, **kwargs), path)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``coords.parquet`` and (when fitted) ``umap.joblib`` into a folder.

        Parameters
        ----------
        path : path
            Folder, created if missing.
        """
        folder = Path(path)
        self.save_coords(folder / COORDS_FILE)
        if self._umap is not None:
            self.save_umap(folder / UMAP_FILE)

    def save_coords(self, path: str | os.PathLike) -> None:
        """Write the tile keys (``slide``, ``tile``, ``x``, ``y``) and ``umap_x``, ``umap_y``.

        Parquet, atomically; the map kind (``map_slide``) rides in its metadata.
        """
        from histoatlas.atomic import atomic_output

        columns = [c for c in KEY_COLUMNS if c in self.data.columns] + ["umap_x", "umap_y"]
        coords = self.data[columns].copy()
        coords.attrs = {"histoatlas": {"map_slide": self.map_slide}}
        with atomic_output(path) as tmp:
            coords.to_parquet(tmp, index=False)

    def save_umap(self, path: str | os.PathLike) -> None:
        """Write the UMAP model (a byte copy when it was read from a file).

        Raises
        ------
        HistoatlasError
            If the map has no UMAP model.
        """
        import shutil

        from histoatlas.atomic import atomic_output

        if isinstance(self._umap, (str, os.PathLike)):
            source = Path(self._umap)
            if not (Path(path).exists() and source.samefile(path)):
                with atomic_output(path) as tmp:
                    shutil.copyfile(source, tmp)
        elif self._umap is not None:
            self._umap.save(path)
        else:
            raise HistoatlasError("this SlideMap has no UMAP model to save (built from x/y)")

    def generate_mosaic(self, **kwargs: Any):
        """A mosaic map of this map's tiles; see :meth:`histoatlas.Mosaic.from_slidemap`."""
        from histoatlas.analysis.mosaic import Mosaic

        return Mosaic.from_slidemap(self, **kwargs)


def apply_label(slide_map: SlideMap, label: str, *, n_clusters: int = 8, seed: int = 0) -> SlideMap:
    """Label a map by a built-in label or a column, as the workflow's plots do.

    Parameters
    ----------
    slide_map : SlideMap
    label : str
        ``"slide"``; ``"prediction"`` (the predicted class, ``pred_label``);
        ``"uncertainty"`` (:meth:`SlideMap.label_by_uncertainty`); ``"cluster"``
        (:meth:`SlideMap.cluster` with ``n_clusters`` and ``seed``); or any column of
        ``slide_map.data`` (a sheet label).
    n_clusters, seed : int
        For ``"cluster"``.

    Returns
    -------
    SlideMap
        ``slide_map``, labelled.
    """
    if label == "prediction":
        if "pred_label" not in slide_map.data.columns:
            raise HistoatlasError(
                "label 'prediction' needs predictions (pred_label); extract with "
                "`features.include_preds: true`, or drop it from the plots"
            )
        slide_map.label("pred_label")
        slide_map.label_name = "prediction"
    elif label == "uncertainty":
        slide_map.label_by_uncertainty()
    elif label == "cluster":
        slide_map.cluster(n_clusters, seed=seed)
    else:
        slide_map.label(label)
    return slide_map


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of class probabilities divided by ``log(C)``, in [0, 1].

    Parameters
    ----------
    probs : ndarray, shape (N, C)
        Class probabilities (e.g. softmax outputs); each row is renormalised to sum
        to 1, negative values count as 0.

    Returns
    -------
    ndarray, shape (N,), dtype float64
        0 for a one-hot row; 1 for a uniform row; 0 when ``C == 1``.
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0, None)
    n, c = probs.shape
    if c < 2:
        return np.zeros(n)
    total = probs.sum(axis=1, keepdims=True)
    p = np.divide(probs, total, out=np.full_like(probs, 1.0 / c), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.clip(-terms.sum(axis=1) / np.log(c), 0.0, 1.0)


def _with_pred_columns(
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


def _slide_means(dataset: Any, tiles: pd.DataFrame):
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


def _centroid_rows(dataset: Any) -> np.ndarray:
    """Per slide, the row of the tile whose activation is nearest the slide's mean."""
    rows = []
    for indices in dataset.tiles.groupby("slide", sort=False).indices.values():
        feats = dataset.features[indices]
        rows.append(indices[np.argmin(((feats - feats.mean(axis=0)) ** 2).sum(axis=1))])
    return np.asarray(rows, dtype=np.int64)


def _match_rows(
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


def _join(coords: pd.DataFrame, table: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    extra = table.iloc[rows].reset_index(drop=True)
    extra = extra[[c for c in extra.columns if c not in coords.columns]]
    return pd.concat([coords.reset_index(drop=True), extra], axis=1)
