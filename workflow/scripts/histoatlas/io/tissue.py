"""Tissue detection on slide thumbnails and slideflow's per-tile background filters.

Two stages, as in slideflow: a slide-level Otsu threshold on a thumbnail picks the
candidate grid tiles, then every candidate tile read at full resolution passes the
grayspace and whitespace filters or is dropped. Everything here works on NumPy arrays;
reading pixels is :mod:`histoatlas.io.wsi`'s job.
"""

from __future__ import annotations

import numpy as np

# A thumbnail whose median brightness (max of R, G, B) is below this is taken as a
# dark-field (fluorescence) slide: its background is black, so saturation says nothing
# (near-black pixels have noisy, high saturation) and brightness marks the tissue.
DARK_BACKGROUND_MEDIAN = 100
# Floors under the Otsu threshold, so a blank slide (whose saturation or brightness is
# only scanner and JPEG noise) gives no tissue instead of splitting its noise in two.
MIN_TISSUE_SATURATION = 0.05
MIN_TISSUE_BRIGHTNESS = 4
# Gaussian smoothing (thumbnail pixels) before thresholding; slideflow median-filters.
SMOOTH_SIGMA = 1.5


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 RGB pixels, as :func:`skimage.color.rgb2hsv` computes it.

    Parameters
    ----------
    rgb : ndarray, shape (..., 3), dtype uint8

    Returns
    -------
    ndarray, shape (...), dtype float32
        ``(max - min) / max`` per pixel in [0, 1]; 0 where ``max`` is 0.

    Examples
    --------
    >>> saturation(np.array([[255, 0, 0], [128, 128, 128]], np.uint8))
    array([1., 0.], dtype=float32)
    """
    hi, lo = _channel_max_min(rgb)
    hi = hi.astype(np.float32)
    delta = hi - lo
    return np.divide(delta, hi, out=np.zeros_like(hi), where=hi > 0)


def tissue_mask(thumb: np.ndarray) -> np.ndarray:
    """Segment tissue in a slide thumbnail with Otsu's threshold.

    Brightfield slides (light background) are thresholded on HSV saturation, as
    slideflow does. Dark-field slides (median brightness below
    ``DARK_BACKGROUND_MEDIAN``, e.g. fluorescence) are thresholded on log brightness
    instead, since their tissue is what shines. Both are smoothed first, and the
    threshold never drops below a floor, so a blank slide gives an empty mask.

    Parameters
    ----------
    thumb : ndarray, shape (H, W, 3), dtype uint8
        The whole slide, downscaled.

    Returns
    -------
    ndarray, shape (H, W), dtype bool
        True on tissue.

    Examples
    --------
    >>> thumb = np.full((40, 40, 3), 245, np.uint8)
    >>> thumb[10:30, 10:30] = (200, 110, 170)
    >>> int(tissue_mask(thumb).sum())
    400
    """
    from skimage.filters import gaussian, threshold_otsu

    if thumb.size == 0:
        return np.zeros(thumb.shape[:2], bool)
    brightness, _ = _channel_max_min(thumb)
    if np.median(brightness) < DARK_BACKGROUND_MEDIAN:
        signal = np.log1p(brightness.astype(np.float32))
        floor = np.log1p(np.float32(MIN_TISSUE_BRIGHTNESS))
    else:
        signal = saturation(thumb)
        floor = np.float32(MIN_TISSUE_SATURATION)
    signal = gaussian(signal, sigma=SMOOTH_SIGMA, preserve_range=True)
    threshold = floor if np.ptp(signal) == 0 else max(threshold_otsu(signal), floor)
    return signal > threshold


def grid_fractions(
    mask: np.ndarray,
    scale: tuple[float, float],
    *,
    patch: int,
    stride: int,
    grid_shape: tuple[int, int],
) -> np.ndarray:
    """Fraction of each grid tile's footprint that a thumbnail mask marks.

    Parameters
    ----------
    mask : ndarray, shape (H, W), dtype bool
        Thumbnail mask (rows are y).
    scale : (float, float)
        Level-0 pixels per mask pixel along x and y.
    patch, stride : int
        Tile edge and grid step in level-0 pixels.
    grid_shape : (int, int)
        ``(n_x, n_y)``.

    Returns
    -------
    ndarray, shape (n_x, n_y), dtype float64
        Values in [0, 1]; tile ``(i, j)`` covers level-0
        ``[i * stride, i * stride + patch) x [j * stride, j * stride + patch)``.

    Examples
    --------
    >>> mask = np.zeros((4, 4), bool)
    >>> mask[:, :2] = True
    >>> grid_fractions(mask, (10.0, 10.0), patch=20, stride=20, grid_shape=(2, 2))
    array([[1., 1.],
           [0., 0.]])
    """
    n_x, n_y = grid_shape
    if n_x == 0 or n_y == 0:
        return np.zeros((n_x, n_y))
    h, w = mask.shape
    c0, c1 = _footprint(n_x, patch, stride, scale[0], w)
    r0, r1 = _footprint(n_y, patch, stride, scale[1], h)
    # Summed-area table with a zero row and column in front: any box sum is 4 lookups.
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = mask.cumsum(0).cumsum(1)
    c0, c1 = c0[:, None], c1[:, None]  # (n_x, 1) against rows (1, n_y)
    r0, r1 = r0[None, :], r1[None, :]
    total = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return total / ((r1 - r0) * (c1 - c0))


def _footprint(
    n: int, patch: int, stride: int, scale: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mask index ranges [start, stop) of ``n`` tiles along one axis (never empty)."""
    start = np.arange(n, dtype=np.float64) * stride
    lo = np.clip(np.round(start / scale).astype(np.int64), 0, size - 1)
    hi = np.clip(np.round((start + patch) / scale).astype(np.int64), lo + 1, size)
    return lo, hi


