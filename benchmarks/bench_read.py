"""Reading tiles: OpenSlide against the decode-once reader, and what it is worth end to end.

One command, three parts, every figure a ratio taken in one run (rounds alternate the
readers, so a change of load hits both):

1. ``read``: CPU ms of one core (``num_workers=0``) per 224 px tile, reading + resizing +
   grayspace/whitespace filters as ``iter_batches`` does them, and reading alone, for
   ``tiles.reader`` ``openslide`` and ``auto`` (the decode-once reader), on
   ``../shared/testdata/CMU-1-pyramid.tiff`` (real H&E; level 1 has downsample 2.000337:
   fractional offsets) and a ``--size`` px synthetic JPEG-tiled pyramid of real H&E
   (``common.benchmark_slide``): level 0, off-step 300 -> 224 px, and "10x" (level 1).
2. ``memory``: the decode-once reader's cache while it reads every grid tile of the
   synthetic slide, row by row: at most a few tile rows, whatever the slide's height.
3. ``e2e``: ``extract_slide`` on the synthetic slide (2 reading threads, or ``--cores``;
   the CPU schedule)
   with each reader, against the model's forward pass alone on as many tiles held in
   memory, just before and after: MobileNet-V3-L on the whole slide, ResNet-50 on a
   centred ``--resnet-box`` px square of tissue (fewer tiles, same reads).

    python benchmarks/bench_read.py                       # all three, ~4 min on 2 cores
    python benchmarks/bench_read.py --parts read --rounds 5

Prints one line per figure (with the load) and the summary ratios at the end; writes
``benchmarks/out/read.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import namedtuple

import numpy as np
from common import OUT, TESTDATA, Timer, benchmark_slide, header, load, machine, model_dir
from figures import FIGURES, say

SUMMARY: list[str] = []
Batch = namedtuple("Batch", "tiles")


# -- 1. reading, one core ----------------------------------------------------------------


def read_all(path, tiling: dict, reader: str, filters: bool) -> tuple[float, int, str]:
    """(CPU s, tiles) to read a grid's candidates on one core; the slide opened afresh."""
    from histoatlas.io.wsi import WSI

    with WSI(path, **tiling, reader=reader) as wsi:
        coords = wsi.coords_of(wsi.candidates)  # tissue detection: not timed
        with Timer() as t:
            if filters:
                for _ in wsi.iter_batches(64, num_workers=0, prefetch=0):
                    pass
            else:
                for x, y in coords:
                    wsi.read_tile(int(x), int(y))
        return t.cpu, len(coords), wsi.reader_choice.kind


def compare_read(name: str, path, tiling: dict, rounds: int) -> None:
    from histoatlas.io.wsi import WSI

    with WSI(path, **tiling) as wsi:
        level, region, kind = wsi.read_level, wsi._region_px, wsi.reader_choice.kind
        n = len(wsi.candidates)
    if kind != "tiled-jpeg":
        say(f"{name}_skipped", f"fast path not used: {wsi.reader_choice.reason}", None)
        return
    step = "" if region == tiling["tile_px"] else f", resized {region} -> {tiling['tile_px']}"
    print(f"# {name}: {n} tiles, level {level}, {region} px regions{step}", flush=True)
    for filters in (True, False):
        ms: dict[str, list[float]] = {"openslide": [], "auto": []}
        for r in range(rounds):
            for how in ("openslide", "auto") if r % 2 == 0 else ("auto", "openslide"):
                cpu, tiles, _ = read_all(path, tiling, how, filters)
                ms[how].append(1e3 * cpu / tiles)
        slow, fast = statistics.median(ms["openslide"]), statistics.median(ms["auto"])
        what = "read+filters" if filters else "read only"
        key = f"{name}_{'filtered' if filters else 'read'}"
        say(
            key,
            f"{what}: OpenSlide {slow:.2f} ms/tile, decode-once {fast:.2f} ms/tile: "
            f"x{slow / fast:.2f} (rounds: {', '.join(f'{a / b:.2f}' for a, b in zip(ms['openslide'], ms['auto'], strict=True))})",  # noqa: E501
            {"openslide_ms": slow, "fast_ms": fast, "ratio": slow / fast},
        )
        if name.endswith("_level0") and filters:
            SUMMARY.append(
                f"{name}: reading + filtering {fast:.2f} ms of one core per 224 px tile "
                f"(OpenSlide {slow:.2f}, x{slow / fast:.2f})"
            )


