"""The parts of a UMAP layout that need no UMAP: the per-slide fitting sample, the
clipping box and [0, 1] frame of a layout (slideflow's ``normalize_layout``), and the checks
on activations handed to a map."""

from __future__ import annotations

import numpy as np

from histoatlas.errors import ConfigError, HistoatlasError


def sample_per_group(groups: np.ndarray, max_per_group: int | None, *, seed: int) -> np.ndarray:
    """Indices of at most ``max_per_group`` rows of each group, drawn without replacement.

    Parameters
    ----------
    groups : ndarray, shape (N,)
        Group (slide) of each row.
    max_per_group : int or None
        Cap per group; ``None`` keeps every row.
    seed : int
        Seed of the draw.

    Returns
    -------
    ndarray, shape (M,), dtype int64
        Sorted row indices.

    Examples
    --------
    >>> sample_per_group(np.array(["a", "a", "a", "b"]), 2, seed=0).size
    3
    """
    n = len(groups)
    if max_per_group is None or n == 0:
        return np.arange(n, dtype=np.int64)
    if max_per_group < 1:
        raise ConfigError(f"max_tiles_per_slide must be >= 1, got {max_per_group}")
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    # a random key per row; the max_per_group smallest keys of each group win
    keys = np.random.default_rng(seed).random(n)
    order = np.lexsort((keys, codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.sort(order[rank < max_per_group]).astype(np.int64)


def layout_frame(
    raw: np.ndarray, *, low: float = 1, high: float = 99, margin: float = 0.1
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Clipping box and [0, 1] frame of a layout, as slideflow's ``normalize_layout``.

    The box spans the ``low``-``high`` percentiles of each axis, widened by ``margin``
    of that span on both sides; the frame is the extent of the clipped layout.

    Parameters
    ----------
    raw : ndarray, shape (N, 2)
    low, high : float
        Percentiles.
    margin : float
        Relative margin.

    Returns
    -------
    (clip_min, clip_max), (frame_min, frame_max) : ndarray, shape (2,)
        A degenerate axis (all points equal) gets a unit frame centred on them.
    """
    raw = np.asarray(raw, dtype=np.float64)
    lo, hi = np.percentile(raw, [low, high], axis=0)
    span = hi - lo
    clip_min, clip_max = lo - margin * span, hi + margin * span
    clipped = np.clip(raw, clip_min, clip_max)
    frame_min, frame_max = clipped.min(axis=0), clipped.max(axis=0)
    flat = frame_max <= frame_min
    frame_min = np.where(flat, frame_min - 0.5, frame_min)
    frame_max = np.where(flat, frame_min + 1.0, frame_max)
    return (clip_min, clip_max), (frame_min, frame_max)


def check_features(features: np.ndarray, width: int | None) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"activations must be (N, F), got shape {features.shape}")
    if width is not None and features.shape[1] != width:
        raise HistoatlasError(
            f"activations have {features.shape[1]} features, the UMAP was fitted on "
            f"{width}: use the same model and layers as the map"
        )
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise HistoatlasError(
            f"{int(bad.sum())} of {len(features)} activation rows hold NaN or inf "
            f"(first: row {int(np.flatnonzero(bad)[0])}); re-extract those slides"
        )
    return features
