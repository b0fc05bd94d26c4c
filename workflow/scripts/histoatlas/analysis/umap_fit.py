"""Fit UMAP on tile activations and map them into a fixed [0, 1] frame.

The core behind :class:`histoatlas.SlideMap`: :func:`fit_umap` fits umap-learn on a
seeded per-slide sample, projects the remaining rows in chunks, then clips the layout
to its 1st-99th percentiles (plus a margin) and scales it to [0, 1], as slideflow
does. :class:`FittedUMAP` keeps that scaling with the model, so new activations land
in the same frame, and saves both to one ``umap.joblib``.

Two traps, measured here: a plain ``import umap`` also imports TensorFlow (umap-learn's
parametric UMAP) and crashed the interpreter in this environment; and numba compiles
UMAP's functions in every new process. :func:`histoatlas.runtime.import_umap` handles
both.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoatlas import __version__
from histoatlas.analysis.umap_layout import check_features, layout_frame, sample_per_group
from histoatlas.atomic import atomic_output
from histoatlas.errors import ConfigError, EmptyDatasetError, HistoatlasError
from histoatlas.runtime import import_umap

log = logging.getLogger(__name__)

# slideflow's defaults
DEFAULT_UMAP = {"n_neighbors": 50, "min_dist": 0.1, "metric": "cosine"}
# umap-learn cannot embed fewer points (spectral init fails at 3, n_neighbors < 2 at 2)
MIN_FIT_POINTS = 4
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
    clip_min, clip_max : ndarray, shape (2,)
        Raw UMAP coordinates are clipped to this box (1st-99th percentile plus margin).
    frame_min, frame_max : ndarray, shape (2,)
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
    clip_min: np.ndarray
    clip_max: np.ndarray
    frame_min: np.ndarray
    frame_max: np.ndarray
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
        """
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
            "clip": (self.clip_min, self.clip_max),
            "frame": (self.frame_min, self.frame_max),
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
        return cls(
            umap=payload["umap"],
            pca=payload["pca"],
            clip_min=np.asarray(payload["clip"][0]),
            clip_max=np.asarray(payload["clip"][1]),
            frame_min=np.asarray(payload["frame"][0]),
            frame_max=np.asarray(payload["frame"][1]),
            n_features=int(payload["n_features"]),
            params=dict(payload["params"]),
            source=path,
        )


