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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.map_data import COORDS_FILE, UMAP_FILE, map_points, read_map
from histoatlas.analysis.map_labels import MapLabels, apply_label, normalized_entropy
from histoatlas.analysis.mosaic import Mosaic
from histoatlas.analysis.plotting import plot_umap, save_figure, umap_figure
from histoatlas.analysis.umap_fit import FittedUMAP, fit_umap
from histoatlas.atomic import atomic_output
from histoatlas.errors import ConfigError, EmptyDatasetError, HistoatlasError

log = logging.getLogger(__name__)

KEY_COLUMNS = ("slide", "tile", "x", "y")
MAP_SLIDE = (None, "average", "centroid")


class SlideMap(MapLabels):
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
        _check_map_slide(map_slide)
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
        max_fit_tiles: int | None = None,
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
        max_tiles_per_slide, max_fit_tiles : int, optional
            Fit on at most this many tiles per slide, and in all (seeded); all are then
            projected.
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
        _check_map_slide(map_slide)
        if len(dataset.tiles) == 0:
            raise EmptyDatasetError(
                f"UMAP: the cohort has no tiles ({len(dataset.slides)} slides, every one "
                "without tissue after filtering); check the slides, or relax the tissue "
                "filters in config `tiles:`"
            )
        class_names = list(getattr(dataset, "class_names", ()) or ())
        data, features, groups = map_points(dataset, map_slide, class_names)
        if reference is not None:
            fitted = reference if isinstance(reference, FittedUMAP) else FittedUMAP.load(reference)
            coords = fitted.transform(features, chunk_size=chunk_size)
        else:
            fitted, coords = fit_umap(
                features,
                groups,
                max_tiles_per_slide=max_tiles_per_slide if map_slide is None else None,
                max_fit_tiles=max_fit_tiles,
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
        return cls(**read_map(path, dataset=dataset, tiles=tiles, slides=slides))

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

        return Mosaic.from_slidemap(self, **kwargs)


def _check_map_slide(map_slide) -> None:
    if map_slide not in MAP_SLIDE:
        raise ConfigError(f"map_slide must be None, 'average' or 'centroid', got {map_slide!r}")


__all__ = ["SlideMap", "apply_label", "normalized_entropy"]
