"""Build the tiny cohort (slides, sheet, model) and run Snakemake on it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "Snakefile"
TILE = 64  # level-0 px per tile in the tiny config (32 um at 0.5 mpp)
TINY_SLIDES = ["s1", "s2", "s3"]
# labels the tiny cohort is plotted by: its sheet's `subtype`, then the built-ins
TINY_LABELS = ["subtype", "slide", "cluster", "prediction", "uncertainty"]


def tissue_slide(seed: int, size: int = 1024) -> np.ndarray:
    """White slide with a textured tissue rectangle whose colour depends on ``seed``."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 245, np.uint8)
    y0, x0 = rng.integers(0, size // 4, 2) // TILE * TILE
    h, w = size // 2, size // 2 + TILE * (seed % 3)
    base = np.array([[200, 80, 150], [120, 60, 170], [210, 120, 120]][seed % 3])
    texture = base + rng.normal(0, 25, (h, w, 3))
    image[y0 : y0 + h, x0 : x0 + w] = np.clip(texture, 0, 255).astype(np.uint8)
    return image


def tiny_config() -> dict:
    """The tiny cohort's config: tests/integration/config.yaml, with the saliency options of
    the shipped config.yaml (all six methods, their steps and batch) but one tile per class."""
    config = yaml.safe_load(Path(__file__).with_name("config.yaml").read_text())
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())["saliency"]
    config["saliency"] = {**shipped, **config.get("saliency", {})}
    return config


def write_cohort(directory: Path, slides: list[str]) -> None:
    """Write slides, sheet, model and config of the tiny cohort into ``directory``."""
    import torch

    from histoatlas.backends.params import ModelParams
    from histoatlas.backends.torch.architectures import demo_cnn
    from histoatlas.io.tiff import write_pyramid_tiff

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    (directory / "slides").mkdir(exist_ok=True)
    for i, slide in enumerate(slides):
        write_pyramid_tiff(directory / "slides" / f"{slide}.tiff", tissue_slide(i), mpp=0.5)
    write_sheet(directory, slides)
    model_dir = directory / "model"
    model_dir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(demo_cnn(num_classes=2, width=8).state_dict(), model_dir / "weights.pt")
    ModelParams(
        architecture="demo_cnn",
        architecture_kwargs={"num_classes": 2, "width": 8},
        tile_px=64,
        tile_um=32,
        class_names=("a", "b"),
    ).to_json(model_dir / "params.json")


def write_sheet(directory: Path, slides: list[str]) -> None:
    rows = [f"{s},slides/{s}.tiff,{'ab'[i % 2]}" for i, s in enumerate(slides)]
    (directory / "slides.csv").write_text("slide,path,subtype\n" + "\n".join(rows) + "\n")


def add_slide(directory: Path, slide: str, seed: int) -> None:
    """Append one slide to the cohort's sheet (writing its file)."""
    from histoatlas.io.tiff import write_pyramid_tiff

    write_pyramid_tiff(directory / "slides" / f"{slide}.tiff", tissue_slide(seed), mpp=0.5)
    with open(directory / "slides.csv", "a") as fh:
        fh.write(f"{slide},slides/{slide}.tiff,a\n")


def snakemake(
    directory: Path,
    *args: str,
    check: bool = True,
    snakefile: Path = SNAKEFILE,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run Snakemake on ``directory`` with its config.yaml; output captured as text."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile)]
    cmd += ["--directory", str(directory), "--configfile", "config.yaml"]
    cmd += ["--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=directory, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_workflow(destination: Path) -> Path:
    """Copy the workflow's code (Snakefile, workflow/, profiles/) and return its Snakefile."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy(SNAKEFILE, destination / "Snakefile")
    for folder in ("workflow", "profiles"):
        shutil.copytree(
            ROOT / folder, destination / folder, ignore=shutil.ignore_patterns("*.egg-info")
        )
    return destination / "Snakefile"


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a (dry) run into {rule: count}, without 'total'."""
    counts = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            in_table, counts = True, {}
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)\s*$", line)
            if match:
                if match.group(1) != "total":
                    counts[match.group(1)] = int(match.group(2))
            elif counts:
                in_table = False
    return counts


def copy_run(run, destination: Path) -> Path:
    """A copy of a finished run's directory (results, logs and Snakemake's metadata)."""
    shutil.copytree(run.dir, destination, symlinks=True)
    return destination


def check_saliency_maps(
    directory: Path, cohort: str, methods: set[str], px: int, *, gradcam_structure: bool = False
) -> pd.DataFrame:
    """Every map of a run's saliency_maps job: one per tile and method, (px, px), finite and
    not constant. The one exception is Grad-CAM, whose ReLU gives a zero map where the layer
    holds no positive evidence for the class (common in an untrained network): such a map
    must be zero, marked `constant` in maps.csv and named in the job's log. With
    ``gradcam_structure`` (a trained model), no Grad-CAM map may be constant."""
    maps = pd.read_csv(directory / "results" / cohort / "saliency" / "maps.csv")
    assert set(maps["method"]) == methods
    assert len(maps) == maps["name"].nunique() * len(methods)
    log = (directory / "logs" / "saliency_maps" / f"{cohort}.log").read_text()
    for row in maps.itertuples():
        mask = np.load(directory / row.npy)
        assert mask.shape == (px, px) and np.isfinite(mask).all(), row.npy
        assert bool(row.constant) == (mask.min() == mask.max()), row.npy
        if row.constant:
            assert row.method == "gradcam" and mask.max() == 0, row
            assert f"{row.name}: the gradcam map of class '{row.class_name}' is 0" in log
    if gradcam_structure:
        assert not maps["constant"].any()
    return maps
