"""The demo's training data: labelled tiles of the demo slides, their split, statistics and
augmentation, and the accuracy of a trained network on them.

Tiles come from :class:`histoatlas.WSI` exactly as feature extraction will read them
(same tiling, same tissue filters); each kept tile takes the majority class of the
ground-truth map under it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoatlas.demo.slides import label_path_for, read_label_map
from histoatlas.errors import SheetError
from histoatlas.io.wsi import WSI

# A tile is labelled only if at least this fraction of it is tissue in the class map.
MIN_TISSUE = 0.5


def collect_labelled_tiles(
    slide_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    *,
    class_names: Sequence[str],
    tile_px: int = 224,
    tile_um: float | str = 112,
    num_workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Tile the demo slides and label each kept tile by its majority class.

    Parameters
    ----------
    slide_paths, label_paths : sequence of path
        Demo slides and their class maps (``*.labels.png``), in the same order.
    class_names : sequence of str
        Expected class names; must equal those stored in every class map.
    tile_px : int
        Tile edge in pixels.
    tile_um : float or str
        Tile edge in microns, or a magnification such as ``"20x"``.
    num_workers : int, optional
        Tile-reading threads per slide (see :meth:`histoatlas.WSI.iter_batches`).

    Returns
    -------
    dict
        ``tiles`` uint8 ``(N, tile_px, tile_px, 3)``, ``labels`` int64 ``(N,)`` (index
        into ``class_names``), ``slide`` int64 ``(N,)`` (index into ``slide_paths``),
        ``coords`` int64 ``(N, 2)`` (level-0 x, y).

    Raises
    ------
    SheetError
        If the counts of slides and maps differ or a map's class names differ.
    """
    if len(slide_paths) != len(label_paths):
        raise SheetError(
            f"{len(slide_paths)} demo slides but {len(label_paths)} class maps; give one each"
        )
    class_names = tuple(class_names)
    parts: dict[str, list[np.ndarray]] = {"tiles": [], "labels": [], "slide": [], "coords": []}
    for index, (slide_path, label_path) in enumerate(zip(slide_paths, label_paths, strict=True)):
        label_map, names, ds = read_label_map(label_path)
        if names != class_names:
            raise SheetError(
                f"class map {label_path} has classes {list(names)}, expected "
                f"{list(class_names)}; rebuild the demo slides or fix class_names"
            )
        with WSI(slide_path, tile_px, tile_um) as wsi:
            size = wsi.patch_size_level0
            for batch in wsi.iter_batches(64, num_workers=num_workers):
                labels = np.array(
                    [_majority(label_map, x, y, size, ds, len(names)) for x, y in batch.coords]
                )
                keep = labels >= 0
                parts["tiles"].append(batch.tiles[keep])
                parts["labels"].append(labels[keep])
                parts["slide"].append(np.full(int(keep.sum()), index, np.int64))
                parts["coords"].append(batch.coords[keep])
    if not parts["tiles"]:
        tile_shape = (0, tile_px, tile_px, 3)
        return {
            "tiles": np.zeros(tile_shape, np.uint8),
            "labels": np.zeros(0, np.int64),
            "slide": np.zeros(0, np.int64),
            "coords": np.zeros((0, 2), np.int64),
        }
    return {key: np.concatenate(value) for key, value in parts.items()}


def _majority(label_map: np.ndarray, x: int, y: int, size: int, ds: int, n_classes: int) -> int:
    """Majority class (0-based) under a tile, or -1 if it is mostly background."""
    window = label_map[y // ds : -(-(y + size) // ds), x // ds : -(-(x + size) // ds)]
    counts = np.bincount(window.ravel(), minlength=n_classes + 1)
    if counts[1:].sum() < MIN_TISSUE * max(counts.sum(), 1):
        return -1
    return int(np.argmax(counts[1:]))


def training_inputs(sheet_path: str | os.PathLike) -> tuple[list[str], list[Path], tuple[str, ...]]:
    """Slides, class maps and class names of a demo cohort, from its slide sheet.

    Parameters
    ----------
    sheet_path : str or PathLike
        The sheet :func:`histoatlas.demo.build_demo_cohort` wrote (``slide, path, ...``).

    Returns
    -------
    slide_paths : list of str
        The sheet's ``path`` column.
    label_paths : list of Path
        The class map beside each slide (:func:`histoatlas.demo.label_path_for`).
    class_names : tuple of str
        Class names stored in the first class map.

    Raises
    ------
    SheetError
        If the sheet has no ``path`` column or no rows.
    """
    import pandas as pd

    sheet = pd.read_csv(sheet_path)
    if "path" not in sheet.columns or sheet.empty:
        raise SheetError(
            f"demo sheet {sheet_path} needs a `path` column and at least one row; "
            "rebuild it with make_demo_slides"
        )
    slide_paths = sheet["path"].astype(str).tolist()
    label_paths = [label_path_for(path) for path in slide_paths]
    return slide_paths, label_paths, read_label_map(label_paths[0])[1]


def split_indices(
    labels: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train / held-out split.

    Parameters
    ----------
    labels : ndarray, shape (N,), dtype int64
    val_fraction : float
        Fraction of each class held out (at least one tile of a class with two or more).
    seed : int

    Returns
    -------
    train, val : ndarray of int64
        Sorted row indices.

    Examples
    --------
    >>> train, val = split_indices(np.array([0, 0, 0, 0, 1, 1]), val_fraction=0.25, seed=0)
    >>> len(train), len(val)
    (4, 2)
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(rows)))
        if len(rows) >= 2:
            n_val = min(max(n_val, 1), len(rows) - 1)
        val.extend(rows[:n_val].tolist())
    val = np.sort(np.asarray(val, np.int64))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def channel_stats(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 tiles, in [0, 1] units."""
    x = tiles.reshape(-1, 3)[:: max(1, tiles.size // 3 // 2_000_000)].astype(np.float64) / 255
    return x.mean(0), np.maximum(x.std(0), 1e-3)


def augment(tiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip and 90-degree rotation per tile (tissue has no orientation)."""
    out = np.empty_like(tiles)
    ks, flips = rng.integers(4, size=len(tiles)), rng.integers(2, size=len(tiles))
    for n, (tile, k, flip) in enumerate(zip(tiles, ks, flips, strict=True)):
        tile = np.rot90(tile, k)
        out[n] = tile[:, ::-1] if flip else tile
    return out


def accuracy(predict, tiles: np.ndarray, labels: np.ndarray, *, batch_size: int = 64) -> float:
    """Fraction of ``tiles`` whose predicted class equals ``labels``; NaN when empty."""
    if len(tiles) == 0:
        return float("nan")
    hits = 0
    for b in range(0, len(tiles), batch_size):
        hits += int((predict(tiles[b : b + batch_size]) == labels[b : b + batch_size]).sum())
    return hits / len(tiles)
