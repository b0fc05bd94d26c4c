"""Memory of extracting one large slide: 200,000 tiles x 1,536 features, above the model's own.

The slide: the benchmark slide (``common.benchmark_slide``, real H&E texture) of ``--size``
px at 0.5 um/px, cut into 32 px tiles of 16 um: ~212,000 tiles at 16,000 px. The model: the
demo CNN (width 8) with a 1,536-way linear head, extracting its ``output`` layer, so the
activations are 1,536-d while the network costs next to nothing (a wide encoder's own memory
is the same for every slide; what grows with the slide is what extraction holds).

Three processes, each measured by ``wait4`` (peak RSS): the model alone (loaded, one batch
through ``Features``), the extraction with this tree's writer (batch by batch into the file),
and, with ``--before <tree>`` (e.g. ``git archive bbe068f workflow/scripts | tar -x -C
/tmp/before``), the same extraction with another tree's code.

    python benchmarks/bench_extract_memory.py --before /tmp/before/workflow/scripts
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, ROOT, benchmark_slide, header, load, machine

WIDTH = 1536
TILE_PX, TILE_UM = 32, 16


def model_dir() -> Path:
    """The demo CNN with a 1,536-way head, in a model directory (seeded weights)."""
    import torch

    from histoatlas.backends.torch.architectures import demo_cnn

    folder = OUT / f"model_demo_cnn_{WIDTH}"
    if (folder / "params.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    kwargs = {"num_classes": WIDTH, "width": 8}
    torch.save(demo_cnn(**kwargs).state_dict(), folder / "weights.pt")
    # the keys every version reads (a newer ModelParams writes keys an older one refuses)
    params = {"architecture": "demo_cnn", "architecture_kwargs": kwargs}
    params |= {"tile_px": TILE_PX, "tile_um": TILE_UM}
    (folder / "params.json").write_text(json.dumps(params))
    return folder


def child(what: str, slide: str, model: str, out: str) -> dict:
    """In this process: the model alone, or the whole extraction, with the code of the tree
    in ``HISTOATLAS_TREE`` (ahead of the one ``common`` puts first on the path)."""
    sys.path.insert(0, os.environ["HISTOATLAS_TREE"])
    if what == "model":
        import numpy as np

        from histoatlas.analysis.features import Features

        features = Features(model, ["output"], include_preds=False)
        tiles = np.random.default_rng(0).integers(0, 255, (32, TILE_PX, TILE_PX, 3), np.uint8)
        return {"width": int(features(tiles).shape[1]), "code": _code()}
    from histoatlas.analysis.extract import FeatureOptions, RunOptions, extract_slide
    from histoatlas.io.tiling import TileOptions

    qc = extract_slide(
        slide,
        out,
        model=model,
        tiles=TileOptions(px=TILE_PX, um=TILE_UM),
        features=FeatureOptions(layers=("output",), include_preds=False),
        run=RunOptions(num_workers=2, progress_every=60),
    )
    return {"n_kept": qc["n_kept"], "seconds": qc["seconds_total"], "code": _code()}


def _code() -> str:
    """Where the histoatlas this process ran came from."""
    import histoatlas

    return str(Path(histoatlas.__file__).parent.parent)


def measure(what: str, slide, model, out, tree: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", what, str(slide), str(model), str(out)]
    env = {**os.environ, "HISTOATLAS_TREE": str(tree)}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{what} failed with {tree}")
    report = json.loads(text.strip().splitlines()[-1])
    return {"peak_mib": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - t, **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16_000, help="slide side, px")
    parser.add_argument("--before", type=Path, help="another tree's workflow/scripts")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)), flush=True)
        return
    header("extract_memory")
    here = ROOT / "workflow" / "scripts"
    slide, model = benchmark_slide(args.size), model_dir()
    figures = {"machine": machine()}
    own = measure("model", slide, model, "", here)
    print(f"model alone: peak {own['peak_mib']:.0f} MiB ({own['width']}-d)  [load {load()}]")
    trees = {"this tree": here, **({"before": args.before} if args.before else {})}
    for name, tree in trees.items():
        out = OUT / f"extract_memory_{name.replace(' ', '_')}.h5"
        out.unlink(missing_ok=True)
        r = measure("extract", slide, model, out, tree)
        above = r["peak_mib"] - own["peak_mib"]
        size = out.stat().st_size / 2**20
        print(
            f"extract ({name}): {r['n_kept']:,} tiles x {WIDTH} in {r['seconds']:.0f} s, peak "
            f"{r['peak_mib']:.0f} MiB = {above:.0f} MiB above the model alone (the file: "
            f"{size:.0f} MiB; code from {r['code']})  [load {load()}]",
            flush=True,
        )
        figures[name] = {**r, "above_model_mib": above}
        out.unlink()
    figures["model"] = own
    (OUT / "extract_memory.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