# -- 2. memory ---------------------------------------------------------------------------


def memory(path) -> None:
    """The cache while every grid tile of level 0 is read, row by row, by one reader."""
    import tracemalloc

    from histoatlas.io.wsi import WSI

    with WSI(path, 224, 112, otsu=False) as wsi:
        reader = wsi._reader
        geom = reader.geometry(0)
        coords = wsi.coords_of(wsi.candidates)
        tracemalloc.start()
        most = 0
        for x, y in coords:
            wsi.read_tile(int(x), int(y))
            most = max(most, reader.cached_tiles)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        level_tiles = geom.tiles_across * geom.tiles_down
        mib = most * geom.tile_bytes / 2**20
        say(
            "reader_cache",
            f"{len(coords)} tiles read row by row: at most {most} decoded source tiles "
            f"cached ({mib:.0f} MiB = {most / geom.tiles_across:.1f} rows of "
            f"{geom.tiles_across}), of the level's {level_tiles} "
            f"({level_tiles * geom.tile_bytes / 2**20:.0f} MiB decoded); each decoded "
            f"{reader.stats['decoded'] / level_tiles:.2f} times; peak Python-traced memory "
            f"{peak / 2**20:.0f} MiB",
            {"cached_tiles": most, "cache_mib": mib, "decoded": reader.stats["decoded"]},
        )
        SUMMARY.append(
            f"reader memory: cache at most {most} tiles = {mib:.0f} MiB "
            f"({most / geom.tiles_across:.1f} tile rows) on a {geom.width} px level"
        )


# -- 3. end to end -----------------------------------------------------------------------


def model_alone(features, tiles: np.ndarray, n: int) -> tuple[float, float]:
    """(tiles/s, CPU ms/tile) of the forward pass alone on ``n`` tiles cycled from
    ``tiles`` (the CPU settings of extract_slide: every core for torch, freed memory kept)."""
    from histoatlas import runtime

    bs = features.batch_size

    def batches():
        for start in range(0, n, bs):
            yield Batch(tiles[np.arange(start, min(n, start + bs)) % len(tiles)])

    with features.model.cpu_threads(0), runtime.keep_freed_memory(True):
        features.run_tiles(tiles[:bs])  # warm-up
        with Timer() as t:
            for _ in features.iter_features(batches(), prefetch_depth=0):
                pass
    return n / t.wall, 1e3 * t.cpu / n


def extract(slide, loaded, reader: str, workers: int) -> dict:
    from histoatlas.analysis.extract import RunOptions, extract_slide
    from histoatlas.io.tiling import TileOptions

    return extract_slide(
        slide,
        OUT / "bench_read.h5",
        model=loaded,
        tiles=TileOptions(px=224, um=112, reader=reader),
        run=RunOptions(batch_size=32, num_workers=workers, progress_every=1e9),
    )


