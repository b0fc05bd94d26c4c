"""Tiles/s of the encoder presets, the model alone, at float32 and bfloat16 (autocast).

Each preset is built with untrained weights (the speed does not depend on them), at full
size or, with ``--depth N``, with N transformer blocks (CNNs stay full size); a reduced
build also prints the full-depth estimate (time per tile scaled by depth / N: the blocks
are nearly all of the work). Input: random tiles of the preset's ``tile_px``. The fastest
of ``--repeat`` passes counts (the machine may be shared).

    python benchmarks/bench_encoders.py --presets uni,virchow2 --depth 4 --tiles 16
"""

from __future__ import annotations

import argparse
import time

from common import header, machine


def tiles_per_second(model, x, batch: int, precision: str, repeat: int = 3) -> float:
    import contextlib

    import torch

    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )
    best = float("inf")
    with torch.inference_mode(), autocast:
        model(x[:batch])  # warm-up
        for _ in range(repeat):  # the best pass: on a shared machine the others are slowed
            start = time.perf_counter()
            for i in range(0, len(x), batch):
                model(x[i : i + batch])
            best = min(best, time.perf_counter() - start)
    return len(x) / best


def main() -> None:
    import torch

    from histoatlas.encoders import PRESETS, build_encoder, get_preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks (default: all)")
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="passes; the fastest counts")
    args = parser.parse_args()
    header("bench_encoders")
    print(machine(), f"torch threads {torch.get_num_threads()}")
    print(f"{'preset':15s} {'depth':>9s} {'fp32 t/s':>9s} {'bf16 t/s':>9s}  full-depth est.")
    for name in args.presets.split(","):
        preset = get_preset(name)
        full = _default_depth(name)
        depth = args.depth if (args.depth and full) else None
        kwargs = {"depth": depth} if depth else {}
        model, _ = build_encoder({"architecture": name, "architecture_kwargs": kwargs})
        x = torch.randn(args.tiles, 3, preset.tile_px, preset.tile_px)
        speeds = [
            tiles_per_second(model, x, args.batch, p, args.repeat) for p in ("float32", "bfloat16")
        ]
        estimate = ""
        if depth:
            estimate = " / ".join(f"{s * depth / full:.2f}" for s in speeds)
        shown = f"{depth}/{full}" if depth else "full"
        print(f"{name:15s} {shown:>9s} {speeds[0]:9.2f} {speeds[1]:9.2f}  {estimate}", flush=True)
        del model


def _default_depth(name: str) -> int | None:
    """Transformer blocks of the preset's ViT (None for Swin and CNNs)."""
    from histoatlas.encoders import build_encoder, gradcam_target

    model, _ = build_encoder(name, device="meta")
    target = gradcam_target(model)  # ViTs: "...blocks.<last>.norm1"
    if target.layout != "tokens":
        return None
    return int(target.layer.split(".")[-2]) + 1


if __name__ == "__main__":
    main()
