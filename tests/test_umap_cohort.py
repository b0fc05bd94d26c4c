"""The UMAP stage of a cohort in three steps (fit on a sample read from the slide files,
project per shard, gather) against the one-job path (``SlideMap.from_features``).

What is checked, on a synthetic cohort of per-slide files with tiles outside the sample:
- one shard: ``coords.parquet`` and the model's frame equal the one-job path's bit for bit
  (the same sample, the same fit, the same transform calls);
- many shards: every fitted tile keeps its fitted position exactly; each projected tile is
  exactly what ``transform`` gives it in its shard's call (umap-learn's transform depends
  on the call it is in: its graph is weighed by the call's largest edge, its epochs set by
  the call's size), and lands close to its one-job position;
- a reference map: equal to the one-job projection onto it;
- the fit reads only the rows it fits; ``max_fit_tiles`` caps the sample as the one-job
  path caps it; the streamed sample and frame equal their in-memory versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histoatlas.analysis import umap_cohort
from histoatlas.analysis.dataset import DatasetFeatures, merge_dataset
from histoatlas.analysis.slidemap import SlideMap
from histoatlas.analysis.umap_cohort import fit_cohort, gather_layout, project_shard
from histoatlas.analysis.umap_layout import (
    layout_frame,
    sample_in_order,
    sample_per_group,
    streamed_layout_frame,
)
from histoatlas.analysis.umap_model import FittedUMAP
from histoatlas.errors import HistoatlasError
from histoatlas.io import slide_rows
from histoatlas.io.slide_h5 import write_slide_h5
from tests.test_dataset import attrs

SIZES = [300, 0, 420, 150, 380]  # tiles per slide; one slide without tissue
UMAP = {"n_neighbors": 10, "max_tiles_per_slide": 100, "random_state": 0}


# -- the parts that need no UMAP ---------------------------------------------------------


@pytest.mark.parametrize("max_total", [None, 1, 37, 10_000])
def test_sample_drawn_slide_by_slide_equals_the_whole_cohort_s(max_total):
    rng = np.random.default_rng(1)
    for trial in range(60):
        counts = rng.integers(0, 300, rng.integers(1, 12))
        groups = np.repeat(np.arange(len(counts)), counts)
        per_slide = [None, 1, 5, 50, 1000][trial % 5]
        whole = sample_per_group(groups, per_slide, seed=trial, max_total=max_total)
        parts = sample_in_order(counts, per_slide, seed=trial, max_total=max_total)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        joined = np.concatenate([s + r for s, r in zip(starts, parts, strict=True)])
        np.testing.assert_array_equal(joined, whole)
        # and, apart from the two agreeing: each slide's cap, and exactly the total's
        capped = np.minimum(counts, per_slide or counts.max(initial=0))
        assert (np.bincount(groups[whole], minlength=len(counts)) <= capped).all()
        assert len(whole) == min(max_total or capped.sum(), capped.sum())


def test_streamed_frame_equals_the_in_memory_frame_bit_for_bit():
    rng = np.random.default_rng(0)
    for trial in range(120):
        n = int(rng.integers(1, 4000))
        raw = [
            rng.normal(size=(n, 2)) * 10,
            rng.integers(-3, 3, (n, 2)),  # ties everywhere
            np.full((n, 2), 2.5),  # one point, n times: a unit frame
            rng.standard_cauchy((n, 2)),  # outliers to clip
        ][trial % 4].astype(np.float32)
        splits = np.sort(rng.integers(0, n, 3))
        streamed = streamed_layout_frame(lambda raw=raw, s=splits: np.split(raw, s))
        for a, b in zip(np.ravel(layout_frame(raw)), np.ravel(streamed), strict=True):
            np.testing.assert_array_equal(a, b)


# -- the three steps against the one-job path ---------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Per-slide files of five slides (five clusters of 16-d activations), the dataset table,
    and the one-job map."""
    out = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 3
    paths, slides = [], []
    for k, n in enumerate(SIZES):
        feats = centres[rng.integers(0, 5, n)] + rng.normal(size=(n, 16))
        grid = np.stack([np.arange(n) % 20, np.arange(n) // 20], axis=1)
        paths.append(out / f"s{k}.h5")
        slides.append(f"s{k}")
        write_slide_h5(
            paths[-1],
            features=feats,
            coords=grid * 224,
            grid=grid,
            predictions=rng.dirichlet([1, 1], n),
            attrs=attrs(f"s{k}"),
        )
    sheet = pd.DataFrame({"slide": slides, "path": slides})
    merge_dataset(
        paths,
        sheet,
        tiles_path=out / "tiles.parquet",
        slides_path=out / "slides.parquet",
        features_path=out / "features.h5",
    )
    dataset = DatasetFeatures.from_dataset(out)
    one_job = SlideMap.from_features(dataset, **UMAP)
    one_job.save(out / "one-job")
    model, sample = out / "fit" / "umap.joblib", out / "fit" / "sample.parquet"
    fit_cohort(out / "features.h5", model_path=model, sample_path=sample, **UMAP)
    return dict(
        dir=out,
        paths=paths,
        slides=slides,
        dataset=dataset,
        one_job=one_job,
        model=model,
        sample=sample,
    )


def run_shards(cohort, out, shards, *, reference=None, chunk_size=umap_cohort.CHUNK_SIZE):
    """Project each shard (lists of slide indices), then gather; returns coords.parquet."""
    model = reference or cohort["model"]
    files = []
    for k, members in enumerate(shards):
        files.append(out / f"shard{k}.parquet")
        project_shard(
            [cohort["paths"][i] for i in members],
            [cohort["slides"][i] for i in members],
            model_path=model,
            sample_path=None if reference else cohort["sample"],
            out_path=files[-1],
            chunk_size=chunk_size,
        )
    gather_layout(
        files,
        model_path=model,
        umap_path=out / "umap.joblib",
        coords_path=out / "coords.parquet",
        reference=reference is not None,
    )
    return pd.read_parquet(out / "coords.parquet"), files


@pytest.mark.slow
def test_one_shard_equals_the_one_job_map_bit_for_bit(cohort, tmp_path):
    coords, _ = run_shards(cohort, tmp_path, [range(len(SIZES))])
    expected = pd.read_parquet(cohort["dir"] / "one-job" / "coords.parquet")
    pd.testing.assert_frame_equal(coords, expected)
    assert coords.attrs == {"histoatlas": {"map_slide": None}}
    ours, theirs = FittedUMAP.load(tmp_path / "umap.joblib"), cohort["one_job"].umap
    for a, b in [(ours.clip_min, theirs.clip_min), (ours.frame_max, theirs.frame_max)]:
        np.testing.assert_array_equal(a, b)
    assert ours.params == theirs.params and ours.params["n_fit"] == 400  # 100 x 4 slides
    # with tiles outside the sample: 1250 tiles, 850 of them projected
    assert (
        len(coords) == sum(SIZES)
        and (~pd.read_parquet(tmp_path / "shard0.parquet")["fitted"]).sum() == 850
    )


@pytest.mark.slow
def test_transform_calls_crossing_slides_are_the_one_job_path_s(cohort, tmp_path):
    # calls of 37 rows: most span two slides, as the one-job path's chunks do
    coords, _ = run_shards(cohort, tmp_path, [range(len(SIZES))], chunk_size=37)
    one_job = SlideMap.from_features(cohort["dataset"], chunk_size=37, **UMAP)
    np.testing.assert_array_equal(
        coords[["umap_x", "umap_y"]].to_numpy(), one_job.coords.astype(np.float32)
    )


@pytest.mark.slow
def test_shards_keep_fitted_positions_and_project_as_their_own_calls(cohort, tmp_path):
    coords, files = run_shards(cohort, tmp_path, [[k] for k in range(len(SIZES))])
    shards = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    sample = pd.read_parquet(cohort["sample"]).set_index(["slide", "tile"])
    fitted = shards[shards["fitted"]].set_index(["slide", "tile"])
    assert len(fitted) == len(sample) == 400
    # fitted tiles: exactly where the fit put them
    np.testing.assert_array_equal(
        fitted.loc[sample.index, ["raw_x", "raw_y"]].to_numpy(),
        sample[["raw_x", "raw_y"]].to_numpy(),
    )
    # projected tiles: exactly transform's answer in their shard's own call
    model = FittedUMAP.load(cohort["model"])
    features = cohort["dataset"].activations
    for slide in cohort["slides"]:
        rest = shards[(shards["slide"] == slide) & ~shards["fitted"]]
        if len(rest):
            expected = model.raw_transform(features[slide][rest["tile"].to_numpy()])
            np.testing.assert_array_equal(rest[["raw_x", "raw_y"]].to_numpy(), expected)
    # and close to the one-job layout (same map; calls of one slide instead of one cohort)
    one_job = cohort["one_job"].coords
    moved = np.hypot(*(coords[["umap_x", "umap_y"]].to_numpy() - one_job).T)
    assert np.median(moved[~shards["fitted"].to_numpy()]) < 0.02, np.median(moved)
    assert np.median(moved[shards["fitted"].to_numpy()]) < 0.01  # the frame moved a little


@pytest.mark.slow
def test_a_reference_map_projects_as_the_one_job_path(cohort, tmp_path):
    reference = cohort["dir"] / "one-job" / "umap.joblib"
    coords, _ = run_shards(cohort, tmp_path, [range(len(SIZES))], reference=reference)
    expected = SlideMap.from_features(cohort["dataset"], reference=reference)
    np.testing.assert_array_equal(
        coords[["umap_x", "umap_y"]].to_numpy(), expected.coords.astype(np.float32)
    )
    assert (tmp_path / "umap.joblib").read_bytes() == reference.read_bytes()
    # one slide alone: the kept map's transform of its tiles in one call, in the kept frame
    alone, _ = run_shards(cohort, tmp_path / "alone", [[3]], reference=reference)
    assert alone["slide"].eq("s3").all() and alone["tile"].tolist() == list(range(SIZES[3]))
    kept = FittedUMAP.load(reference).transform(cohort["dataset"].activations["s3"])
    np.testing.assert_array_equal(alone[["umap_x", "umap_y"]].to_numpy(), kept.astype(np.float32))


@pytest.mark.slow
def test_virtual_rows_are_read_from_each_slide_file(cohort):
    """The sample's rows, read one slide file at a time, equal HDF5's virtual reading (the
    cohort's slide without tiles has no source in the virtual dataset)."""
    import h5py

    path = cohort["dir"] / "features.h5"
    rows = np.sort(np.random.default_rng(1).choice(sum(SIZES), 97, replace=False))
    with h5py.File(path, "r") as f:
        expected = f["features"][rows]
    got = slide_rows.VirtualFeatures.open(path).read_rows(rows)
    assert got.dtype == np.float32 and got.shape == (97, 16)
    np.testing.assert_array_equal(got, expected)
    assert slide_rows.VirtualFeatures.open(path).read_rows(rows[:0]).shape == (0, 16)
    with pytest.raises(ValueError, match="sorted"):
        slide_rows.VirtualFeatures.open(path).read_rows(rows[::-1])
    chunks = list(slide_rows.VirtualFeatures.open(path).iter_chunks(rows=64))
    assert all(len(block) <= 64 for _, block in chunks)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(np.concatenate([b for _, b in chunks]), f["features"][()])
    assert [first for first, _ in chunks][:2] == [0, 64]


def test_a_missing_slide_file_is_named(cohort, tmp_path):
    import shutil

    for name in ["features.h5", *(p.name for p in cohort["paths"])]:
        shutil.copy(cohort["dir"] / name, tmp_path / name)
    (tmp_path / "s2.h5").unlink()
    with pytest.raises(HistoatlasError, match=r"s2\.h5, which is missing.*rerun merge_dataset"):
        slide_rows.VirtualFeatures.open(tmp_path / "features.h5")


def test_fit_reads_only_its_sample_and_caps_it(cohort, tmp_path, monkeypatch):
    read = []
    original = slide_rows.read_rows

    def counting(path, rows, **kwargs):
        read.append((Path(path).name, len(rows)))
        return original(path, rows, **kwargs)

    monkeypatch.setattr(slide_rows, "read_rows", counting)
    fitted = fit_cohort(
        cohort["dir"] / "features.h5",
        model_path=tmp_path / "m.joblib",
        sample_path=tmp_path / "s.parquet",
        max_fit_tiles=150,
        **UMAP,
    )
    # its sample alone, read from each slide's own file in turn
    assert sum(n for _, n in read) == 150 and fitted.params["n_fit"] == 150
    assert [name for name, _ in read] == sorted({name for name, _ in read})
    groups = np.repeat(cohort["slides"], SIZES)
    expected = sample_per_group(groups, 100, seed=0, max_total=150)
    tiles = cohort["dataset"].tiles.iloc[expected]
    sample = pd.read_parquet(tmp_path / "s.parquet")
    assert sample["slide"].tolist() == tiles["slide"].tolist()
    assert sample["tile"].tolist() == tiles["tile"].tolist()
    with pytest.raises(Exception, match="frame yet"):
        FittedUMAP.load(tmp_path / "m.joblib").scale(np.zeros((1, 2)))


def test_the_atlas_colours_by_the_plots_clusters(cohort, tmp_path):
    """The atlas's cluster label is the streamed one of umap_cluster.png (cluster_ids), which
    under its cap equals the one-job map's k-means; other labels come along in order."""
    from histoatlas.analysis.map_stream import cluster_ids
    from histoatlas.atlas.cohort import CohortFiles, map_and_labels

    out = cohort["dir"]
    files = CohortFiles(
        coords=out / "one-job" / "coords.parquet",
        tiles=out / "tiles.parquet",
        slides=out / "slides.parquet",
        features=out / "features.h5",
        mosaic=out / "unused.parquet",
    )
    slide_map, values = map_and_labels(
        files, pd.read_parquet(files.slides), ["cluster", "slide"], n_clusters=3, seed=0
    )
    assert list(values) == ["cluster", "slide"] and len(slide_map.data) == sum(SIZES)
    expected = cohort["one_job"].cluster(3, seed=0)
    np.testing.assert_array_equal(values["cluster"], expected)
    np.testing.assert_array_equal(values["cluster"], cluster_ids(files.features, 3, seed=0))
    assert values["slide"].tolist() == np.repeat(cohort["slides"], SIZES).tolist()
