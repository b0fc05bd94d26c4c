"""The whole workflow on a tiny cohort, run by Snakemake from a clean directory.

Besides the outputs, this checks what Snakemake would recompute after each kind of
change (from the dry run's job counts): only what a change touches may rerun.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.integration.cohort import (
    add_slide,
    copy_workflow,
    job_counts,
    snakemake,
    write_cohort,
)

SLIDES = ["s1", "s2", "s3"]
LABELS = ["subtype", "slide", "cluster", "prediction", "uncertainty"]
UMAP_AND_DOWNSTREAM = {"fit_umap": 1, "plot_umap": len(LABELS), "render_mosaic": 1, "all": 1}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    write_cohort(directory, SLIDES)
    proc = snakemake(directory)
    return directory, proc


def dry_run(directory, *args):
    proc = snakemake(directory, "-n", *args)
    return job_counts(proc.stdout + proc.stderr), proc.stdout + proc.stderr


def test_per_slide_files_and_dataset_table(tiny_run):
    directory, _ = tiny_run
    for slide in SLIDES:
        with h5py.File(directory / "results/features/tiny" / f"{slide}.h5") as f:
            n = len(f["coords"])
            assert n > 20
            assert f["features"].shape == (n, 32 + 32)  # block3 (4*8 ch) + postconv (32)
            assert f["predictions"].shape == (n, 2)
            assert f.attrs["slide"] == slide
        log = directory / "logs/extract_activations/tiny" / f"{slide}.log"
        assert "tiles/s" in log.read_text()
    tiles = pd.read_parquet(directory / "results/tiny/dataset/tiles.parquet")
    assert tiles["slide"].unique().tolist() == SLIDES
    assert set(tiles["subtype"]) == {"a", "b"}
    with h5py.File(directory / "results/tiny/dataset/features.h5") as f:
        assert f["features"].shape == (len(tiles), 64)
        assert not np.isnan(f["features"][()]).any()
    leftovers = [p for p in directory.rglob("*") if ".partial" in p.name]
    assert leftovers == []


def test_umap_plots_mosaic_and_saliency(tiny_run):
    directory, _ = tiny_run
    results = directory / "results/tiny"
    tiles = pd.read_parquet(results / "dataset/tiles.parquet")
    coords = pd.read_parquet(results / "umap/coords.parquet")
    assert len(coords) == len(tiles)
    assert coords[["umap_x", "umap_y"]].to_numpy().min() >= 0
    assert coords[["umap_x", "umap_y"]].to_numpy().max() <= 1
    for label in LABELS:
        with Image.open(results / "plots" / f"umap_{label}.png") as im:
            assert im.size[0] >= 600
    with Image.open(results / "mosaic/mosaic.png") as im:
        assert im.size[0] == 12 * 16  # num_tiles_x * tile_px of the tiny config
    manifest = pd.read_parquet(results / "mosaic/mosaic.parquet")
    assert 0 < len(manifest) <= 12 * 12
    selected = pd.read_csv(results / "saliency/tiles.csv")
    assert sorted(selected["class_name"]) == ["a", "b"]  # top_k_per_class: 1
    maps = pd.read_csv(results / "saliency/maps.csv")
    assert sorted(maps["method"].unique()) == ["gradcam", "integrated_gradients", "vanilla"]
    assert len(maps) == 2 * 3
    for npy in maps["npy"]:
        mask = np.load(directory / npy if not npy.startswith("/") else npy)
        assert mask.shape == (64, 64) and np.isfinite(mask).all()
    with Image.open(results / "saliency/overview.png") as im:
        assert im.size[1] > 100


def test_rerun_has_nothing_to_do(tiny_run):
    directory, _ = tiny_run
    counts, out = dry_run(directory)
    assert "Nothing to be done" in out
    assert counts == {}


def test_umap_setting_reruns_umap_and_downstream_only(tiny_run):
    counts, _ = dry_run(tiny_run[0], "--config", "umap={n_neighbors: 12}")
    assert counts == UMAP_AND_DOWNSTREAM


def test_mosaic_setting_reruns_only_the_mosaic(tiny_run):
    counts, _ = dry_run(tiny_run[0], "--config", "mosaic={num_tiles_x: 8}")
    assert counts == {"render_mosaic": 1, "all": 1}


def test_plot_setting_reruns_only_the_plot(tiny_run):
    counts, _ = dry_run(tiny_run[0], "--config", "plots={n_clusters: 4}")
    assert counts == {"plot_umap": 1, "all": 1}


def test_new_featureset_extracts_every_slide_again(tiny_run):
    counts, out = dry_run(tiny_run[0], "--config", "features={name: tiny-b, layers: [block4]}")
    assert counts["extract_activations"] == len(SLIDES)
    assert "results/features/tiny-b/s1.h5" in out
    assert "results/features/tiny/" not in out.split("Job stats:")[0].replace("tiny-b", "")


def test_second_cohort_sharing_slides_extracts_nothing(tiny_run):
    counts, out = dry_run(tiny_run[0], "--config", "cohort=other")
    assert "extract_activations" not in counts
    assert counts["merge_dataset"] == 1 and counts["fit_umap"] == 1


def test_editing_an_entry_script_is_a_code_change(tiny_run, tmp_path):
    directory, _ = tiny_run
    snakefile = copy_workflow(tmp_path / "workflow-copy")
    unchanged = snakemake(directory, "--list-changes", "code", snakefile=snakefile)
    assert "mosaic.png" not in unchanged.stdout
    script = snakefile.parent / "workflow/scripts/render_mosaic.py"
    script.write_text(script.read_text() + "\n# edited\n")
    changed = snakemake(directory, "--list-changes", "code", snakefile=snakefile)
    listed = [line for line in changed.stdout.splitlines() if line.startswith("results/")]
    assert listed == ["results/tiny/mosaic/mosaic.png"] or sorted(listed) == sorted(
        ["results/tiny/mosaic/mosaic.png", "results/tiny/mosaic/mosaic.parquet"]
    )


def test_adding_a_slide_extracts_only_that_slide(tiny_run, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_run[0], copy, symlinks=True)
    add_slide(copy, "s4", seed=7)
    counts, out = dry_run(copy)
    assert counts["extract_activations"] == 1
    assert counts["merge_dataset"] == 1
    assert "s4.h5" in out
