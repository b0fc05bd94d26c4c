"""Mosaic maps: grid selection against the number of points, and composing the canvas.

Selection (``select_tiles``, ``nearest`` and ``first``, 50 x 50 cells) on 10^4, 10^5 and
10^6 seeded random points, best of ``--repeat``; then a 2,500-cell mosaic composed from
tiles in memory and from tiles read back from a 40,000 px slide, as the workflow does.

    python benchmarks/bench_mosaic.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import OUT, Timer, benchmark_slide, header, machine
from figures import FIGURES, say


def selection(sizes: list[int], repeat: int) -> None:
    from histoatlas.analysis.mosaic_grid import select_tiles

    rng = np.random.default_rng(0)
    for how in ("nearest", "first"):
        previous = None
        for n in sizes:
            coords = rng.random((n, 2))
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                grid = select_tiles(coords, 50, tile_select=how)
                times.append(time.perf_counter() - t)
            best = min(times)
            growth = f", x{best / previous:.1f} for x10 points" if previous else ""
            say(
                f"select_{how}_{n}",
                f"{how}: {1e3 * best:.1f} ms for {n:.0e} points ({(grid >= 0).sum()} cells "
                f"filled; {1e9 * best / n:.0f} ns/point{growth})",
                best,
            )
            previous = best


def composition(args) -> None:
    import pandas as pd

    from histoatlas.analysis.mosaic import Mosaic
    from histoatlas.io.wsi import WSI

    rng = np.random.default_rng(1)
    n = 4 * 2500
    coords = rng.random((n, 2))
    # tiles in memory, already at the mosaic's 64 px: composing only
    tiles = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    mosaic = Mosaic(tiles, coords, num_tiles_x=50, tile_px=64)
    with Timer() as t:
        image = mosaic.render()
    cells = int((mosaic.grid >= 0).sum())
    say(
        "compose_memory",
        f"{t.wall:.3f} s to compose {cells} tiles of 64 px from memory ({image.shape[1]} px)",
        t.wall,
    )
    with Timer() as t:
        mosaic.save(OUT / "bench_mosaic.png")
    say("save_png", f"{t.wall:.2f} s to save it as PNG", t.wall)

    # tiles read back from a slide, as render_mosaic does (224 px / 112 um tiles shown at 64 px)
    slide = benchmark_slide(args.size)
    with WSI(slide, 224, 112) as wsi:
        cand = wsi.candidates
        xy = wsi.coords_of(cand[rng.choice(len(cand), n, replace=False)])
    refs = pd.DataFrame({"slide": "s", "x": xy[:, 0], "y": xy[:, 1]})
    slides = pd.DataFrame({"slide": ["s"], "path": [str(slide)], "mpp": [0.5], "tile_um": [112.0]})
    for workers in args.workers:
        mosaic = Mosaic(
            refs, coords, slides=slides, num_tiles_x=50, tile_px=64, num_workers=workers
        )
        with Timer() as t:
            mosaic.render()
        say(
            f"compose_slide_{workers}",
            f"{t.wall:.2f} s to read {cells} tiles back from a {args.size} px slide at 64 px "
            f"and compose them, {workers} threads ({1e3 * t.cpu / cells:.2f} CPU ms/tile)",
            t.wall,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=40_000, help="slide edge for read-back")
    parser.add_argument("--workers", default="2", help="reading threads, comma-separated")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    header("mosaic")
    FIGURES["machine"] = machine()
    selection([int(s) for s in args.sizes.split(",")], args.repeat)
    composition(args)
    (OUT / "mosaic.json").write_text(json.dumps(FIGURES, indent=1, default=float))


if __name__ == "__main__":
    main()
