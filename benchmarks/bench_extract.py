"""Extraction throughput, end to end against the model alone, as ratios taken in one run.

For each model: ``extract_slide`` on a synthetic JPEG-tiled slide (tiles/s of reading +
filtering + inference, the figure its log reports) against the model's forward pass alone
on the same number of tiles held in memory (cycled through a buffer of real tiles of the
slide), alternated ``--rounds`` times so that a change of load hits both. Also: the split
of the work outside the model (read + decode + colour conversion per tile, the tissue
filters, resizing, tissue detection, the h5 write), reading alone with 1..N workers, and
bf16/fp16 autocast (speed, and how far its activations are from float32).

    python benchmarks/bench_extract.py                         # CPU: both models
    python benchmarks/bench_extract.py --device cuda --size 20000 --models resnet50 \\
        --workers 1,2,4,8 --readers threads,processes            # GPU

Prints one line per figure and writes them to ``benchmarks/out/extract_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import namedtuple

import numpy as np
from common import (
    OUT,
    Timer,
    benchmark_slide,
    header,
    machine,
    model_dir,
)
from extract_split import split
from figures import FIGURES, children_cpu, say

Batch = namedtuple("Batch", "tiles")


def kept_tiles(slide, tile_um: float, n: int) -> np.ndarray:
    """``n`` kept tiles spread over the slide (real pixels for the model-only runs)."""
    from histoatlas.io.wsi import WSI

    with WSI(slide, 224, tile_um) as wsi:
        cand = wsi.candidates
        picks = cand[np.linspace(0, len(cand) - 1, 2 * n).astype(int)]
        tiles = np.stack([wsi[i, j] for i, j in picks])
        return tiles[wsi._filter(tiles)][:n]


def forward_only(
    features, tiles: np.ndarray, n: int, *, overlap: bool, keep_memory: bool = True
) -> tuple[float, float]:
    """(tiles/s, CPU ms/tile) of the model alone on ``n`` tiles cycled from ``tiles``.

    On the CPU, under the same malloc setting as ``extract_slide`` (``keep_memory``).
    """
    from histoatlas.runtime import keep_freed_memory

    bs = features.batch_size

    def batches():
        for start in range(0, n, bs):
            idx = np.arange(start, min(n, start + bs)) % len(tiles)
            yield Batch(tiles[idx])

    on_cpu = features.model.device.startswith("cpu")
    with keep_freed_memory(keep_memory and on_cpu):
        features.run_tiles(tiles[:bs])  # warm-up (cuDNN/oneDNN pick their kernels)
        with Timer() as t:
            for _ in features.iter_features(batches(), prefetch_depth=2 if overlap else 0):
                pass
    return n / t.wall, 1e3 * t.cpu / n


def end_to_end(slide, loaded, args, *, precision: str = "float32", **run) -> dict:
    """``extract_slide``'s report on the benchmark slide; ``run``: RunOptions fields."""
    from histoatlas.analysis.extract import FeatureOptions, RunOptions, extract_slide
    from histoatlas.io.tiling import TileOptions

    c0 = children_cpu()
    with Timer() as t:
        qc = extract_slide(
            slide,
            OUT / "bench_extract.h5",
            model=loaded,
            tiles=TileOptions(px=224, um=args.tile_um, reader=args.reader),
            features=FeatureOptions(precision=precision),
            run=RunOptions(batch_size=args.batch_size, **run),
        )
    # CPU of the whole job per kept tile (reader processes included once reaped)
    qc["cpu_ms_per_tile"] = 1e3 * (t.cpu + children_cpu() - c0) / qc["n_kept"]
    return qc


def precision_check(loaded, tiles: np.ndarray, args, name: str) -> None:
    """Autocast speed against float32, and how far its activations are."""
    from histoatlas.analysis.features import Features

    ref = Features(loaded, batch_size=args.batch_size)
    n = args.precision_tiles
    fp32_rate, _ = forward_only(ref, tiles, n, overlap=args.device != "cpu")
    a = ref.run_tiles(tiles)[0].astype(np.float64)
    for precision in ("bfloat16", "float16") if args.device != "cpu" else ("bfloat16",):
        low = Features(loaded, batch_size=args.batch_size, precision=precision)
        rate, _ = forward_only(low, tiles, n, overlap=args.device != "cpu")
        b = low.run_tiles(tiles)[0].astype(np.float64)
        rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        say(
            f"{name}_{precision}",
            f"{precision} autocast {rate:.1f} tiles/s vs float32 {fp32_rate:.1f} "
            f"(x{rate / fp32_rate:.2f}); activations vs float32: relative L2 error median "
            f"{np.median(rel):.2e}, max {rel.max():.2e}; cosine min {cos.min():.6f} "
            f"({len(a)} tiles, {a.shape[1]} features)",
            {
                "rate": rate,
                "fp32_rate": fp32_rate,
                "speedup": rate / fp32_rate,
                "rel_l2_median": float(np.median(rel)),
                "rel_l2_max": float(rel.max()),
                "cos_min": float(cos.min()),
            },
        )


def check(slide, tiles: np.ndarray, args) -> None:
    """Same activations whichever way they are computed (the GPU path included)."""
    from histoatlas.analysis.features import Features
    from histoatlas.backends import load_model
    from histoatlas.io.slide_h5 import read_slide_h5

    loaded = load_model(model_dir("mobilenet_v3_large"), device=args.device)
    features = Features(loaded, batch_size=32)
    direct = features.run_tiles(tiles[:96])[0]
    streamed = [f for _, f, _ in features.iter_features([Batch(tiles[:40]), Batch(tiles[40:96])])]
    np.testing.assert_allclose(np.concatenate(streamed), direct, rtol=1e-4, atol=1e-5)
    results = []
    for processes in (False, True):
        end_to_end(slide, loaded, args, num_workers=3, reader_processes=processes)
        results.append(read_slide_h5(OUT / "bench_extract.h5"))
    np.testing.assert_array_equal(results[0].coords, results[1].coords)
    np.testing.assert_allclose(results[0].features, results[1].features, rtol=1e-4, atol=1e-5)
    say(
        "check", f"ok: streamed = direct activations, threads = processes ({len(results[0])} tiles)"
    )


