"""A fitted UMAP and the scaling of its layout to [0, 1]: :class:`FittedUMAP`, saved as one
``umap.joblib``.

:func:`histoatlas.analysis.umap_fit.fit_umap` (one job) and the cohort's ``fit_umap`` /
``gather_umap`` rules (:mod:`histoatlas.analysis.umap_cohort`) make them; ``umap.reference``
projects a new cohort onto a saved one.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoatlas import __version__
from histoatlas.analysis.umap_layout import check_features
from histoatlas.atomic import atomic_output
from histoatlas.errors import HistoatlasError
from histoatlas.runtime import import_umap

FORMAT = "histoatlas.umap"
FORMAT_VERSION = 1


@dataclass
class FittedUMAP:
    """A fitted UMAP (with optional PCA) and the scaling of its layout to [0, 1].

    Attributes
    ----------
    umap : umap.UMAP
        The fitted model.
    pca : sklearn.decomposition.PCA or None
        Applied to the activations before ``umap``.
    clip_min, clip_max : ndarray, shape (2,), or None
        Raw UMAP coordinates are clipped to this box (1st-99th percentile plus margin).
        None until the layout of every tile is known (:meth:`set_frame`).
    frame_min, frame_max : ndarray, shape (2,), or None
        The clipped box is mapped linearly from this frame onto [0, 1].
    n_features : int
        Width ``F`` of the activations the model expects.
    params : dict
        Settings of the fit (UMAP keywords, ``pca_dim``, ``max_tiles_per_slide``,
        ``n_fit``), for provenance.
    source : Path or None
        The file it was loaded from; :meth:`save` then copies that file byte for byte.
    """

    umap: Any
    pca: Any
    clip_min: np.ndarray | None
    clip_max: np.ndarray | None
    frame_min: np.ndarray | None
    frame_max: np.ndarray | None
    n_features: int
    params: dict = field(default_factory=dict)
    source: Path | None = None

    def raw_transform(self, features: np.ndarray, *, chunk_size: int = 50_000) -> np.ndarray:
        """Project activations with the fitted model, in raw UMAP units.

        Parameters
        ----------
        features : ndarray, shape (N, F)
            Activations of the same layers the model was fitted on.
        chunk_size : int
            Rows per ``transform`` call (bounds memory of the neighbour search).

        Returns
        -------
        ndarray, shape (N, 2), dtype float32
        """
        features = check_features(features, self.n_features)
        out = np.empty((len(features), 2), dtype=np.float32)
        if len(features) == 0:
            return out
        import_umap()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_jobs value")
            for start in range(0, len(features), chunk_size):
                chunk = features[start : start + chunk_size]
                if self.pca is not None:
                    chunk = self.pca.transform(chunk).astype(np.float32)
                out[start : start + chunk_size] = self.umap.transform(chunk)
        return out

    def scale(self, raw: np.ndarray) -> np.ndarray:
        """Map raw UMAP coordinates into the fitted [0, 1] frame.

        Parameters
        ----------
        raw : ndarray, shape (N, 2)

        Returns
        -------
        ndarray, shape (N, 2), dtype float32
            Values in [0, 1]; points beyond the clipping box sit on its edge.

        Raises
        ------
        HistoatlasError
            If the frame is not set (a model fitted on a sample, before every tile's
            layout was gathered).
        """
        if self.frame_min is None:
            raise HistoatlasError(
                "this UMAP has no [0, 1] frame yet (the fit_umap step's model, before "
                "gather_umap): use the cohort's umap/umap.joblib"
            )
        clipped = np.clip(np.asarray(raw, dtype=np.float64), self.clip_min, self.clip_max)
        scaled = (clipped - self.frame_min) / (self.frame_max - self.frame_min)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    def transform(self, features: np.ndarray, *, chunk_size: int = 50_000) -> np.ndarray:
        """Project activations into the map's [0, 1] frame.

        Parameters
        ----------
        features : ndarray, shape (N, F)
        chunk_size : int
            Rows per ``transform`` call.

        Returns
        -------
        ndarray, shape (N, 2), dtype float32

        Examples
        --------
        >>> fitted = FittedUMAP.load("results/demo/umap/umap.joblib")  # doctest: +SKIP
        >>> fitted.transform(new_features).shape  # doctest: +SKIP
        (120, 2)
        """
        return self.scale(self.raw_transform(features, chunk_size=chunk_size))

    def set_frame(self, frame: tuple) -> FittedUMAP:
        """Set the clipping box and frame, ``((clip_min, clip_max), (frame_min,
        frame_max))`` as :func:`~histoatlas.analysis.umap_layout.layout_frame` gives them; the
        model then differs from any file it was read from (``save`` writes it anew)."""
        (self.clip_min, self.clip_max), (self.frame_min, self.frame_max) = frame
        self.source = None
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the model and its scaling to ``path`` (joblib), atomically.

        A model loaded from a file is copied byte for byte from it (never rewritten:
        a projection onto a reference map gets an identical copy of the reference).
        """
        import shutil

        import joblib

        if self.source is not None and self.source.is_file():
            if not (Path(path).exists() and self.source.samefile(path)):
                with atomic_output(path) as tmp:
                    shutil.copyfile(self.source, tmp)
            return
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "histoatlas_version": __version__,
            "umap": self.umap,
            "pca": self.pca,
            "clip": None if self.clip_min is None else (self.clip_min, self.clip_max),
            "frame": None if self.frame_min is None else (self.frame_min, self.frame_max),
            "n_features": self.n_features,
            "params": self.params,
        }
        with atomic_output(path) as tmp:
            joblib.dump(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedUMAP:
        """Read a ``umap.joblib`` written by :meth:`save`.

        joblib unpickles: load only files you (or your workflow) wrote.

        Raises
        ------
        HistoatlasError
            If the file is missing or is not a histoatlas UMAP file.
        """
        import joblib

        path = Path(path)
        if not path.is_file():
            raise HistoatlasError(f"UMAP file {path} does not exist; check `umap.reference`")
        import_umap()  # unpickling imports umap: keep TensorFlow out
        payload = joblib.load(path)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise HistoatlasError(
                f"{path} is not a histoatlas UMAP file (umap.joblib written by fit_umap)"
            )
        if payload["version"] > FORMAT_VERSION:
            raise HistoatlasError(
                f"{path} has format version {payload['version']}; this histoatlas reads "
                f"up to {FORMAT_VERSION}: upgrade histoatlas"
            )
        clip, frame = payload["clip"] or (None, None), payload["frame"] or (None, None)
        return cls(
            umap=payload["umap"],
            pca=payload["pca"],
            clip_min=None if clip[0] is None else np.asarray(clip[0]),
            clip_max=None if clip[1] is None else np.asarray(clip[1]),
            frame_min=None if frame[0] is None else np.asarray(frame[0]),
            frame_max=None if frame[1] is None else np.asarray(frame[1]),
            n_features=int(payload["n_features"]),
            params=dict(payload["params"]),
            source=path,
        )
