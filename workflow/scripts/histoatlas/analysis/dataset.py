"""The cohort's dataset table in memory: :class:`DatasetFeatures`.

``merge_dataset`` writes ``tiles.parquet`` (one row per tile), ``slides.parquet`` (one
row per slide) and ``features.h5``, whose ``features`` is an HDF5 virtual dataset over
the per-slide files (no copy of the activations) and whose ``slide_features`` holds
each slide's mean activation. ``DatasetFeatures`` is the in-memory view that the
UMAP, mosaic and saliency steps (and users) work with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histoatlas.analysis.merge import TILE_KEYS, class_names_of, merge_dataset, tile_keys
from histoatlas.analysis.slidemap import SlideMap
from histoatlas.atomic import atomic_output, is_partial
from histoatlas.errors import EmptyDatasetError, HistoatlasError
from histoatlas.io.slide_h5 import read_slide_h5


class DatasetFeatures:
    """Activations, predictions and locations of every tile of a cohort.

    Mirrors slideflow's ``DatasetFeatures``: ``activations``, ``predictions`` and
    ``locations`` are dicts keyed by slide; ``features`` is the ``(N, F)`` array in the
    order of ``tiles``.

    Parameters
    ----------
    tiles : DataFrame
        One row per tile: ``slide``, ``tile``, ``x``, ``y``, ``grid_i``, ``grid_j``, label
        columns, ``pred_<class>`` columns and ``pred_label``.
    features : ndarray, shape (N, F), dtype float32
        Activations, rows in the order of ``tiles``.
    slides : DataFrame, optional
        One row per slide: ``slide``, ``path``, ``mpp``, ``tile_px``, ``tile_um``,
        ``patch_size_level0``, ``n_tiles``, labels. Derived from ``tiles`` when omitted.
    predictions : ndarray, shape (N, C), optional
        Model outputs; taken from the ``pred_<class>`` columns when omitted.
    class_names : sequence of str
        One per prediction column.

    Examples
    --------
    >>> df = DatasetFeatures.from_dataset("results/demo/dataset")  # doctest: +SKIP
    >>> df.activations["demo-1"].shape  # doctest: +SKIP
    (143, 64)
    >>> slide_map = df.map_activations(n_neighbors=15)  # doctest: +SKIP
    """

    def __init__(
        self,
        tiles: pd.DataFrame,
        features: np.ndarray,
        *,
        slides: pd.DataFrame | None = None,
        predictions: np.ndarray | None = None,
        class_names: Sequence[str] = (),
    ) -> None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) != len(tiles):
            raise ValueError(
                f"features must be (N, F) with N = {len(tiles)} tiles, got {features.shape}"
            )
        self.tiles = tiles.reset_index(drop=True)
        self.features = features
        self.class_names = list(class_names)
        if predictions is None and self.class_names:
            columns = [f"pred_{c}" for c in self.class_names]
            if all(c in tiles.columns for c in columns):
                predictions = tiles[columns].to_numpy(np.float32)
        self.predictions = None if predictions is None else np.asarray(predictions, np.float32)
        if slides is None:
            counts = self.tiles.groupby("slide", sort=False).size()
            slides = pd.DataFrame({"slide": counts.index, "n_tiles": counts.to_numpy()})
        self.slides = slides.reset_index(drop=True)

    def __repr__(self) -> str:
        return (
            f"DatasetFeatures({len(self.slides)} slides, {len(self.tiles)} tiles, "
            f"{self.num_features} features, classes={self.class_names})"
        )

    @property
    def num_features(self) -> int:
        """Width ``F`` of the activations."""
        return self.features.shape[1]

    @property
    def slide_names(self) -> list[str]:
        """Slide ids in dataset order."""
        return self.slides["slide"].tolist()

    def _rows_by_slide(self) -> dict[str, np.ndarray]:
        groups = self.tiles.groupby("slide", sort=False).indices
        return {s: groups.get(s, np.empty(0, dtype=np.int64)) for s in self.slide_names}

    @property
    def activations(self) -> dict[str, np.ndarray]:
        """``(n_tiles, F)`` activations per slide."""
        return {s: self.features[rows] for s, rows in self._rows_by_slide().items()}

    @property
    def predictions_by_slide(self) -> dict[str, np.ndarray]:
        """``(n_tiles, C)`` predictions per slide (empty dict without predictions)."""
        if self.predictions is None:
            return {}
        return {s: self.predictions[rows] for s, rows in self._rows_by_slide().items()}

    @property
    def locations(self) -> dict[str, np.ndarray]:
        """``(n_tiles, 2)`` level-0 (x, y) of each tile's top-left corner, per slide."""
        xy = self.tiles[["x", "y"]].to_numpy(np.int64)
        return {s: xy[rows] for s, rows in self._rows_by_slide().items()}

    def require_tiles(self, what: str) -> None:
        """Raise EmptyDatasetError, naming ``what`` needed them, if there are no tiles."""
        if len(self.tiles) == 0:
            raise EmptyDatasetError(
                f"{what}: the cohort has no tiles ({len(self.slides)} slides, every one without "
                "tissue after filtering); check the slides, or relax the tissue filters in "
                "config `tiles:`"
            )

    @classmethod
    def from_dataset(cls, dataset_dir: str | os.PathLike) -> DatasetFeatures:
        """Load the merged dataset written by ``merge_dataset`` (the ``dataset/`` folder)."""
        dataset_dir = Path(dataset_dir)
        return cls.from_files(
            tiles=dataset_dir / "tiles.parquet",
            slides=dataset_dir / "slides.parquet",
            features=dataset_dir / "features.h5",
        )

    @classmethod
    def from_files(
        cls,
        *,
        tiles: str | os.PathLike,
        slides: str | os.PathLike,
        features: str | os.PathLike,
    ) -> DatasetFeatures:
        """Load the dataset from its three files (``tiles.parquet``, ``slides.parquet``,
        ``features.h5``), wherever they are."""
        import h5py

        tiles_df = pd.read_parquet(tiles)
        slides_df = pd.read_parquet(slides)
        with h5py.File(features, "r") as f:
            array = f["features"][()]
            class_names = json.loads(f.attrs["class_names"]) or []
        if np.isnan(array).any():
            raise HistoatlasError(
                f"{features} reads NaN rows: a per-slide file it points to has moved or "
                "changed; rerun merge_dataset"
            )
        return cls(tiles_df, array, slides=slides_df, class_names=class_names)

    @classmethod
    def from_h5_dir(
        cls, folder: str | os.PathLike, slides: Sequence[str] | None = None
    ) -> DatasetFeatures:
        """Build from a folder of per-slide ``{slide}.h5`` files (no sheet, no labels).

        Parameters
        ----------
        folder : path
            Folder holding the per-slide files (e.g. ``results/features/demo``).
        slides : sequence of str, optional
            Which slides, in this order; default all ``*.h5`` files, sorted.
        """

        folder = Path(folder)
        if slides is not None:
            names = list(slides)
        else:  # not the temporary files of a job still writing, or of a killed one
            names = sorted(p.stem for p in folder.glob("*.h5") if not is_partial(p))
        if not names:
            raise EmptyDatasetError(f"{folder} holds no per-slide .h5 files")
        tiles, features, predictions, rows = [], [], [], []
        class_names: list[str] = []
        for name in names:
            sf = read_slide_h5(folder / f"{name}.h5")
            n = len(sf.coords)
            tiles.append(tile_keys(name, sf))
            features.append(sf.features)
            if sf.predictions is not None:
                predictions.append(sf.predictions)
                class_names = class_names_of(sf.attrs, sf.predictions.shape[1])
            rows.append({"slide": name, **{k: sf.attrs.get(k) for k in _H5_GEOMETRY}, "n_tiles": n})
        slides_df = pd.DataFrame(rows).rename(columns={"slide_path": "path"})
        return cls(
            pd.concat(tiles, ignore_index=True),
            np.concatenate(features),
            slides=slides_df,
            predictions=np.concatenate(predictions) if len(predictions) == len(names) else None,
            class_names=class_names,
        )

    def map_activations(self, **kwargs):
        """Fit UMAP on the activations; see :meth:`histoatlas.SlideMap.from_features`."""

        return SlideMap.from_features(self, **kwargs)

    def to_df(self) -> pd.DataFrame:
        """Tiles table with an ``activations`` column (one ``(F,)`` array per tile)."""
        df = self.tiles.copy()
        df["activations"] = list(self.features)
        return df

    def to_torch(self, outdir: str | os.PathLike) -> list[Path]:
        """Write ``{slide}.pt`` (float32 tensor ``(n, F)``) and ``{slide}.index.npz``.

        The index holds ``coords`` ``(n, 2)`` int64, as MIL training code expects.

        Returns
        -------
        list of Path
            The ``.pt`` files written, one per slide.
        """
        import torch

        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        written = []
        locations = self.locations
        for slide, feats in self.activations.items():
            pt = outdir / f"{slide}.pt"
            with atomic_output(pt) as tmp:
                torch.save(torch.from_numpy(np.ascontiguousarray(feats)), tmp)
            with atomic_output(outdir / f"{slide}.index.npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, coords=locations[slide])
            written.append(pt)
        return written


_H5_GEOMETRY = ["slide_path", "mpp", "tile_px", "tile_um", "patch_size_level0"]

__all__ = ["DatasetFeatures", "TILE_KEYS", "merge_dataset"]