def compare(slide, name: str, args, tiles: np.ndarray) -> None:
    """End to end against the model alone, alternated ``args.rounds`` times."""
    import torch

    from histoatlas.analysis.features import Features
    from histoatlas.backends import load_model

    loaded = load_model(model_dir(name), device=args.device)
    on_cpu = args.device == "cpu"
    runs = []  # (label, extract_slide kwargs)
    for precision in args.precisions:
        if on_cpu:
            for policy in args.policies:
                for workers in args.workers:
                    kwargs = {
                        "overlap": policy == "overlap",
                        "num_workers": workers,
                        "precision": precision,
                    }
                    runs.append((f"{policy}{workers}_{precision}", kwargs))
        else:
            for readers in args.readers:
                for workers in args.workers:
                    kwargs = {
                        "num_workers": workers,
                        "reader_processes": readers == "processes",
                        "precision": precision,
                    }
                    runs.append((f"{readers}{workers}_{precision}", kwargs))
    results: dict[str, list] = {}
    models = {p: Features(loaded, batch_size=args.batch_size, precision=p) for p in args.precisions}
    if on_cpu:  # what keeping freed memory (extract_slide on the CPU) is worth
        plain = forward_only(models["float32"], tiles, 512, overlap=False, keep_memory=False)
        kept = forward_only(models["float32"], tiles, 512, overlap=False)
        say(
            f"{name}_malloc",
            f"model alone {plain[0]:.1f} tiles/s with glibc's default malloc, {kept[0]:.1f} "
            f"keeping freed memory (x{kept[0] / plain[0]:.2f}; CPU ms/tile {plain[1]:.1f} "
            f"vs {kept[1]:.1f})",
            {"default": plain[0], "kept": kept[0]},
        )
    n = None
    for r in range(args.rounds):
        for label, kwargs in runs:
            features = models[kwargs["precision"]]
            # the model alone just before and just after, on as many tiles
            before = forward_only(features, tiles, n, overlap=not on_cpu) if n else None
            qc = end_to_end(slide, loaded, args, **kwargs)
            n = qc["n_kept"]
            after = forward_only(features, tiles, n, overlap=not on_cpu)
            before = before or after
            fwd = 2 / (1 / before[0] + 1 / after[0])  # tiles/s of both runs together
            fwd_cpu = (before[1] + after[1]) / 2
            ratio = qc["tiles_per_s"] / fwd
            threads = torch.get_num_threads()
            say(
                f"{name}_{label}_round{r}",
                f"end to end {qc['tiles_per_s']:.1f} tiles/s, model alone {fwd:.1f} tiles/s: "
                f"ratio {ratio:.3f}; CPU ms/tile {qc['cpu_ms_per_tile']:.1f} vs "
                f"{fwd_cpu:.1f} (CPU-time ratio {fwd_cpu / qc['cpu_ms_per_tile']:.3f}); "
                f"{n} tiles, batch {features.batch_size}, torch threads {threads}",
                {
                    "e2e": qc["tiles_per_s"],
                    "forward": fwd,
                    "ratio": ratio,
                    "cpu_ratio": fwd_cpu / qc["cpu_ms_per_tile"],
                    "tiles": n,
                    "seconds_total": qc["seconds_total"],
                },
            )
            results.setdefault(label, []).append(ratio)
    for label, ratios in results.items():
        say(
            f"{name}_{label}_median",
            f"median ratio {statistics.median(ratios):.3f} over {len(ratios)} round(s)",
            statistics.median(ratios),
        )
    if args.precision_tiles:
        precision_check(loaded, tiles, args, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40_000, help="slide edge in pixels")
    parser.add_argument("--box", type=int, default=None, help="tissue only in a centred square")
    parser.add_argument("--tile-um", type=float, default=112.0, help="224 px tiles of this")
    parser.add_argument("--models", default="resnet50,mobilenet_v3_large")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", default="2", help="reader workers, comma-separated")
    parser.add_argument("--readers", default="threads", help="threads and/or processes")
    parser.add_argument("--reader", default="auto", help="tiles.reader: auto, openslide, fast")
    parser.add_argument("--policies", default="serial,overlap", help="CPU: serial, overlap")
    parser.add_argument("--precisions", default="float32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--split-tiles", type=int, default=2048, help="tiles for the split")
    parser.add_argument("--precision-tiles", type=int, default=256, help="0: skip autocast")
    parser.add_argument("--no-split", action="store_true")
    parser.add_argument("--check", action="store_true", help="check the paths agree first")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    args.readers = args.readers.split(",")
    args.policies = args.policies.split(",")
    args.precisions = args.precisions.split(",")

    import torch  # noqa: F401  (so the header names the GPU)

    header("extract")
    slide = benchmark_slide(args.size, box=args.box)
    FIGURES["machine"] = machine()
    if not args.no_split:
        split(slide, args)
    tiles = kept_tiles(slide, args.tile_um, 256)
    if args.check:
        check(slide, tiles, args)
    for name in args.models.split(","):
        compare(slide, name, args, tiles)
    out = OUT / f"extract_{args.device}.json"
    out.write_text(json.dumps(FIGURES, indent=1, default=float))
    print(f"# figures in {out}; finished {time.strftime('%H:%M:%S')}", flush=True)


if __name__ == "__main__":
    main()