def e2e(name: str, slide, rounds: int, workers: int) -> None:
    from histoatlas.analysis.features import Features
    from histoatlas.backends import load_model
    from histoatlas.io.wsi import WSI

    loaded = load_model(model_dir(name), device="cpu")
    features = Features(loaded, batch_size=32)
    with WSI(slide, 224, 112) as wsi:
        picks = wsi.candidates[np.linspace(0, len(wsi.candidates) - 1, 256).astype(int)]
        tiles = np.stack([wsi[i, j] for i, j in picks])
    ratios: dict[str, list[float]] = {"openslide": [], "auto": []}
    read_ms: dict[str, list[float]] = {"openslide": [], "auto": []}
    model_ms: list[float] = []
    n = extract(slide, loaded, "auto", workers)["n_kept"]  # warm-up: oneDNN's kernels, page cache
    for r in range(rounds):
        for reader in ("openslide", "auto") if r % 2 == 0 else ("auto", "openslide"):
            before = model_alone(features, tiles, n)
            qc = extract(slide, loaded, reader, workers)
            after = model_alone(features, tiles, n)
            alone = 2 / (1 / before[0] + 1 / after[0])
            model_ms.append((before[1] + after[1]) / 2)
            ratio = qc["tiles_per_s"] / alone
            ratios[reader].append(ratio)
            read_ms[reader].append(qc["read_ms_per_tile"])
            say(
                f"{name}_{reader}_round{r}",
                f"end to end {qc['tiles_per_s']:.1f} tiles/s ({qc['reader']}, reading "
                f"{qc['read_ms_per_tile']:.2f} CPU ms/tile), model alone {alone:.1f} tiles/s "
                f"({model_ms[-1]:.1f} CPU ms/tile): ratio {ratio:.3f} ({n} tiles)",
                {"e2e": qc["tiles_per_s"], "alone": alone, "ratio": ratio, "tiles": n},
            )
    med = {k: statistics.median(v) for k, v in ratios.items()}
    cpu = statistics.median(model_ms)
    # the most a shared CPU gives when reading takes turns with the model
    bound = {k: cpu / (cpu + statistics.median(v)) for k, v in read_ms.items()}
    say(f"{name}_median", f"median ratio: decode-once {med['auto']:.3f}, OpenSlide "
        f"{med['openslide']:.3f}; CPU-time bound {bound['auto']:.3f} vs "
        f"{bound['openslide']:.3f}", {"ratio": med, "bound": bound})  # fmt: skip
    SUMMARY.append(
        f"{name}: end to end / model alone {med['auto']:.3f} with the decode-once reader, "
        f"{med['openslide']:.3f} with OpenSlide (median of {rounds}); reading in situ "
        f"{statistics.median(read_ms['auto']):.2f} vs "
        f"{statistics.median(read_ms['openslide']):.2f} CPU ms/tile against the model's "
        f"{cpu:.1f}: bound model / (model + read) {bound['auto']:.3f} vs {bound['openslide']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_240, help="synthetic slide side (px)")
    parser.add_argument("--resnet-box", type=int, default=4_000, help="ResNet-50's tissue")
    parser.add_argument("--mobilenet-box", type=int, default=None, help="(default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="read,memory,e2e")
    parser.add_argument("--models", default="mobilenet_v3_large,resnet50")
    parser.add_argument(
        "--cores", type=int, default=None, help="run on this many cores (model threads and "
        "readers); 1 keeps the ratios steady on a machine others load",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cores:  # before torch starts its thread pool
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    parts = set(args.parts.split(","))
    header("bench_read")
    FIGURES["machine"] = machine()
    t0 = time.perf_counter()
    slide = benchmark_slide(args.size)
    if "read" in parts:
        pyramid = TESTDATA / "CMU-1-pyramid.tiff"
        for name, path, tiling in [
            ("cmu_pyramid_level0", pyramid, dict(tile_px=224, tile_um=112)),
            ("cmu_pyramid_offstep_300", pyramid, dict(tile_px=224, tile_um=150, mpp=0.5)),
            ("cmu_pyramid_10x_level1", pyramid, dict(tile_px=224, tile_um="10x")),
            (f"synthetic_{args.size}_level0", slide, dict(tile_px=224, tile_um=112)),
            (f"synthetic_{args.size}_offstep_300", slide, dict(tile_px=224, tile_um=150)),
        ]:
            compare_read(name, path, tiling, args.rounds)
    if "memory" in parts:
        memory(slide)
    if "e2e" in parts:
        for name in args.models.split(","):
            box = args.resnet_box if name == "resnet50" else args.mobilenet_box
            e2e(name, benchmark_slide(args.size, box=box), args.rounds, args.cores or 2)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "read.json").write_text(json.dumps(FIGURES, indent=2, default=str))
    print(f"# {time.perf_counter() - t0:.0f} s; figures in {OUT / 'read.json'}; summary:")
    for line in SUMMARY:
        print(f"#   {line}  [load {load()}]")


if __name__ == "__main__":
    main()
