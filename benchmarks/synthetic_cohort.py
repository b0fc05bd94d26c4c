"""The synthetic cohort of bench_cohort.py: real-shaped per-slide h5 files and their sheet.

Each slide: ``per_slide`` tiles of 768-d float32 activations from 20 clusters (each slide
its own blend of them), coords, grid, 3-class predictions and every attribute, written
batch by batch with ``SlideH5Writer`` as extraction writes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from common import OUT

WIDTH = 768
CLASSES = ["tumor", "stroma", "immune"]


def cohort_dir(n: int, per_slide: int) -> Path:
    return OUT / "cohort" / f"{n}_{per_slide}"


def write_cohort(n: int, per_slide: int) -> Path:
    """Per-slide files of ``n`` tiles (once), and their dataset table (merge, timed)."""
    from histoatlas.io.slide_h5 import SlideH5Writer

    folder = cohort_dir(n, per_slide)
    h5 = folder / "features"
    h5.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.gamma(1.0, 1.0, (20, WIDTH)).astype(np.float32)
    side = int(np.ceil(np.sqrt(per_slide)))
    slides = [f"s{k:05d}" for k in range(n // per_slide)]
    t = time.perf_counter()
    for k, slide in enumerate(slides):
        path = h5 / f"{slide}.h5"
        if path.exists():
            continue
        local = np.random.default_rng(k)
        mix = local.dirichlet(np.full(20, 0.3))  # each slide its own blend of clusters
        with SlideH5Writer(path, n_features=WIDTH, n_classes=len(CLASSES)) as writer:
            for start in range(0, per_slide, 4096):
                m = min(4096, per_slide - start)
                label = local.choice(20, m, p=mix)
                noise = local.standard_normal((m, WIDTH), dtype=np.float32)
                grid = np.stack(
                    [np.arange(start, start + m) % side, np.arange(start, start + m) // side], 1
                )
                writer.append(
                    features=np.maximum(centres[label] + 0.5 * noise, 0),
                    coords=grid * 448,
                    grid=grid,
                    predictions=local.dirichlet(np.ones(len(CLASSES)), m),
                )
            writer.close(_attrs(slide, side))
    made = time.perf_counter() - t
    if made > 1:
        print(f"# wrote {len(slides)} slide files ({n:,} tiles) in {made:.0f} s", flush=True)
    sheet = folder / "slides.csv"
    rows = [f"{s},slides/{s}.svs,{'ab'[i % 2]}" for i, s in enumerate(slides)]
    sheet.write_text("slide,path,subtype\n" + "\n".join(rows) + "\n")
    return folder


def _attrs(slide: str, side: int) -> dict:
    import histoatlas

    return {
        "slide": slide,
        "slide_path": f"slides/{slide}.svs",
        "mpp": 0.5,
        "level0_width": side * 448,
        "level0_height": side * 448,
        "tile_px": 224,
        "tile_um": 224.0,
        "patch_size_level0": 448,
        "stride_div": 1,
        "grid_shape": (side, side),
        "layers": ["postconv"],
        "layer_slices": {"postconv": [0, WIDTH]},
        "pooling": "avg",
        "model": "synthetic",
        "model_sha256": "0" * 64,
        "class_names": CLASSES,
        "histoatlas_version": histoatlas.__version__,
        "precision": "float32",
    }


def made_up_shard(folder: Path, k: int, args) -> None:
    """Shard ``k``'s layout file with every tile at a random place (``--shards first``): the
    jobs after the projection read it as they read a projected one."""
    import pandas as pd

    from histoatlas.io.sheet import read_sheet
    from histoatlas.io.slide_h5 import open_slide_h5

    slides = read_sheet(folder / "slides.csv")["slide"].tolist()
    members = slides[k * args.shard_slides : (k + 1) * args.shard_slides]
    rng = np.random.default_rng(k)
    parts = []
    for slide in members:
        with open_slide_h5(folder / "features" / f"{slide}.h5", ("coords",)) as f:
            xy = f["coords"][()]
        raw = rng.normal(0, 5, (len(xy), 2)).astype(np.float32)
        columns = {"slide": slide, "tile": np.arange(len(xy)), "x": xy[:, 0], "y": xy[:, 1]}
        columns |= {"raw_x": raw[:, 0], "raw_y": raw[:, 1], "fitted": False}
        parts.append(pd.DataFrame(columns))
    pd.concat(parts, ignore_index=True).to_parquet(folder / "umap" / f"shard{k}.parquet")
