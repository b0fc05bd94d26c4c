"""The atlas page at 10^4 and 10^6 tiles: build time, first paint and memory in Chromium.

For each size a synthetic cohort's atlas inputs are written (UMAP coordinates in 12
blobs, 200 slides whose tiles are read back from two 4,096 px synthetic slides, labels
subtype / slide / prediction / uncertainty / cluster, a 50 x 50 mosaic), the atlas is
built with the default settings (224 px mosaic tiles, 20,000 thumbnails), and the page is
opened from ``file://`` in Debian's Chromium (headless, software rendering) ``--repeat``
times, each in a fresh browser:

- first paint: the page's own ``performance.now()`` (from navigation start) two frames
  after the scatter of every point is first drawn; also the time the rest of the data
  (tile details, every label) took to arrive;
- memory after that, garbage collected: the JS heap (Chrome DevTools Protocol
  ``Performance.getMetrics``) and the renderer process's unique set size (psutil);
- fluidity: one redraw of the scatter (pan/zoom frame), a hover pick and a box selection
  of the whole map, each the median of 20 runs in the page.

The page cache is dropped before each open when allowed (root), so "from disk" means it.

    python benchmarks/bench_atlas.py                 # 10^4 and 10^6
    python benchmarks/bench_atlas.py --sizes 10000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import OUT, ROOT, header
from figures import FIGURES, say

sys.path.insert(0, str(ROOT))  # the tests' browser set-up: one list of Chromium flags
from tests.browser import LAUNCH_ARGS  # noqa: E402

SLIDE_PX = 4096
PATCH = 224  # level-0 px per tile (112 um at 0.5 um/px)


def write_slides(folder: Path) -> list[Path]:
    """Two 4,096 px pyramidal slides of blocky H&E-like texture (0.5 um/px)."""
    from histoatlas.io.tiff import write_pyramid_tiff

    paths = []
    for k in range(2):
        path = folder / f"slide{k}.tiff"
        if not path.exists():
            rng = np.random.default_rng(k)
            cells = rng.uniform(0, 0.7, (SLIDE_PX // 8, SLIDE_PX // 8, 1)).astype(np.float32)
            mix = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)
            pink, purple = np.array([235, 150, 200]), np.array([110, 50, 150])
            image = np.round(pink * (1 - mix) + purple * mix).astype(np.uint8)
            write_pyramid_tiff(path, image, 0.5, n_levels=4)
        paths.append(path)
    return paths


def cohort(n: int, slide_files: list[Path], seed: int = 0) -> dict:
    """Atlas inputs of ``n`` tiles on 200 slides (each a view of one of the slide files)."""
    from histoatlas.analysis.mosaic import Mosaic

    rng = np.random.default_rng(seed)
    n_slides, per_axis = 200, SLIDE_PX // PATCH
    blob = rng.integers(0, 12, n)
    centres = rng.uniform(0.15, 0.85, (12, 2))
    umap = np.clip(centres[blob] + rng.normal(0, 0.06, (n, 2)), 0, 1)
    slide = np.sort(rng.integers(0, n_slides, n))
    tile = np.arange(n) - np.searchsorted(slide, slide)
    position = tile % (per_axis * per_axis)
    names = np.asarray([f"slide-{k:03d}" for k in range(n_slides)], dtype=object)
    probs = rng.dirichlet([0.5, 0.5, 0.5], n)
    classes = np.asarray(["tumour", "stroma", "normal"], dtype=object)
    points = pd.DataFrame(
        {
            "slide": names[slide],
            "tile": tile,
            "x": (position % per_axis) * PATCH,
            "y": (position // per_axis) * PATCH,
            "umap_x": umap[:, 0],
            "umap_y": umap[:, 1],
        }
    )
    for k, c in enumerate(classes):
        points[f"pred_{c}"] = probs[:, k].astype(np.float32)
    slides = pd.DataFrame(
        {
            "slide": names,
            "path": [str(slide_files[k % len(slide_files)]) for k in range(n_slides)],
            "mpp": 0.5,
            "tile_px": 224,
            "tile_um": 112.0,
            "patch_size_level0": PATCH,
        }
    )
    keys = points[["slide", "tile", "x", "y"]]
    mosaic = Mosaic(keys, umap, slides=slides, num_tiles_x=50).manifest()
    from histoatlas.analysis.map_labels import normalized_entropy

    labels = {
        "subtype": np.asarray(["luminal A", "luminal B", "HER2", "basal"], dtype=object)[blob % 4],
        "slide": points["slide"].to_numpy(),
        "prediction": classes[probs.argmax(axis=1)],
        "uncertainty": normalized_entropy(probs),
        "cluster": blob,
    }
    return {"points": points, "slides": slides, "mosaic": mosaic, "labels": labels}


def build(n: int, folder: Path, slide_files: list[Path]) -> Path:
    from histoatlas.atlas import build_atlas

    inputs = cohort(n, slide_files)
    out = folder / f"atlas-{n}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = build_atlas(out, mosaic_cols=50, cohort=f"synthetic-{n}", **inputs)
    seconds = time.perf_counter() - t
    data_mb = sum(p.stat().st_size for p in (out / "data").iterdir()) / 2**20
    first_mb = (
        sum(
            (out / "data" / f).stat().st_size
            for f in ("meta.js", "points.js", "mosaic.js", "label-0.js")
        )
        / 2**20
    )
    total_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    say(
        f"build_{n}",
        f"{n:,} tiles: atlas built in {seconds:.1f} s; data files {data_mb:.1f} MiB "
        f"({first_mb:.1f} MiB before first paint), whole folder {total_mb:.0f} MiB, "
        f"{summary['n_pyramid_tiles']} pyramid tiles, {summary['n_thumbnails']} thumbnails",
        {
            "seconds": seconds,
            "data_mib": data_mb,
            "first_paint_mib": first_mb,
            "folder_mib": total_mb,
            **summary,
        },
    )
    return out


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def renderer_uss_mb() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "--type=renderer" in " ".join(child.cmdline()):
                total += child.memory_full_info().uss / 2**20
        except psutil.Error:
            continue
    return total


FLUIDITY = """() => {
    const s = HistoAtlas.scatter;
    const median = (f) => {
        const t = [];
        for (let k = 0; k < 20; k++) {
            const t0 = performance.now();
            f();
            t.push(performance.now() - t0);
        }
        return t.sort((a, b) => a - b)[10];
    };
    const [px, py] = s.toDevice(s.xy[0] / HistoAtlas.Q, s.xy[1] / HistoAtlas.Q);  // in a blob
    return {
        render: median(() => s.render()),
        pick: median(() => s.pick(px, py, 8)),
        select_all: median(() => s.inBox(0, 1, 0, 1)),
        from_base64: typeof Uint8Array.fromBase64 === 'function',
    };
}"""


def open_once(atlas: Path, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    cold = drop_page_cache()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        t = time.perf_counter()
        page.goto((atlas / "index.html").resolve().as_uri())
        page.wait_for_function("HistoAtlas.state.firstPaintMs !== null", timeout=60_000)
        wall = time.perf_counter() - t
        page.wait_for_function("HistoAtlas.state.labelsReady === true", timeout=120_000)
        state = page.evaluate("HistoAtlas.state")
        cdp.send("HeapProfiler.collectGarbage")
        page.wait_for_timeout(500)
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        uss = renderer_uss_mb()
        fluid = page.evaluate(FLUIDITY)
        browser.close()
    return {
        "cold_cache": cold,
        "first_paint_ms": state["firstPaintMs"],
        "wall_to_first_paint_s": wall,
        "all_data_ms": state["labelsReadyMs"],
        "points_drawn": state["pointsDrawn"],
        "js_heap_mib": metrics["JSHeapUsedSize"] / 2**20,
        "renderer_uss_mib": uss,
        "errors": errors,
        **fluid,
    }


def measure(n: int, atlas: Path, chromium: str, repeat: int) -> None:
    runs = [open_once(atlas, chromium) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["first_paint_ms"])
    worst = max(r["first_paint_ms"] for r in runs)
    say(
        f"page_{n}",
        f"{n:,} tiles: first paint {best['first_paint_ms']:.0f} ms (worst of {repeat}: "
        f"{worst:.0f} ms; {'cold' if best['cold_cache'] else 'warm'} page cache), all data "
        f"{best['all_data_ms']:.0f} ms; JS heap {best['js_heap_mib']:.0f} MiB, renderer USS "
        f"{best['renderer_uss_mib']:.0f} MiB; redraw {best['render']:.1f} ms, hover pick "
        f"{best['pick']:.2f} ms, select all {best['select_all']:.0f} ms; "
        f"points drawn {best['points_drawn']:,}; console errors {len(best['errors'])}",
        runs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    header("bench_atlas")
    folder = OUT / "atlas"
    folder.mkdir(parents=True, exist_ok=True)
    slide_files = write_slides(folder)
    for n in (int(s) for s in args.sizes.split(",")):
        atlas = build(n, folder, slide_files)
        measure(n, atlas, args.chromium, args.repeat)
    (OUT / "atlas.json").write_text(json.dumps(FIGURES, indent=1, default=str))


if __name__ == "__main__":
    main()
