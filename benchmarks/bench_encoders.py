"""Tiles/s of every encoder preset: the model alone and end to end, float32 and bfloat16.

For each preset a model directory is written as a user writes it (``{"architecture":
<preset>}`` and a weights file in the preset's key layout; untrained weights: the speed
does not depend on them). Transformers are built with ``--depth N`` of their blocks (CNNs
and Swin at full size), and a full-depth estimate is printed beside the measured figure.

- **model alone**: ``Features(model_dir).run_tiles`` on ``--tiles`` uint8 tiles of the
  preset's ``tile_px`` held in memory (the resize/crop on the way in, the forward pass,
  the pooling), the fastest of ``--repeat`` passes;
- **end to end**: ``extract_slide`` on a 4,096 px slide of real H&E (a 1,536 px square of
  tissue; 0.5 um/px) with the preset's tiling: reading, filtering, the same forward pass,
  writing the HDF5 file (its ``tiles_per_s``).

Full-depth estimates: the model alone scales its time per tile by ``depth_full / N`` (the
blocks are nearly all of a ViT's work; the patch embedding, final norm and pooler make the
estimate a little pessimistic); end to end adds to that the time per tile outside the
model measured at depth N (end-to-end time per tile minus model-alone time per tile).

    python benchmarks/bench_encoders.py --depth 1 --tiles 16
    python benchmarks/bench_encoders.py --presets uni,virchow2 --depth 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import OUT, benchmark_slide, header, load

PRECISIONS = ("float32", "bfloat16")


def preset_model_dir(name: str, depth: int | None) -> Path:
    """A model directory for preset ``name``: params.json and untrained weights in the
    preset's layout (under its ``weights_key``, with its ``weights_prefix``)."""
    import torch

    from histoatlas.backends.torch.encoders import build_encoder, resolve_spec

    path = OUT / "encoders" / f"{name}-depth{depth or 'full'}"
    if (path / "params.json").exists():
        return path
    params = {"architecture": name}
    if depth:
        params["architecture_kwargs"] = {"depth": depth}
    spec = resolve_spec(params)
    torch.manual_seed(0)
    model, _ = build_encoder(spec)
    state = getattr(model, "backbone", model).state_dict()
    if spec.weights_prefix:
        state = {f"{spec.weights_prefix}{k}": v for k, v in state.items()}
    if spec.weights_key:
        state = {spec.weights_key: state}
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "weights.pt")
    (path / "params.json").write_text(json.dumps({**params, "weights": "weights.pt"}))
    return path


def full_depth(name: str) -> int | None:
    """Transformer blocks of the preset's ViT (None for Swin and CNNs)."""
    from histoatlas.backends.torch.encoders import build_encoder, gradcam_target

    model, _ = build_encoder(name, device="meta")
    target = gradcam_target(model)  # ViTs: "...blocks.<last>.norm1"
    return int(target.layer.split(".")[-2]) + 1 if target.layout == "tokens" else None


def model_alone(path: Path, tiles: np.ndarray, precision: str, batch: int, repeat: int) -> float:
    """Tiles/s of ``Features.run_tiles`` on tiles in memory (the fastest pass)."""
    from histoatlas.analysis.features import Features

    features = Features(path, device="cpu", batch_size=batch, precision=precision)
    features.run_tiles(tiles[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        features.run_tiles(tiles)
        best = min(best, time.perf_counter() - start)
    return len(tiles) / best


def end_to_end(path: Path, slide: Path, precision: str, batch: int) -> tuple[float, int]:
    """``extract_slide``'s tiles/s and kept tiles on the benchmark slide."""
    from histoatlas.analysis.extract import FeatureOptions, RunOptions, extract_slide
    from histoatlas.backends import read_params
    from histoatlas.io.tiling import TileOptions

    params, _ = read_params(path)
    qc = extract_slide(
        slide,
        OUT / "encoders" / f"{path.name}-{precision}.h5",
        model=path,
        tiles=TileOptions(px=params.tile_px, um=params.tile_um),
        features=FeatureOptions(precision=precision),
        run=RunOptions(batch_size=batch, device="cpu"),
    )
    return qc["tiles_per_s"], qc["n_kept"]


def estimate(alone: float, e2e: float, depth: int | None, full: int | None) -> tuple[float, float]:
    """Full-depth (model alone, end to end) tiles/s from the figures at ``depth``."""
    if not depth or not full:
        return alone, e2e
    outside = max(1 / e2e - 1 / alone, 0.0)  # seconds per tile outside the model
    model_full = (1 / alone) * full / depth
    return 1 / model_full, 1 / (model_full + outside)


def main() -> None:
    from histoatlas.backends.torch.encoders import PRESETS, get_preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--depth", type=int, default=1, help="transformer blocks (0: all)")
    parser.add_argument("--tiles", type=int, default=16, help="tiles for the model alone")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="passes; the fastest counts")
    args = parser.parse_args()
    header("bench_encoders")
    slide = benchmark_slide(4096, box=1536)
    print(
        f"{'preset':15s} {'depth':>6s} {'tiles':>5s} | "
        + " | ".join(f"{p} alone / e2e (full-depth est.)" for p in PRECISIONS)
        + " | load"
    )
    rng = np.random.default_rng(0)
    for name in args.presets.split(","):
        preset = get_preset(name)
        full = full_depth(name)
        depth = args.depth if (args.depth and full) else None
        path = preset_model_dir(name, depth)
        tiles = rng.integers(0, 256, (args.tiles, preset.tile_px, preset.tile_px, 3), np.uint8)
        cells, n_kept = [], 0
        for precision in PRECISIONS:
            alone = model_alone(path, tiles, precision, args.batch, args.repeat)
            e2e, n_kept = end_to_end(path, slide, precision, args.batch)
            est = estimate(alone, e2e, depth, full)
            cells.append(f"{alone:6.2f} / {e2e:6.2f} ({est[0]:6.2f} / {est[1]:6.2f})")
        shown = f"{depth}/{full}" if depth else "full"
        print(f"{name:15s} {shown:>6s} {n_kept:5d} | " + " | ".join(cells) + f" | {load()}")


if __name__ == "__main__":
    main()
