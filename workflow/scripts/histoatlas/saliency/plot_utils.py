"""Pictures of saliency maps: heatmaps, overlays and figures comparing methods.

Masks arrive signed and unnormalised (``(H, W)`` float, as :class:`SaliencyMap` returns
them); here they become magnitudes scaled by a high percentile, so one extreme pixel
cannot turn the rest of the map black.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_PERCENTILE = 99.0


def normalize(mask: np.ndarray, *, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Absolute value of ``mask`` divided by its ``percentile``-th percentile, clipped to [0, 1].

    Parameters
    ----------
    mask : ndarray, shape (H, W)
    percentile : float
        Values at or above this percentile of ``|mask|`` map to 1.

    Returns
    -------
    ndarray, shape (H, W), dtype float32
        All zeros for an all-zero mask.
    """
    mag = np.abs(np.asarray(mask, dtype=np.float64))
    if mag.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mag.shape}")
    finite = mag[np.isfinite(mag)]
    vmax = np.percentile(finite, percentile) if finite.size else 0.0
    if vmax <= 0 and finite.size:
        vmax = finite.max()  # a sparse map whose percentile is still 0
    if vmax <= 0:
        return np.zeros(mag.shape, np.float32)
    return np.clip(np.nan_to_num(mag / vmax), 0.0, 1.0).astype(np.float32)


def inferno(mask: np.ndarray, *, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """A saliency mask as an inferno-coloured heatmap.

    Parameters
    ----------
    mask : ndarray, shape (H, W)
        Signed attribution; its magnitude is shown.
    percentile : float
        Normalisation percentile (see :func:`normalize`).

    Returns
    -------
    ndarray, shape (H, W, 3), dtype uint8

    Examples
    --------
    >>> inferno(np.eye(4)).shape
    (4, 4, 3)
    """
    from matplotlib import colormaps

    rgba = colormaps["inferno"](normalize(mask, percentile=percentile), bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    alpha: float = 0.5,
    percentile: float = DEFAULT_PERCENTILE,
) -> np.ndarray:
    """Blend the inferno heatmap of ``mask`` over the tile.

    ``image`` is the raw uint8 tile ``(H, W, 3)`` (not the preprocessed one), ``mask`` and
    ``percentile`` as :func:`inferno`, ``alpha`` the heatmap's weight in [0, 1] (0 gives the
    tile, 1 the heatmap); returns uint8 ``(H, W, 3)``.

    Raises
    ------
    ValueError
        The image is not uint8 RGB, its size differs from the mask's, or ``alpha`` is
        outside [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (H, W, 3), got {image.shape} {image.dtype}")
    if image.shape[:2] != np.shape(mask):
        raise ValueError(f"image {image.shape[:2]} and mask {np.shape(mask)} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = inferno(mask, percentile=percentile).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def comparison(
    image: np.ndarray,
    masks_by_method: Mapping[str, np.ndarray],
    *,
    title: str | None = None,
    show_overlay: bool = False,
    percentile: float = DEFAULT_PERCENTILE,
    cell_inches: float = 2.5,
):
    """One tile and each method's map side by side.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), dtype uint8
        The raw tile.
    masks_by_method : dict of str to ndarray, shape (H, W)
        Method name -> mask, in display order.
    title : str, optional
        Figure title.
    show_overlay, percentile, cell_inches
        As :func:`overview`.

    Returns
    -------
    matplotlib.figure.Figure
        One row of ``1 + len(masks_by_method)`` axes.
    """
    fig = overview(
        [(image, masks_by_method)],
        show_overlay=show_overlay,
        percentile=percentile,
        cell_inches=cell_inches,
    )
    if title:
        fig.suptitle(title)
    return fig


def overview(
    rows: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray]]],
    *,
    labels: Sequence[str] | None = None,
    show_overlay: bool = False,
    percentile: float = DEFAULT_PERCENTILE,
    cell_inches: float = 2.0,
):
    """A grid with one row per tile: the tile, then one column per method.

    Parameters
    ----------
    rows : list of (image, masks_by_method)
        Raw uint8 tile ``(H, W, 3)`` and its method -> ``(H, W)`` mask dict.
    labels : list of str, optional
        One label per row, shown beside the tile.
    show_overlay : bool
        Draw overlays on the tile instead of bare heatmaps.
    percentile : float
        Normalisation percentile (see :func:`normalize`).
    cell_inches : float
        Width and height of each panel.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(rows)`` x ``(1 + n_methods)`` axes; methods are columns in the order they
        first appear, and a row without a method leaves that panel blank.

    Raises
    ------
    ValueError
        No rows, or ``labels`` of the wrong length.
    """
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("overview needs at least one (image, masks) row")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    methods: list[str] = []
    for _, masks in rows:
        methods += [m for m in masks if m not in methods]
    n_rows, n_cols = len(rows), 1 + len(methods)
    # Figure, not pyplot: no global state, safe in worker threads and headless jobs
    fig = Figure(figsize=(cell_inches * n_cols, cell_inches * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (image, masks) in enumerate(rows):
        axes[r, 0].imshow(image)
        if labels is not None:
            axes[r, 0].set_ylabel(labels[r], fontsize=7)
        for c, method in enumerate(methods, start=1):
            if method in masks:
                mask = masks[method]
                picture = (
                    overlay(image, mask, percentile=percentile)
                    if show_overlay
                    else inferno(mask, percentile=percentile)
                )
                axes[r, c].imshow(picture)
            if r == 0:
                axes[r, c].set_title(method.replace("_", " "), fontsize=8)
    axes[0, 0].set_title("tile", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig
