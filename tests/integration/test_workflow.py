"""The whole workflow on a tiny cohort, run by Snakemake from a clean directory.

Besides the outputs, this checks what Snakemake would recompute after each kind of
change (from the dry run's job counts): only what a change touches may rerun.
"""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.integration.cohort import (
    TINY_LABELS,
    TINY_SLIDES,
    add_slide,
    check_saliency_maps,
    copy_run,
    copy_workflow,
    job_counts,
    snakemake,
)
from tests.plot_pixels import palette_pixels

SLIDES, LABELS = TINY_SLIDES, TINY_LABELS
UMAP_AND_DOWNSTREAM = {
    "fit_umap": 1,
    "project_umap": 1,  # the three slides are one shard (umap.shard_slides: 50)
    "gather_umap": 1,
    "plot_umap": len(LABELS),
    "render_mosaic": 1,
    "build_atlas": 1,
    "all": 1,
}
METHODS = [
    "vanilla",
    "integrated_gradients",
    "guided_integrated_gradients",
    "blur_integrated_gradients",
    "xrai",
    "gradcam",
]

pytestmark = pytest.mark.slow


def dry_run(directory, *args):
    proc = snakemake(directory, "-n", *args)
    return job_counts(proc.stdout + proc.stderr), proc.stdout + proc.stderr


def pre_relu_gradcam(directory, row) -> np.ndarray:
    """Grad-CAM of the tiny demo CNN before its ReLU: block4's maps weighted by the class's
    fc weights (the mean gradient of a logit after global average pooling, up to 1 / (h w))."""
    import torch

    from histoatlas.backends import load_model
    from histoatlas.io.wsi import WSI

    model = load_model(directory / "model")
    with WSI(directory / "slides" / f"{row.slide}.tiff", 64, 32) as wsi:
        tile = wsi.read_tile(row.x, row.y)
    captured = {}
    net = model.model
    handle = net.block4.register_forward_hook(lambda m, i, out: captured.update(a=out))
    with torch.no_grad():
        model.model(model.to_tensor(tile[None]))
    handle.remove()
    weights = net.fc.weight[row.class_idx]
    return (weights[:, None, None] * captured["a"][0]).sum(0).detach().numpy()


def test_per_slide_files_and_dataset_table(tiny_run):
    directory = tiny_run.dir
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


def test_umap_places_every_tile_and_separates_the_slides(tiny_run):
    from sklearn.metrics import silhouette_score

    results = tiny_run.dir / "results/tiny"
    tiles = pd.read_parquet(results / "dataset/tiles.parquet")
    coords = pd.read_parquet(results / "umap/coords.parquet")
    # one row per tile, in the dataset's order, keys intact
    pd.testing.assert_frame_equal(
        coords[["slide", "tile", "x", "y"]], tiles[["slide", "tile", "x", "y"]]
    )
    xy = coords[["umap_x", "umap_y"]].to_numpy()
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0.1
    # the slides' tissue differs in colour, so their tiles form separate regions of the map
    assert silhouette_score(xy, coords["slide"]) > 0.3


def test_plots_show_each_label_s_own_values(tiny_run):
    plots = tiny_run.dir / "results/tiny/plots"
    for label in LABELS:
        with Image.open(plots / f"umap_{label}.png") as im:
            assert im.size == (1000, 800)
    # categorical plots: one palette colour per value (legend and points), none beyond
    tiles = pd.read_parquet(tiny_run.dir / "results/tiny/dataset/tiles.parquet")
    for label, column in (("subtype", "subtype"), ("slide", "slide"), ("prediction", "pred_label")):
        n_values = tiles[column].nunique()
        counts = palette_pixels(plots / f"umap_{label}.png", n_values)
        assert all(c > 20 for c in counts[:n_values]), (label, counts)
        assert counts[n_values] == 0, (label, counts)
    # k-means with k = 3 (plots.n_clusters)
    counts = palette_pixels(plots / "umap_cluster.png", 3)
    assert all(c > 20 for c in counts[:3]) and counts[3] == 0, counts
    # uncertainty is continuous: a colour bar, no palette colours
    assert palette_pixels(plots / "umap_uncertainty.png", 1)[0] == 0


def test_mosaic_cells_name_real_tiles(tiny_run):
    results = tiny_run.dir / "results/tiny"
    with Image.open(results / "mosaic/mosaic.png") as im:
        assert im.size[0] == 12 * 16  # num_tiles_x * tile_px of the tiny config
    manifest = pd.read_parquet(results / "mosaic/mosaic.parquet")
    assert 0 < len(manifest) <= 12 * 12
    tiles = pd.read_parquet(results / "dataset/tiles.parquet").set_index(["slide", "tile"])
    keys = pd.MultiIndex.from_frame(manifest[["slide", "tile"]])
    assert keys.isin(tiles.index).all()
    np.testing.assert_array_equal(tiles.loc[keys, ["x", "y"]].to_numpy(), manifest[["x", "y"]])


def test_all_six_saliency_methods_through_the_rule(tiny_run):
    results = tiny_run.dir / "results/tiny"
    selected = pd.read_csv(results / "saliency/tiles.csv")
    assert sorted(selected["class_name"]) == ["a", "b"]  # top_k_per_class: 1
    maps = check_saliency_maps(tiny_run.dir, "tiny", set(METHODS), px=64)
    assert len(maps) == 2 * len(METHODS)
    # a zero Grad-CAM is the untrained network's: its class evidence at block4 (Grad-CAM's
    # layer), sum_k w_ck A_k, is nowhere positive
    for row in maps[maps["constant"]].itertuples():
        assert pre_relu_gradcam(tiny_run.dir, row).max() <= 0, row.name
    with Image.open(results / "saliency/overview.png") as im:
        assert im.size[1] > 100