def grayspace_fraction(tiles: np.ndarray, threshold: float) -> np.ndarray:
    """Fraction of each tile's pixels whose HSV saturation is below ``threshold``.

    Parameters
    ----------
    tiles : ndarray, shape (B, H, W, 3) or (H, W, 3), dtype uint8
    threshold : float
        Saturation in [0, 1] (slideflow's ``grayspace_threshold``, default 0.05).

    Returns
    -------
    ndarray, shape (B,), dtype float64 (a float for one tile)

    Examples
    --------
    >>> grayspace_fraction(np.full((1, 2, 2, 3), 200, np.uint8), 0.05)
    array([1.])
    """
    hi, lo = _channel_max_min(tiles)
    # s = (hi - lo) / hi < t, without dividing; black pixels (hi = 0) have s = 0.
    gray = (hi - lo).astype(np.float32) < np.float32(threshold) * hi
    if threshold > 0:
        gray |= hi == 0
    return gray.mean(axis=(-2, -1))


def whitespace_fraction(tiles: np.ndarray, threshold: float) -> np.ndarray:
    """Fraction of each tile's pixels whose mean of R, G, B exceeds ``threshold`` (in
    [0, 255]; slideflow's ``whitespace_threshold``, default 230): brightness, not every
    channel above it, as slideflow defines it. Shapes as :func:`grayspace_fraction`.

    >>> whitespace_fraction(np.full((1, 2, 2, 3), 240, np.uint8), 230)
    array([1.])
    """
    total = tiles.sum(axis=-1, dtype=np.uint16)
    return (total > 3 * threshold).mean(axis=(-2, -1))


def passes_filters(
    tiles: np.ndarray,
    *,
    grayspace_fraction_max: float = 0.6,
    grayspace_threshold: float = 0.05,
    whitespace_fraction_max: float = 1.0,
    whitespace_threshold: float = 230,
) -> np.ndarray:
    """Apply slideflow's grayspace and whitespace filters to a batch of tiles.

    A tile is rejected when more than ``grayspace_fraction_max`` of its pixels are
    gray or more than ``whitespace_fraction_max`` are white. A fraction of 1.0 or
    more disables that filter (no tile can exceed it), as in slideflow.

    Parameters
    ----------
    tiles : ndarray, shape (B, H, W, 3) or (H, W, 3), dtype uint8
    grayspace_fraction_max, grayspace_threshold : float
        Slideflow's ``grayspace_fraction`` and ``grayspace_threshold``.
    whitespace_fraction_max, whitespace_threshold : float
        Slideflow's ``whitespace_fraction`` and ``whitespace_threshold``.

    Returns
    -------
    ndarray, shape (B,) (or 0-d), dtype bool
        True for tiles to keep.

    Examples
    --------
    >>> tiles = np.zeros((2, 8, 8, 3), np.uint8)
    >>> tiles[0] = (200, 100, 160)  # stained
    >>> tiles[1] = 210  # gray glass
    >>> passes_filters(tiles)
    array([ True, False])
    """
    keep = np.ones(tiles.shape[:-3], bool)
    if grayspace_fraction_max < 1:
        keep &= grayspace_fraction(tiles, grayspace_threshold) <= grayspace_fraction_max
    if whitespace_fraction_max < 1:
        keep &= whitespace_fraction(tiles, whitespace_threshold) <= whitespace_fraction_max
    return keep


def _channel_max_min(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel max and min over the last (RGB) axis, uint8 in, uint8 out."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
