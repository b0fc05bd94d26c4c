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
import warnings
from typing import Any

import numpy as np

from histoatlas.analysis.umap_layout import check_features, layout_frame, sample_per_group
from histoatlas.analysis.umap_model import FittedUMAP
from histoatlas.errors import ConfigError, EmptyDatasetError
from histoatlas.runtime import import_umap

log = logging.getLogger(__name__)

# slideflow's defaults
DEFAULT_UMAP = {"n_neighbors": 50, "min_dist": 0.1, "metric": "cosine"}
# umap-learn cannot embed fewer points (spectral init fails at 3, n_neighbors < 2 at 2)
MIN_FIT_POINTS = 4


def fit_umap(
    features: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    max_tiles_per_slide: int | None = None,
    max_fit_tiles: int | None = None,
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
    max_fit_tiles : int, optional
        Fit on at most this many rows in all (of the per-group sample, those with the
        smallest random keys).
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
    n = len(features)
    fit_rows = _fit_sample(features, groups, max_tiles_per_slide, max_fit_tiles, random_state)
    fitted = fit_model(
        features[fit_rows],
        n_total=n,
        pca_dim=pca_dim,
        random_state=random_state,
        margin=margin,
        max_tiles_per_slide=max_tiles_per_slide,
        max_fit_tiles=max_fit_tiles,
        **umap_kwargs,
    )
    raw = _raw_layout(fitted, features, fit_rows, chunk_size)
    fitted.set_frame(layout_frame(raw, margin=margin))
    return fitted, fitted.scale(raw)


def fit_model(
    train: np.ndarray,
    *,
    n_total: int,
    pca_dim: int | None = None,
    random_state: int = 0,
    margin: float = 0.1,
    max_tiles_per_slide: int | None = None,
    max_fit_tiles: int | None = None,
    **umap_kwargs: Any,
) -> FittedUMAP:
    """Fit UMAP (after PCA when ``pca_dim``) on the fitting sample alone.

    The frame stays unset: it needs the layout of every tile (:meth:`FittedUMAP.set_frame`).
    Both the one-job :func:`fit_umap` and the cohort's ``fit_umap`` rule fit here.

    Parameters
    ----------
    train : ndarray, shape (M, F)
        The fitting sample, in cohort order.
    n_total : int
        Tiles of the cohort (for the log and the error messages).
    pca_dim, random_state, margin, max_tiles_per_slide, max_fit_tiles, **umap_kwargs
        As :func:`fit_umap` (the last four are recorded in ``params``).

    Returns
    -------
    FittedUMAP
        ``umap.embedding_`` is the sample's layout in raw UMAP units.

    Raises
    ------
    EmptyDatasetError
        If the sample has fewer than 4 rows.
    ConfigError
        If ``n_components`` is not 2, or ``pca_dim`` < 1.
    """
    if umap_kwargs.get("n_components", 2) != 2:
        raise ConfigError(
            f"n_components={umap_kwargs['n_components']!r}: histoatlas maps are 2-D; drop it"
        )
    train = check_features(train, None)
    n_fit, width = train.shape
    if n_fit < MIN_FIT_POINTS:
        raise EmptyDatasetError(
            f"UMAP needs at least {MIN_FIT_POINTS} tiles to fit, the sample has {n_fit} "
            f"({n_total} tiles in all, max_tiles_per_slide={max_tiles_per_slide}); add "
            "slides or raise `umap.max_tiles_per_slide`"
        )
    kwargs = _umap_settings(umap_kwargs, random_state, n_fit)
    reduced, pca = _reduce(train, pca_dim, n_fit, width, random_state)
    umap = import_umap()
    log.info("fitting UMAP on %d of %d tiles (%s)", n_fit, n_total, kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value")
        model = umap.UMAP(**kwargs).fit(reduced)
    params = {
        **kwargs,
        "pca_dim": pca_dim,
        "max_tiles_per_slide": max_tiles_per_slide,
        "max_fit_tiles": max_fit_tiles,
        "n_fit": n_fit,
        "margin": margin,
    }
    return FittedUMAP(model, pca, None, None, None, None, width, params)


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


def _fit_sample(features, groups, max_tiles_per_slide, max_fit_tiles, random_state):
    """Rows to fit on (at most ``max_tiles_per_slide`` per group, ``max_fit_tiles`` in all)."""
    n = len(features)
    if n == 0:
        raise EmptyDatasetError(
            "UMAP: the cohort has no tiles to fit on (every slide empty after tissue "
            "filtering); check the slides or relax config `tiles:` filters"
        )
    groups = np.zeros(n, dtype=np.int8) if groups is None else np.asarray(groups)
    return sample_per_group(groups, max_tiles_per_slide, seed=random_state, max_total=max_fit_tiles)


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
