"""Synthetic atlas inputs: what fit_umap, merge_dataset and render_mosaic would write.

Two or more small pyramidal slides (tissue rectangles, see ``tests/conftest.py``), tiles on
their 64 px grid, UMAP coordinates in one blob per ``subtype``, predictions, and the mosaic
manifest of those coordinates, without running the workflow.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from histoatlas.analysis.mosaic import Mosaic
from tests.conftest import make_synthetic_slide

TILE = 64  # level-0 px per tile (32 um at 0.5 um/px)
SLIDE_SIZE = (1024, 768)


def atlas_inputs(
    folder: Path,
    *,
    n_points: int = 240,
    n_slides: int = 2,
    subtypes: tuple[str, ...] = ("a", "b", "c"),
    mosaic_cols: int = 8,
    seed: int = 0,
) -> SimpleNamespace:
    """Write the slides into ``folder``; return the tables an atlas is built from.

    Returns
    -------
    SimpleNamespace
        ``points`` (coords joined with tiles: slide, tile, x, y, umap_x, umap_y, subtype,
        pred_a, pred_b, pred_label), ``slides``, ``mosaic`` (manifest), ``mosaic_cols``,
        ``labels`` (subtype, slide, prediction: values per point).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"s{k + 1}" for k in range(n_slides)]
    for k, name in enumerate(names):
        make_synthetic_slide(
            folder / f"{name}.tiff", size=SLIDE_SIZE, tissue=((0, 0, *SLIDE_SIZE),), seed=k
        )
    n_x, n_y = SLIDE_SIZE[0] // TILE, SLIDE_SIZE[1] // TILE
    slide = np.sort(rng.integers(0, n_slides, n_points))
    tile = np.concatenate([np.arange((slide == k).sum()) for k in range(n_slides)])
    if tile.max() >= n_x * n_y:
        raise ValueError(f"{n_points} points do not fit on {n_slides} slides of {n_x * n_y} tiles")
    subtype = rng.integers(0, len(subtypes), n_points)
    centres = rng.uniform(0.2, 0.8, (len(subtypes), 2))
    umap = np.clip(centres[subtype] + rng.normal(0, 0.08, (n_points, 2)), 0, 1)
    p_a = rng.uniform(0, 1, n_points).astype(np.float32)
    points = pd.DataFrame(
        {
            "slide": np.asarray(names, dtype=object)[slide],
            "tile": tile,
            "x": (tile % n_x) * TILE,
            "y": (tile // n_x) * TILE,
            "umap_x": umap[:, 0].astype(np.float32),
            "umap_y": umap[:, 1].astype(np.float32),
            "subtype": np.asarray(subtypes, dtype=object)[subtype],
            "pred_a": p_a,
            "pred_b": 1 - p_a,
        }
    )
    points["pred_label"] = np.where(p_a >= 0.5, "a", "b").astype(object)
    slides = pd.DataFrame(
        {
            "slide": names,
            "path": [str(folder / f"{name}.tiff") for name in names],
            "mpp": 0.5,
            "tile_px": TILE,
            "tile_um": 32.0,
            "patch_size_level0": TILE,
        }
    )
    keys = points[["slide", "tile", "x", "y"]]
    mosaic = Mosaic(keys, umap, slides=slides, num_tiles_x=mosaic_cols, tile_px=16).manifest()
    labels = {
        "subtype": points["subtype"].to_numpy(),
        "slide": points["slide"].to_numpy(),
        "prediction": points["pred_label"].to_numpy(),
    }
    return SimpleNamespace(
        points=points, slides=slides, mosaic=mosaic, mosaic_cols=mosaic_cols, labels=labels
    )
