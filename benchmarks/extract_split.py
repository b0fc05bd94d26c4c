"""bench_extract's split: where the time outside the model goes (one core, no model)."""

from __future__ import annotations

import numpy as np
from common import OUT, Timer
from figures import FIGURES, children_cpu, say


def split(slide, args) -> None:
    """Where the time outside the model goes, one core, no model."""
    split_read_and_filter(slide, args)
    split_read_resize(slide, args)
    for readers in args.readers:
        for workers in args.workers:
            split_read_only(slide, args, readers, workers)
    split_h5_write(slide)


def split_read_and_filter(slide, args) -> None:
    """Tissue detection, then reading and filtering tiles one by one on one core."""
    from histoatlas.io import tissue
    from histoatlas.io.wsi import WSI

    with WSI(slide, 224, args.tile_um) as wsi:
        with Timer() as t:
            cand = wsi.candidates
        say(
            "tissue_detection",
            f"{t.wall:.2f} s wall, {t.cpu:.2f} s CPU for a {wsi.dimensions[0]} px slide "
            f"(grid {wsi.grid_shape}, {len(cand)} candidates)",
            {"wall_s": t.wall, "cpu_s": t.cpu, "candidates": len(cand)},
        )
        n = min(len(cand), args.split_tiles)
        coords = wsi.coords_of(cand[:n])
        with Timer() as t:
            tiles = np.stack([wsi.read_tile(x, y) for x, y in coords])
        read_ms = 1e3 * t.cpu / n
        with Timer() as t:
            for k in range(0, n, 64):
                tissue.passes_filters(tiles[k : k + 64])
        filter_ms = 1e3 * t.cpu / n
        say(
            "read_per_tile",
            f"read + decode + colour conversion {read_ms:.2f} ms, filters {filter_ms:.2f} ms "
            f"of one core per 224 px tile (level {wsi.read_level}, {n} tiles)",
            {"read_ms": read_ms, "filter_ms": filter_ms, "tiles": n},
        )


def split_read_resize(slide, args) -> None:
    """A tile size off the pyramid's steps: read 300 px at level 0, resize to 224."""
    from histoatlas.io.wsi import WSI

    with WSI(slide, 224, 150) as wsi:
        cand = wsi.candidates[: min(args.split_tiles, 1024)]
        with Timer() as t:
            for x, y in wsi.coords_of(cand):
                wsi.read_tile(x, y)
        say(
            "read_resize_per_tile",
            f"{1e3 * t.cpu / len(cand):.2f} ms of one core per tile read at "
            f"{wsi._region_px} px and resized to 224 (tile_um=150)",
            1e3 * t.cpu / len(cand),
        )


def split_read_only(slide, args, readers: str, workers: int) -> None:
    """Reading alone (no model) with ``workers`` threads or processes."""
    from histoatlas.io.wsi import WSI

    with WSI(slide, 224, args.tile_um) as wsi:
        _ = wsi.candidates  # tissue detection outside the timing
        n_read = 0
        c0 = children_cpu()
        with Timer() as t:
            for batch in wsi.iter_batches(
                128, num_workers=workers, processes=readers == "processes"
            ):
                n_read += len(batch.tiles)
                if n_read >= args.split_tiles * 2:
                    break
    cpu = 1e3 * (t.cpu + children_cpu() - c0) / n_read
    say(
        f"read_only_{readers}_{workers}",
        f"{n_read / t.wall:.0f} tiles/s reading alone with {workers} {readers} "
        f"({cpu:.2f} CPU ms/tile)",
        {"tiles_per_s": n_read / t.wall, "cpu_ms": cpu},
    )


def split_h5_write(slide) -> None:
    """The h5 write of a whole slide's activations (ResNet-50's 2048 features)."""
    from histoatlas.io.slide_h5 import write_slide_h5

    n = FIGURES["tissue_detection"]["candidates"]
    rng = np.random.default_rng(0)
    feats = rng.random((n, 2048), dtype=np.float32)
    attrs = {
        "slide": "bench",
        "slide_path": str(slide),
        "mpp": 0.5,
        "level0_width": 1,
        "level0_height": 1,
        "tile_px": 224,
        "tile_um": 112.0,
        "patch_size_level0": 224,
        "stride_div": 1,
        "grid_shape": (1, 1),
        "layers": ["postconv"],
        "layer_slices": {"postconv": [0, 2048]},
        "pooling": "avg",
        "model": "m",
        "model_sha256": "0",
        "class_names": ["a", "b"],
        "histoatlas_version": "0",
    }
    with Timer() as t:
        write_slide_h5(
            OUT / "bench_write.h5",
            features=feats,
            coords=np.zeros((n, 2), np.int64),
            grid=np.zeros((n, 2), np.int32),
            predictions=np.zeros((n, 2), np.float32),
            attrs=attrs,
        )
    size = (OUT / "bench_write.h5").stat().st_size / 2**20
    say(
        "h5_write",
        f"{t.wall:.2f} s for {n} tiles x 2048 features ({size:.0f} MiB)",
        {"wall_s": t.wall, "tiles": n, "mib": size},
    )
