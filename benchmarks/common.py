"""Shared pieces of the benchmarks: the machine, timers, a large synthetic slide, models.

Every benchmark prints its figures as ratios taken in one run, with the machine and the
load it ran under, so a figure read on a busy machine says so. Outputs go to
``benchmarks/out/`` (git-ignored).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
TESTDATA = ROOT.parent / "shared" / "testdata"
# The texture of the benchmark slide: a 1024 px square of real H&E (89 % tissue) cut
# from OpenSlide's CMU-1 small-region slide (0.499 um/px), saved by `texture()`.
TEXTURE_SOURCE = "CMU-1-Small-Region.svs"
TEXTURE_BOX = (704, 1920, 1024, 1024)  # x, y, w, h
TEXTURE_FILE = OUT / "texture.png"
BACKGROUND = (242, 242, 240)

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))


def machine() -> str:
    """One line naming the machine: CPU model, cores, load, GPU (if torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = ""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    return f"{cpu}, {cores} cores{gpu}, load {load()}"


def load() -> str:
    """The 1-minute load average, as ``uptime`` prints it."""
    return f"{os.getloadavg()[0]:.2f}"


def header(name: str, argv: list[str] | None = None) -> None:
    """Print the benchmark's name, date, machine and command line."""
    argv = sys.argv if argv is None else argv
    print(f"# {name} | {_dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {machine()}")
    print(f"# command: python {' '.join(argv)}", flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its threads so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """``with Timer() as t: ...``; then ``t.wall`` and ``t.cpu`` (seconds)."""

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = cpu_seconds() - self._cpu


# -- the benchmark slide ----------------------------------------------------------------


def texture(path: Path = TEXTURE_FILE) -> np.ndarray:
    """The real-tissue texture (1024 x 1024 x 3 uint8), cut once from the test slide.

    Saved as a PNG under ``benchmarks/out/`` so that it can travel to a machine without
    ``../shared/testdata``.
    """
    from PIL import Image

    if not path.exists():
        import openslide

        source = TESTDATA / TEXTURE_SOURCE
        if not source.exists():
            raise SystemExit(
                f"benchmark texture: neither {path} nor {source} exists; copy the texture "
                "PNG here or run on a machine with ../shared/testdata"
            )
        x, y, w, h = TEXTURE_BOX
        with openslide.OpenSlide(str(source)) as slide:
            region = slide.read_region((x, y), 0, (w, h)).convert("RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        region.save(path)
    return np.asarray(Image.open(path).convert("RGB"))


class TissueSlide:
    """Pixels of a synthetic slide at any pyramid level, computed on demand.

    Tissue (the real texture, mirrored into a seamless 2048 px period) fills a
    rounded rectangle covering about 85 % of the slide; the rest is background.
    Level ``k`` is the texture block-averaged ``k`` times, so levels agree with each
    other as a scanner's do.
    """

    def __init__(
        self, size: int, texture_px: np.ndarray, *, n_levels: int, box: int | None = None
    ) -> None:
        from histoatlas.io.tiff import downsample2

        self.size, self.box = size, box
        period = np.concatenate([texture_px, texture_px[::-1]], axis=0)
        period = np.concatenate([period, period[:, ::-1]], axis=1)
        self.periods = [period]
        for _ in range(1, n_levels):
            period = downsample2(period) if min(period.shape[:2]) >= 2 else period
            self.periods.append(period)

    def inside(self, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """Whether level-0 points lie on tissue.

        A superellipse (``|u|^6 + |v|^6 <= 1``) filling the slide, or with ``box`` a
        centred square of that many pixels.
        """
        half = self.size / 2
        if self.box is not None:
            return (np.abs(x0 - half) <= self.box / 2) & (np.abs(y0 - half) <= self.box / 2)
        u = (x0 - half) / (0.47 * self.size)
        v = (y0 - half) / (0.47 * self.size)
        return u**6 + v**6 <= 1.0

    def region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 pixels of ``level`` at level-``level`` (x, y)."""
        period = self.periods[level]
        ph, pw = period.shape[:2]
        rows = np.arange(y, y + h) % ph
        cols = np.arange(x, x + w) % pw
        scale = 2**level
        ys = (np.arange(y, y + h) + 0.5) * scale
        xs = (np.arange(x, x + w) + 0.5) * scale
        corners = self.inside(xs[[0, -1, 0, -1]], ys[[0, 0, -1, -1]])
        tile = period[rows[:, None], cols[None, :]]
        if corners.all():  # the superellipse is convex: the whole box is inside
            return tile
        mask = self.inside(xs[None, :], ys[:, None])
        out = np.empty((h, w, 3), np.uint8)
        out[:] = BACKGROUND
        out[mask] = tile[mask]
        return out


def benchmark_slide(
    size: int = 40_000, *, box: int | None = None, mpp: float = 0.5, force: bool = False
) -> Path:
    """Write (once) a JPEG-tiled pyramidal TIFF of ``size`` px square; return its path.

    256 px JPEG tiles (quality 90), every level half the previous one down to one tile,
    MPP in the resolution tags: what OpenSlide sees from a scanner's generic TIFF. Tissue
    covers about 85 % of the slide, or only a centred ``box`` px square (fewer tiles,
    for models too slow for a whole slide on a CPU).
    """
    from histoatlas.io.tiff import write_pyramid_tiff_tiles

    path = OUT / (f"slide_{size}.tiff" if box is None else f"slide_{size}_box{box}.tiff")
    if path.exists() and not force:
        return path
    n_levels = 1
    while size >> n_levels >= 256:
        n_levels += 1
    source = TissueSlide(size, texture(), n_levels=n_levels, box=box)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.tiff")
    t = time.perf_counter()
    write_pyramid_tiff_tiles(tmp, (size, size), source.region, mpp, n_levels=n_levels)
    tmp.replace(path)
    print(
        f"# wrote {path.name}: {size} px square, {n_levels} levels, "
        f"{path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    return path


# -- models -----------------------------------------------------------------------------

# ResNet-50-sized and MobileNet-sized torchvision networks (random, seeded weights):
# the speed of a network does not depend on its weights.
MODELS = {
    "resnet50": "torchvision:resnet50",
    "mobilenet_v3_large": "torchvision:mobilenet_v3_large",
}


def model_dir(name: str, *, num_classes: int = 2) -> Path:
    """A model directory (params.json + state dict) of a torchvision architecture."""
    import torch

    from histoatlas.backends.torch.architectures import build_architecture

    path = OUT / "models" / name
    if (path / "params.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    arch = MODELS.get(name, name)
    net = build_architecture(arch, {"num_classes": num_classes})
    torch.save(net.state_dict(), path / "weights.pt")
    params = {
        "backend": "torch",
        "architecture": arch,
        "weights": "weights.pt",
        "tile_px": 224,
        "tile_um": 112,
        "class_names": [f"class{k}" for k in range(num_classes)],
        "output": "softmax",
    }
    (path / "params.json").write_text(json.dumps(params, indent=2))
    return path