def fit_umap(
    features: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    max_tiles_per_slide: int | None = None,
    pca_dim: int | None = None,
    random_state: int = 0,
    chunk_size: int = 50_000,
    margin: float = 0.1,
    **umap_kwargs: Any,
) -> tuple[FittedUMAP, np.ndarray]:
    """Fit a 2-D UMAP and return the model with the [0, 1] layout of every row.

    Rows in the fitting sample keep their fitted embedding; the others are projected
    with ``transform`` in chunks. The layout is clipped to its 1st-99th percentiles
    widened by ``margin`` of their range, then scaled to [0, 1].

    Parameters
    ----------
    features : ndarray, shape (N, F)
        Activations.
    groups : ndarray, shape (N,), optional
        Slide of each row, for ``max_tiles_per_slide``.
    max_tiles_per_slide : int, optional
        Fit on at most this many rows per group (seeded sample); ``None`` fits on all.
    pca_dim : int, optional
        Reduce to this many principal components before UMAP (clamped to the sample).
    random_state : int
        Seed of the sample, PCA and UMAP (makes UMAP single-threaded, and repeatable).
    chunk_size : int
        Rows per ``transform`` call.
    margin : float
        Relative margin around the percentile box (slideflow: 0.1).
    **umap_kwargs
        Passed to ``umap.UMAP`` (defaults: ``n_neighbors=50, min_dist=0.1,
        metric="cosine"``). ``n_neighbors`` is clamped below the sample size.

    Returns
    -------
    fitted : FittedUMAP
    coords : ndarray, shape (N, 2), dtype float32
        Layout of every row, in [0, 1].

    Raises
    ------
    EmptyDatasetError
        If there are no rows, or fewer than 4 in the fitting sample.
    ConfigError
        If ``n_components`` is not 2, or ``pca_dim`` < 1.

    Examples
    --------
    >>> fitted, coords = fit_umap(feats, slides, max_tiles_per_slide=500)  # doctest: +SKIP
    """
    features = check_features(features, None)
    n, width = features.shape
    fit_rows = _fit_sample(features, groups, max_tiles_per_slide, random_state, umap_kwargs)
    n_fit = len(fit_rows)
    kwargs = _umap_settings(umap_kwargs, random_state, n_fit)
    train, pca = _reduce(features[fit_rows], pca_dim, n_fit, width, random_state)
    umap = import_umap()
    log.info("fitting UMAP on %d of %d tiles (%s)", n_fit, n, kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value")
        model = umap.UMAP(**kwargs).fit(train)
    params = {
        **kwargs,
        "pca_dim": pca_dim,
        "max_tiles_per_slide": max_tiles_per_slide,
        "n_fit": n_fit,
        "margin": margin,
    }
    fitted = FittedUMAP(
        model, pca, np.zeros(2), np.zeros(2), np.zeros(2), np.ones(2), width, params
    )
    raw = _raw_layout(fitted, features, fit_rows, chunk_size)
    (fitted.clip_min, fitted.clip_max), (fitted.frame_min, fitted.frame_max) = layout_frame(
        raw, margin=margin
    )
    return fitted, fitted.scale(raw)


def _umap_settings(umap_kwargs: dict, random_state: int, n_fit: int) -> dict:
    """UMAP's keywords: slideflow's defaults, the caller's, 2-D, seeded; ``n_neighbors``
    clamped below the sample size."""
    kwargs = {**DEFAULT_UMAP, **umap_kwargs, "n_components": 2, "random_state": random_state}
    if kwargs["n_neighbors"] >= n_fit:
        log.warning(
            "UMAP n_neighbors=%d is not below the %d fitted tiles; using n_neighbors=%d",
            kwargs["n_neighbors"],
            n_fit,
            n_fit - 1,
        )
        kwargs["n_neighbors"] = n_fit - 1
    return kwargs


def _reduce(train: np.ndarray, pca_dim: int | None, n_fit: int, width: int, seed: int):
    """The fitting sample, through PCA when ``pca_dim`` is set; and the PCA (or None)."""
    if pca_dim is None:
        return train, None
    if pca_dim < 1:
        raise ConfigError(f"pca_dim must be >= 1 or null, got {pca_dim}")
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(pca_dim, n_fit, width), random_state=seed)
    return pca.fit_transform(train).astype(np.float32), pca


def _fit_sample(features, groups, max_tiles_per_slide, random_state, umap_kwargs) -> np.ndarray:
    """Rows to fit on (at most ``max_tiles_per_slide`` per group), after the checks."""
    n = len(features)
    if n == 0:
        raise EmptyDatasetError(
            "UMAP: the cohort has no tiles to fit on (every slide empty after tissue "
            "filtering); check the slides or relax config `tiles:` filters"
        )
    if umap_kwargs.get("n_components", 2) != 2:
        raise ConfigError(
            f"n_components={umap_kwargs['n_components']!r}: histoatlas maps are 2-D; drop it"
        )
    groups = np.zeros(n, dtype=np.int8) if groups is None else np.asarray(groups)
    fit_rows = sample_per_group(groups, max_tiles_per_slide, seed=random_state)
    n_fit = len(fit_rows)
    if n_fit < MIN_FIT_POINTS:
        raise EmptyDatasetError(
            f"UMAP needs at least {MIN_FIT_POINTS} tiles to fit, the sample has {n_fit} "
            f"({n} tiles in all, max_tiles_per_slide={max_tiles_per_slide}); add slides "
            "or raise `umap.max_tiles_per_slide`"
        )
    return fit_rows


def _raw_layout(fitted: FittedUMAP, features: np.ndarray, fit_rows, chunk_size: int):
    """Every row's layout in UMAP units: fitted rows keep their embedding, the rest are
    projected in chunks."""
    n = len(features)
    raw = np.empty((n, 2), dtype=np.float32)
    raw[fit_rows] = fitted.umap.embedding_
    rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    if len(rest):
        log.info("projecting the other %d tiles", len(rest))
        raw[rest] = fitted.raw_transform(features[rest], chunk_size=chunk_size)
    return raw
