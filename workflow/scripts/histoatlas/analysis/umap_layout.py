"""The parts of a UMAP layout that need no UMAP: the per-slide fitting sample, the
clipping box and [0, 1] frame of a layout (slideflow's ``normalize_layout``), and the checks
on activations handed to a map."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from histoatlas.errors import ConfigError, HistoatlasError


def sample_per_group(
    groups: np.ndarray, max_per_group: int | None, *, seed: int, max_total: int | None = None
) -> np.ndarray:
    """Indices of at most ``max_per_group`` rows of each group, drawn without replacement.

    Parameters
    ----------
    groups : ndarray, shape (N,)
        Group (slide) of each row.
    max_per_group : int or None
        Cap per group; ``None`` keeps every row.
    seed : int
        Seed of the draw.
    max_total : int, optional
        Cap on the whole sample: of the rows drawn, those with the smallest random keys.

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
    if max_per_group is not None and max_per_group < 1:
        raise ConfigError(f"max_tiles_per_slide must be >= 1, got {max_per_group}")
    if max_per_group is None or n == 0:
        rows, keys = np.arange(n, dtype=np.int64), np.zeros(n)
    else:
        codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        # a random key per row; the max_per_group smallest keys of each group win
        keys = np.random.default_rng(seed).random(n)
        order = np.lexsort((keys, codes))
        sorted_codes = codes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        rows = np.sort(order[rank < max_per_group]).astype(np.int64)
        keys = keys[rows]
    if max_total is not None and len(rows) > max_total:
        rows = np.sort(rows[np.argsort(keys, kind="stable")[:max_total]])
    return rows


def sample_in_order(
    counts: Sequence[int], max_per_group: int | None, *, seed: int, max_total: int | None = None
) -> list[np.ndarray]:
    """:func:`sample_per_group` of consecutive groups of the given sizes, one group at a time.

    The same rows as ``sample_per_group`` on the concatenated groups (one random key per
    row, drawn in order from one seeded stream: drawing group by group draws the same
    numbers), without holding a key per row of the whole cohort. ``max_total`` then keeps
    the rows with the smallest keys over all groups.

    Parameters
    ----------
    counts : sequence of int
        Rows per group (slide), in order.
    max_per_group : int or None
        Cap per group; ``None`` keeps every row.
    seed : int
        Seed of the draw.
    max_total : int, optional
        Cap on the whole sample.

    Returns
    -------
    list of ndarray of int64
        Per group, the sorted rows (within the group) it contributes.

    Examples
    --------
    >>> [r.tolist() for r in sample_in_order([3, 1], 2, seed=0)]
    [[0, 2], [0]]
    """
    if max_per_group is not None and max_per_group < 1:
        raise ConfigError(f"max_tiles_per_slide must be >= 1, got {max_per_group}")
    if max_total is not None and max_total < 1:
        raise ConfigError(f"max_fit_tiles must be >= 1, got {max_total}")
    rng = np.random.default_rng(seed)
    chosen, keys = [], []
    for n in counts:
        if max_per_group is None:  # sample_per_group draws nothing then
            rows, key = np.arange(n, dtype=np.int64), np.zeros(n)
        else:
            drawn = rng.random(n)
            rows = np.sort(np.argsort(drawn, kind="stable")[:max_per_group]).astype(np.int64)
            key = drawn[rows]
        chosen.append(rows)
        keys.append(key)
    if max_total is None or sum(len(r) for r in chosen) <= max_total:
        return chosen
    flat = np.concatenate(keys)
    keep = np.zeros(len(flat), dtype=bool)
    keep[np.argsort(flat, kind="stable")[:max_total]] = True
    bounds = np.cumsum([0] + [len(r) for r in chosen])
    return [rows[keep[a:b]] for rows, a, b in zip(chosen, bounds[:-1], bounds[1:], strict=True)]


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
    return _frame(lo, hi, raw.min(axis=0), raw.max(axis=0), margin)


def streamed_layout_frame(
    blocks: Callable[[], Iterable[np.ndarray]],
    *,
    low: float = 1,
    high: float = 99,
    margin: float = 0.1,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """:func:`layout_frame` of a float32 layout read block by block, bit for bit the same.

    The percentiles are exact, in memory independent of N: two passes over the blocks
    select the needed order statistics by their float32 bit patterns (the high 16 bits,
    then the low 16 bits within the one bin that holds each rank), and interpolate them
    as ``np.percentile`` does.

    Parameters
    ----------
    blocks : callable
        Returns a new iterable of ``(n, 2)`` float32 blocks of the layout (called twice).
    low, high, margin : float
        As :func:`layout_frame`.

    Returns
    -------
    (clip_min, clip_max), (frame_min, frame_max) : ndarray, shape (2,)
    """
    top = np.zeros((2, 1 << 16), dtype=np.int64)
    raw_min, raw_max = np.full(2, np.inf), np.full(2, -np.inf)
    for block in blocks():
        keys = _sortable(block)
        for axis in range(2):
            top[axis] += np.bincount(keys[:, axis] >> 16, minlength=1 << 16)
        if len(block):
            raw_min = np.minimum(raw_min, block.min(axis=0))
            raw_max = np.maximum(raw_max, block.max(axis=0))
    n = int(top[0].sum())
    if n == 0:
        raise ValueError("an empty layout has no frame")
    q = np.asarray([low, high], dtype=np.float64) / np.float64(100)
    virtual = (n - 1) * q  # numpy's "linear" method, as np.percentile computes it
    previous = np.minimum(np.floor(virtual).astype(np.int64), n - 1)
    ranks = sorted({int(r) for r in np.r_[previous, np.minimum(previous + 1, n - 1)]})
    values = _order_statistics(blocks, top, ranks)
    lo_hi = []
    for k in range(2):
        a = np.array([values[a][int(previous[k])] for a in range(2)])
        b = np.array([values[a][int(min(previous[k] + 1, n - 1))] for a in range(2)])
        lo_hi.append(_lerp(a, b, np.float64(virtual[k] - previous[k])))
    return _frame(
        lo_hi[0], lo_hi[1], raw_min.astype(np.float64), raw_max.astype(np.float64), margin
    )


def _sortable(block: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the float32 values' order (sign bit flipped, negatives
    inverted)."""
    bits = np.ascontiguousarray(block, dtype=np.float32).view(np.uint32)
    return np.where(bits & 0x80000000, ~bits, bits | 0x80000000)


def _order_statistics(blocks, top: np.ndarray, ranks: list[int]) -> list[dict]:
    """``[{rank: value}]`` per axis: the values at 0-based ``ranks`` of the sorted layout."""
    wanted = []  # (axis, rank, high bits, rank within that bin)
    for axis in range(2):
        cum = np.cumsum(top[axis])
        for rank in ranks:
            high = int(np.searchsorted(cum, rank, side="right"))
            wanted.append((axis, rank, high, rank - (int(cum[high - 1]) if high else 0)))
    low = {(axis, high): np.zeros(1 << 16, dtype=np.int64) for axis, _, high, _ in wanted}
    for block in blocks():
        keys = _sortable(block)
        for (axis, high), counts in low.items():
            inside = keys[:, axis][(keys[:, axis] >> 16) == high]
            counts += np.bincount(inside & 0xFFFF, minlength=1 << 16)
    values: list[dict] = [{}, {}]
    for axis, rank, high, within in wanted:
        low_bits = int(np.searchsorted(np.cumsum(low[(axis, high)]), within, side="right"))
        key = np.uint32((high << 16) | low_bits)
        bits = ~key if not key & 0x80000000 else key & np.uint32(0x7FFFFFFF)
        values[axis][rank] = float(np.asarray([bits], dtype=np.uint32).view(np.float32)[0])
    return values


def _lerp(a: np.ndarray, b: np.ndarray, t: np.float64) -> np.ndarray:
    """numpy's own linear interpolation of quantiles (``numpy.lib._function_base_impl._lerp``),
    operation for operation, so streamed percentiles equal ``np.percentile``'s bits."""
    diff = np.subtract(b, a)
    out = np.add(a, diff * t)
    if t >= 0.5:
        out = np.subtract(b, diff * (1 - t))
    return out


def _frame(lo, hi, raw_min, raw_max, margin: float):
    """The clipping box around the percentiles and the extent of the clipped layout (the
    min of clipped values is the clipped min: clipping keeps order)."""
    span = hi - lo
    clip_min, clip_max = lo - margin * span, hi + margin * span
    frame_min = np.clip(raw_min, clip_min, clip_max)
    frame_max = np.clip(raw_max, clip_min, clip_max)
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