def test_atlas_is_built_from_the_run(tiny_run):
    from histoatlas.atlas.encode import read_data_script

    directory = tiny_run.dir
    atlas = directory / "results/tiny/atlas"
    coords = pd.read_parquet(directory / "results/tiny/umap/coords.parquet")
    _, meta, _ = read_data_script(atlas / "data/meta.js")
    assert (atlas / "index.html").is_file()
    assert meta["n_total"] == meta["n_drawn"] == len(coords)
    assert [label["name"] for label in meta["labels"]] == LABELS
    assert meta["mosaic"]["tile_px"] == 128 and meta["mosaic"]["cols"] == 12  # atlas.tile_px
    assert len(meta["saliency"]) == len(pd.read_csv(directory / "results/tiny/saliency/maps.csv"))
    log = (directory / "logs/build_atlas/tiny.log").read_text()
    assert f"atlas of {len(coords)} of {len(coords)} tiles" in log


def test_rerun_has_nothing_to_do(tiny_run):
    counts, out = dry_run(tiny_run.dir)
    assert "Nothing to be done" in out
    assert counts == {}


def test_umap_setting_reruns_umap_and_downstream_only(tiny_run):
    counts, _ = dry_run(tiny_run.dir, "--config", "umap={n_neighbors: 12}")
    assert counts == UMAP_AND_DOWNSTREAM


def test_mosaic_setting_reruns_only_the_mosaic(tiny_run):
    counts, _ = dry_run(tiny_run.dir, "--config", "mosaic={num_tiles_x: 8}")
    assert counts == {"render_mosaic": 1, "build_atlas": 1, "all": 1}


def test_plot_setting_reruns_only_the_plot(tiny_run):
    counts, _ = dry_run(tiny_run.dir, "--config", "plots={n_clusters: 4}")
    assert counts == {"plot_umap": 1, "build_atlas": 1, "all": 1}  # the atlas has `cluster`


def test_atlas_setting_reruns_only_the_atlas(tiny_run):
    counts, _ = dry_run(tiny_run.dir, "--config", "atlas={max_thumbnails: 10}")
    assert counts == {"build_atlas": 1, "all": 1}


def test_new_featureset_extracts_every_slide_again(tiny_run):
    counts, out = dry_run(tiny_run.dir, "--config", "features={name: tiny-b, layers: [block4]}")
    assert counts["extract_activations"] == len(SLIDES)
    assert "results/features/tiny-b/s1.h5" in out
    assert "results/features/tiny/" not in out.split("Job stats:")[0].replace("tiny-b", "")


def test_second_cohort_sharing_slides_extracts_nothing(tiny_run):
    counts, out = dry_run(tiny_run.dir, "--config", "cohort=other")
    assert "extract_activations" not in counts
    assert counts["merge_dataset"] == 1 and counts["fit_umap"] == 1


def test_editing_an_entry_script_is_a_code_change(tiny_run, tmp_path):
    directory = tiny_run.dir
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
    copy = copy_run(tiny_run, tmp_path / "tiny")
    add_slide(copy, "s4", seed=7)
    counts, out = dry_run(copy)
    assert counts["extract_activations"] == 1
    assert counts["merge_dataset"] == 1
    assert "s4.h5" in out


def one_job_coords(directory, **umap) -> pd.DataFrame:
    """coords.parquet as the one-job path (SlideMap.from_features on the whole dataset) makes
    it with the tiny config's UMAP settings (and ``umap``'s)."""
    from histoatlas.analysis.dataset import DatasetFeatures
    from histoatlas.analysis.slidemap import SlideMap

    dataset = DatasetFeatures.from_dataset(directory / "results/tiny/dataset")
    settings = {"n_neighbors": 10, "max_tiles_per_slide": 200, "max_fit_tiles": 50_000} | umap
    slide_map = SlideMap.from_features(dataset, random_state=0, **settings)
    return slide_map.data[["slide", "tile", "x", "y", "umap_x", "umap_y"]]


def test_umap_equals_the_one_job_path(tiny_run, tmp_path):
    coords = pd.read_parquet(tiny_run.dir / "results/tiny/umap/coords.parquet")
    expected = one_job_coords(tiny_run.dir)
    pd.testing.assert_frame_equal(coords, expected, check_like=False, check_dtype=True)
    # with tiles outside the fitting sample (30 per slide fitted, the rest projected)
    copy = copy_run(tiny_run, tmp_path / "tiny")
    target = "results/tiny/umap/coords.parquet"
    snakemake(copy, target, "--config", "umap={max_tiles_per_slide: 30}")
    coords = pd.read_parquet(copy / target)
    pd.testing.assert_frame_equal(coords, one_job_coords(copy, max_tiles_per_slide=30))
    shard = pd.read_parquet(copy / "results/tiny/umap/shards/0000.parquet")
    assert shard["fitted"].sum() == 90 and (~shard["fitted"]).sum() > 100


def test_kept_map_projects_a_new_slide_alone(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path / "tiny")
    kept = copy / "maps" / "tiny.joblib"
    kept.parent.mkdir()
    kept.write_bytes((copy / "results/tiny/umap/umap.joblib").read_bytes())
    umap = "umap={reference: maps/tiny.joblib, shard_slides: 1}"
    snakemake(copy, "results/tiny/umap/coords.parquet", "--config", umap)
    add_slide(copy, "s4", seed=7)
    counts, _ = dry_run(copy, "--config", umap)
    assert counts["extract_activations"] == 1 and counts["project_umap"] == 1
    assert "fit_umap" not in counts and counts["gather_umap"] == 1
