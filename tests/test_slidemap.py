"""SlideMap and the UMAP core: fitting, scaling, projection, labels, save/load, fit_umap.py.

UMAP runs on the real 512-d mopadi tile features (two TCGA slides, 957 tiles), kept
small (few hundred fitted points, few epochs): numba's compilation dominates the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest

from histoatlas.analysis.dataset import DatasetFeatures, merge_dataset
from histoatlas.analysis.slidemap import SlideMap, apply_label, normalized_entropy
from histoatlas.analysis.umap_fit import FittedUMAP, fit_umap, layout_frame, sample_per_group
from histoatlas.errors import ConfigError, EmptyDatasetError, HistoatlasError

# fits UMAP on real features (numba compiles on first use)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MOPADI = REPO / ".." / "shared" / "testdata" / "features" / "mopadi"
CLASSES = ["tumor", "stroma", "immune"]
FAST = {"n_neighbors": 15, "n_epochs": 30}


def load_mopadi() -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """(features, coords, [(slide, n)]) of the two mopadi slides."""
    if not MOPADI.is_dir():
        pytest.skip(f"shared test data missing: {MOPADI}")
    feats, coords, slides = [], [], []
    for path in sorted(MOPADI.glob("*.h5")):
        with h5py.File(path, "r") as f:
            x = f["feats"][()] if "feats" in f else f["features"][()]
            xy = f["coords"][()] if "coords" in f else np.zeros((len(x), 2), np.int64)
        feats.append(x)
        coords.append(xy)
        slides.append((path.name.split("__")[0], len(x)))
    return np.concatenate(feats), np.concatenate(coords), slides


def make_dataset(features, coords, slides, seed=0) -> DatasetFeatures:
    rng = np.random.default_rng(seed)
    names = np.repeat([s for s, _ in slides], [n for _, n in slides])
    tiles = pd.DataFrame(
        {
            "slide": names,
            "tile": np.concatenate([np.arange(n) for _, n in slides]),
            "x": coords[:, 0],
            "y": coords[:, 1],
            "grid_i": coords[:, 0] // 512,
            "grid_j": coords[:, 1] // 512,
        }
    )
    subtypes = {s: f"type{k % 2}" for k, (s, _) in enumerate(slides)}
    tiles["subtype"] = tiles["slide"].map(subtypes)
    preds = rng.dirichlet([1.0] * len(CLASSES), size=len(tiles)).astype(np.float32)
    slides_df = pd.DataFrame(
        {
            "slide": [s for s, _ in slides],
            "path": [f"/data/{s}.svs" for s, _ in slides],
            "mpp": 0.5,
            "tile_px": 224,
            "tile_um": 256.0,
            "patch_size_level0": 512,
            "n_tiles": [n for _, n in slides],
            "subtype": [subtypes[s] for s, _ in slides],
        }
    )
    return DatasetFeatures(
        tiles, features, slides=slides_df, predictions=preds, class_names=CLASSES
    )


def write_dataset_dir(folder: Path, dataset: DatasetFeatures) -> Path:
    """The three files merge_dataset writes, as DatasetFeatures.from_dataset reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    dataset.tiles.to_parquet(folder / "tiles.parquet", index=False)
    dataset.slides.to_parquet(folder / "slides.parquet", index=False)
    with h5py.File(folder / "features.h5", "w") as f:
        f["features"] = dataset.features
        f.attrs["class_names"] = json.dumps(dataset.class_names)
    return folder


def run_script(name: str, smk, monkeypatch) -> None:
    """Run workflow/scripts/<name>.py's main(smk), with UMAP's epochs cut to 30 (speed)."""
    from histoatlas.analysis import umap_fit

    monkeypatch.setitem(umap_fit.DEFAULT_UMAP, "n_epochs", 30)
    spec = importlib.util.spec_from_file_location(
        f"script_{name}", REPO / "workflow" / "scripts" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(smk)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mopadi():
    return make_dataset(*load_mopadi())


@pytest.fixture(scope="module")
def fitted_map(mopadi):
    return SlideMap.from_features(mopadi, max_tiles_per_slide=150, random_state=0, **FAST)


# -- fitting ---------------------------------------------------------------------------


def test_fit_maps_every_tile_into_unit_square(fitted_map, mopadi):
    sm = fitted_map
    assert len(sm) == len(mopadi.tiles) == 957
    coords = sm.coords
    assert coords.shape == (957, 2)
    # the frame is the clipped layout's extent: each axis runs from exactly 0 to exactly 1
    np.testing.assert_allclose(coords.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(coords.max(axis=0), 1, atol=1e-6)
    # the fitted tiles keep their fitted positions, scaled
    fit_rows = sample_per_group(mopadi.tiles["slide"].to_numpy(), 150, seed=0)
    np.testing.assert_allclose(coords[fit_rows], sm.umap.scale(sm.umap.umap.embedding_), atol=1e-6)
    # the clipping box (1-99th percentile + 10 % margin) leaves the bulk spread out
    assert np.ptp(np.percentile(coords, [5, 95], axis=0), axis=0).min() > 0.5
    # 150 per slide were fitted (both slides have more), the rest projected
    assert sm.umap.params["n_fit"] == 300
    assert sm.umap.params["n_neighbors"] == 15 and sm.umap.params["metric"] == "cosine"
    assert sm.umap.umap.embedding_.shape == (300, 2)
    pd.testing.assert_frame_equal(
        sm.data[["slide", "tile", "x", "y"]], mopadi.tiles[["slide", "tile", "x", "y"]]
    )


def test_same_seed_same_coords_other_seed_other_coords(fitted_map, mopadi):
    again = SlideMap.from_features(mopadi, max_tiles_per_slide=150, random_state=0, **FAST)
    np.testing.assert_array_equal(again.coords, fitted_map.coords)
    other = SlideMap.from_features(mopadi, max_tiles_per_slide=150, random_state=1, **FAST)
    assert not np.allclose(other.coords, fitted_map.coords)


def test_umap_transform_of_training_activations_lands_near_fitted_positions(fitted_map, mopadi):
    projected = fitted_map.umap_transform(mopadi.features, chunk_size=200)
    assert projected.shape == (957, 2) and projected.dtype == np.float32
    distance = np.linalg.norm(projected - fitted_map.coords, axis=1)
    # the map spans [0, 1]: a median displacement of a few percent is "the same place"
    assert np.median(distance) < 0.05
    # not a trivial identity: the projection is computed, so it differs somewhere
    assert distance.max() > 0


def test_umap_transform_rejects_other_width_and_nan(fitted_map):
    with pytest.raises(HistoatlasError, match="512"):
        fitted_map.umap_transform(np.zeros((3, 10), np.float32))
    bad = np.zeros((3, 512), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(HistoatlasError, match="row 1"):
        fitted_map.umap_transform(bad)


def test_empty_cohort_raises_empty_dataset_error():
    tiles = pd.DataFrame({"slide": [], "tile": [], "x": [], "y": []})
    empty = DatasetFeatures(tiles, np.zeros((0, 8), np.float32))
    with pytest.raises(EmptyDatasetError, match="no tiles"):
        SlideMap.from_features(empty)
    with pytest.raises(EmptyDatasetError, match="no tiles"):
        fit_umap(np.zeros((0, 8), np.float32))


def test_too_few_tiles_to_fit_is_a_clear_error():
    with pytest.raises(EmptyDatasetError, match="at least 4 tiles.*has 3"):
        fit_umap(np.random.default_rng(0).normal(size=(3, 8)))


def test_small_cohort_clamps_n_neighbors_with_warning_and_pca(caplog):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 32)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="histoatlas.analysis.umap_fit"):
        fitted, coords = fit_umap(features, pca_dim=5, n_epochs=20)
    assert "n_neighbors=50" in caplog.text and "n_neighbors=11" in caplog.text
    assert fitted.params["n_neighbors"] == 11
    assert fitted.pca.n_components_ == 5
    assert coords.shape == (12, 2)
    np.testing.assert_allclose(
        [coords.min(axis=0), coords.max(axis=0)], [[0, 0], [1, 1]], atol=1e-6
    )
    assert fitted.transform(features[:4]).shape == (4, 2)


def test_three_dimensional_maps_are_refused():
    with pytest.raises(ConfigError, match="n_components=3"):
        fit_umap(np.zeros((10, 4), np.float32), n_components=3)


# -- scaling and sampling --------------------------------------------------------------


def test_layout_frame_clips_outliers_and_scales_to_unit_square():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 10, size=(1000, 2))
    raw[0] = [1e6, -1e6]  # an outlier must not squash the map
    (clip_min, clip_max), (frame_min, frame_max) = layout_frame(raw)
    lo, hi = np.percentile(raw, [1, 99], axis=0)
    np.testing.assert_allclose(clip_min, lo - 0.1 * (hi - lo))
    np.testing.assert_allclose(clip_max, hi + 0.1 * (hi - lo))
    fitted = FittedUMAP(None, None, clip_min, clip_max, frame_min, frame_max, n_features=2)
    scaled = fitted.scale(raw)
    assert scaled.min() == 0 and scaled.max() == 1
    assert tuple(scaled[0]) == (1.0, 0.0)
    # the bulk (99 % of points) keeps most of the square
    assert np.ptp(scaled[1:], axis=0).min() > 0.8
    # a flat axis gets a unit frame centred on the points: they sit at 0.5
    (_, _), (fmin, fmax) = layout_frame(np.c_[np.arange(10.0), np.full(10, 3.0)])
    flat = FittedUMAP(None, None, np.array([-1e9, -1e9]), np.array([1e9, 1e9]), fmin, fmax, 2)
    assert np.allclose(flat.scale(np.array([[0.0, 3.0]]))[0, 1], 0.5)


def test_sample_per_group_caps_each_slide_and_is_seeded():
    groups = np.array(["a"] * 50 + ["b"] * 5 + ["c"] * 20)
    rows = sample_per_group(groups, 10, seed=3)
    counts = pd.Series(groups[rows]).value_counts().to_dict()
    assert counts == {"a": 10, "b": 5, "c": 10}
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, sample_per_group(groups, 10, seed=3))
    assert not np.array_equal(rows, sample_per_group(groups, 10, seed=4))
    assert len(sample_per_group(groups, None, seed=0)) == 75


# -- slide-level maps ------------------------------------------------------------------


@pytest.fixture(scope="module")
def six_slides():
    features, coords, _ = load_mopadi()
    rng = np.random.default_rng(1)
    pick = rng.choice(len(features), size=120, replace=False)
    slides = [(f"s{k}", 20) for k in range(6)]
    return make_dataset(features[pick], coords[pick], slides)


def test_map_slide_average_maps_one_point_per_slide(six_slides):
    sm = six_slides.map_activations(map_slide="average", n_epochs=30)
    assert isinstance(sm, SlideMap)
    assert len(sm) == 6 and sm.map_slide == "average"
    assert list(sm.data["slide"]) == [f"s{k}" for k in range(6)]
    extent = [sm.coords.min(axis=0), sm.coords.max(axis=0)]
    np.testing.assert_allclose(extent, [[0, 0], [1, 1]], atol=1e-6)
    means = np.stack([six_slides.activations[s].mean(axis=0) for s in sm.data["slide"]])
    np.testing.assert_allclose(sm._activations, means, rtol=1e-5)
    # labels come from the slides table, predictions are averaged per slide
    assert list(sm.data["subtype"]) == ["type0", "type1"] * 3
    expected = six_slides.predictions_by_slide["s2"].mean(axis=0)[1]
    assert sm.label_by_preds(1).data["label"][2] == pytest.approx(expected, rel=1e-6)


def test_map_slide_centroid_maps_the_tile_nearest_each_slide_mean(six_slides):
    sm = SlideMap.from_features(six_slides, map_slide="centroid", n_epochs=30)
    assert len(sm) == 6
    for _, row in sm.data.iterrows():
        acts = six_slides.activations[row["slide"]]
        nearest = np.argmin(np.linalg.norm(acts - acts.mean(axis=0), axis=1))
        assert row["tile"] == nearest
    with pytest.raises(ConfigError, match="map_slide"):
        SlideMap.from_features(six_slides, map_slide="median")


# -- labels and clusters ---------------------------------------------------------------


def test_labels(fitted_map, mopadi):
    sm = fitted_map
    first, second = mopadi.slide_names
    sm.label_by_slide({first: "left"})
    assert sm.label_name == "label"
    assert (sm.data["label"][sm.data["slide"] == first] == "left").all()
    assert sm.data["label"][sm.data["slide"] == second].isna().all()

    sm.label("subtype")
    assert sm.label_name == "subtype"
    assert list(sm.data["label"]) == list(mopadi.tiles["subtype"])

    sm.label_by_preds(2)
    np.testing.assert_allclose(sm.data["label"], mopadi.predictions[:, 2], rtol=1e-6)
    assert sm.label_name == "p(immune)"
    sm.label_by_preds("stroma")
    np.testing.assert_allclose(sm.data["label"], mopadi.predictions[:, 1], rtol=1e-6)

    sm.label_by_uncertainty()
    p = mopadi.predictions.astype(np.float64)
    expected = -(p * np.log(p)).sum(axis=1) / np.log(3)
    np.testing.assert_allclose(sm.data["label"], expected, rtol=1e-5)

    apply_label(sm, "prediction")
    assert sm.label_name == "prediction"
    assert list(sm.data["label"]) == list(np.array(CLASSES)[mopadi.predictions.argmax(1)])

    with pytest.raises(HistoatlasError, match="no column 'grade'.*subtype"):
        sm.label("grade")
    with pytest.raises(HistoatlasError, match="out of range for 3 classes"):
        sm.label_by_preds(3)


def test_normalized_entropy_bounds():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(normalized_entropy(probs), [0.0, 1.0, np.log(2) / np.log(3)])


def test_cluster_is_seeded_kmeans_numbered_by_size(fitted_map, mopadi):
    from sklearn.cluster import KMeans

    ids = fitted_map.cluster(4, seed=0)
    assert ids.shape == (957,) and set(ids) == {0, 1, 2, 3}
    counts = np.bincount(ids)
    assert list(counts) == sorted(counts, reverse=True)
    assert fitted_map.label_name == "cluster"
    np.testing.assert_array_equal(fitted_map.data["cluster"], ids)
    np.testing.assert_array_equal(fitted_map.cluster(4, seed=0), ids)
    # the same partition as k-means on the activations, up to the numbering
    raw = KMeans(4, random_state=0, n_init="auto").fit_predict(mopadi.features)
    pairs = set(zip(raw.tolist(), ids.tolist(), strict=True))
    assert len(pairs) == 4
    with pytest.raises(ConfigError, match="n_clusters=0"):
        fitted_map.cluster(0)


# -- from_xy, save, load ---------------------------------------------------------------


def test_from_xy_has_no_umap():
    import histoatlas

    assert histoatlas.SlideMap is SlideMap
    tiles = pd.DataFrame({"slide": ["a", "b"], "tile": [0, 0], "x": [0, 5], "y": [0, 5]})
    sm = SlideMap.from_xy([0.1, 0.9], [0.2, 0.8], tiles=tiles)
    assert sm.coords.tolist() == [[0.1, 0.2], [0.9, 0.8]]
    assert sm.data["x"].tolist() == [0, 5]
    with pytest.raises(HistoatlasError, match="no fitted UMAP"):
        sm.umap_transform(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="2 tiles rows for 3 points"):
        SlideMap.from_xy([0, 1, 2], [0, 1, 2], tiles=tiles)


def test_save_and_load_round_trip(fitted_map, mopadi, tmp_path):
    fitted_map.save(tmp_path / "umap")
    coords = pd.read_parquet(tmp_path / "umap" / "coords.parquet")
    assert list(coords.columns) == ["slide", "tile", "x", "y", "umap_x", "umap_y"]
    np.testing.assert_array_equal(coords[["umap_x", "umap_y"]].to_numpy(), fitted_map.coords)

    loaded = SlideMap.load(tmp_path / "umap", dataset=mopadi)
    np.testing.assert_array_equal(loaded.coords, fitted_map.coords)
    assert list(loaded.data["subtype"]) == list(mopadi.tiles["subtype"])
    assert loaded.slides is mopadi.slides
    np.testing.assert_array_equal(
        loaded.umap_transform(mopadi.features[:50]), fitted_map.umap_transform(mopadi.features[:50])
    )
    # without a dataset: labels from a tiles table, no activations to cluster
    bare = SlideMap.load(tmp_path / "umap" / "coords.parquet", tiles=mopadi.tiles)
    assert list(bare.label("subtype").data["label"]) == list(mopadi.tiles["subtype"])
    with pytest.raises(HistoatlasError, match="needs the activations"):
        bare.cluster(2)


def test_load_refuses_a_map_of_another_dataset(fitted_map, tmp_path):
    fitted_map.save_coords(tmp_path / "coords.parquet")
    other = fitted_map.data[["slide", "tile"]].copy()
    other["tile"] += 10_000
    with pytest.raises(HistoatlasError, match="not in the dataset"):
        SlideMap.load(tmp_path, tiles=other)


# -- entry script ----------------------------------------------------------------------


def write_slide_files(folder: Path, dataset: DatasetFeatures) -> tuple[list[str], list[str]]:
    """One per-slide h5 file per slide of a dataset, and their dataset table in
    ``dataset/``: (paths, slide ids)."""
    from histoatlas.io.slide_h5 import write_slide_h5

    folder.mkdir(parents=True, exist_ok=True)
    paths, slides = [], []
    for slide, rows in dataset.tiles.groupby("slide", sort=False).indices.items():
        xy = dataset.tiles[["x", "y"]].to_numpy()[rows]
        write_slide_h5(
            folder / f"{slide}.h5",
            features=dataset.features[rows],
            coords=xy,
            grid=xy // 512,
            predictions=None if dataset.predictions is None else dataset.predictions[rows],
            attrs=slide_attrs(slide),
        )
        paths.append(str(folder / f"{slide}.h5"))
        slides.append(slide)
    sheet = pd.DataFrame({"slide": slides, "path": slides})
    merge_dataset(
        paths,
        sheet,
        tiles_path=folder / "dataset" / "tiles.parquet",
        slides_path=folder / "dataset" / "slides.parquet",
        features_path=folder / "dataset" / "features.h5",
    )
    return paths, slides


def slide_attrs(slide: str) -> dict:
    return {
        "slide": slide,
        "slide_path": f"/data/{slide}.svs",
        "mpp": 0.5,
        "level0_width": 100_000,
        "level0_height": 100_000,
        "tile_px": 224,
        "tile_um": 256.0,
        "patch_size_level0": 512,
        "stride_div": 1,
        "grid_shape": (200, 200),
        "layers": ["postconv"],
        "layer_slices": {"postconv": [0, 512]},
        "pooling": "avg",
        "model": "m",
        "model_sha256": "0" * 64,
        "class_names": CLASSES,
        "histoatlas_version": "0",
    }


def umap_stage(h5, slides, out: Path, monkeypatch, reference: str | None = None):
    """The UMAP rules' three scripts on one shard: fit (unless a reference), project, gather."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}
    settings |= {"max_tiles_per_slide": 100, "max_fit_tiles": None, "pca_dim": None, "seed": 0}
    model, sample = reference, []
    if reference is None:
        model, sample = str(out / "fit" / "umap.joblib"), str(out / "fit" / "sample.parquet")
        fit = SimpleNamespace(
            input=SimpleNamespace(features=str(Path(h5[0]).parent / "dataset" / "features.h5")),
            output=SimpleNamespace(model=model, sample=sample),
            params=SimpleNamespace(**settings),
            log=[str(out / "fit_umap.log")],
        )
        run_script("fit_umap", fit, monkeypatch)
    project = SimpleNamespace(
        input=SimpleNamespace(h5=h5, model=model, sample=sample),
        output=SimpleNamespace(shard=str(out / "shards" / "0000.parquet")),
        params=SimpleNamespace(slides=slides),
        wildcards=SimpleNamespace(shard="0000"),
        log=[str(out / "project_umap.log")],
    )
    run_script("project_umap", project, monkeypatch)
    gather = SimpleNamespace(
        input=SimpleNamespace(shards=[project.output.shard], model=model),
        output=SimpleNamespace(umap=str(out / "umap.joblib"), coords=str(out / "coords.parquet")),
        params=SimpleNamespace(reference=reference),
        log=[str(out / "gather_umap.log")],
    )
    run_script("gather_umap", gather, monkeypatch)


def test_umap_scripts_fit_project_gather_then_project_onto_reference(mopadi, tmp_path, monkeypatch):
    h5, slides = write_slide_files(tmp_path / "features", mopadi)
    first = tmp_path / "a" / "umap"
    umap_stage(h5, slides, first, monkeypatch)
    coords = pd.read_parquet(first / "coords.parquet")
    assert list(coords.columns) == ["slide", "tile", "x", "y", "umap_x", "umap_y"]
    assert len(coords) == 957
    xy = coords[["umap_x", "umap_y"]].to_numpy()
    np.testing.assert_allclose([xy.min(axis=0), xy.max(axis=0)], [[0, 0], [1, 1]], atol=1e-6)
    fitted = FittedUMAP.load(first / "umap.joblib")
    assert fitted.params["n_fit"] == 200 and fitted.params["random_state"] == 0
    assert "fitted on 200 tiles" in (first / "fit_umap.log").read_text()
    assert "957 tiles of 2 slides" in (first / "project_umap.log").read_text()
    # the one-job path gives the same map, bit for bit (one shard: the same transform calls)
    one_job = SlideMap.from_features(
        mopadi, max_tiles_per_slide=100, random_state=0, n_neighbors=15
    )
    np.testing.assert_array_equal(xy, one_job.coords.astype(np.float32))

    # a second cohort (every third tile) projected onto the first map
    reference = first / "umap.joblib"
    before = sha256(reference)
    subset = DatasetFeatures(
        mopadi.tiles.iloc[::3], mopadi.features[::3], slides=mopadi.slides, class_names=CLASSES
    )
    h5_b, slides_b = write_slide_files(tmp_path / "features-b", subset)
    second = tmp_path / "b" / "umap"
    umap_stage(h5_b, slides_b, second, monkeypatch, reference=str(reference))
    assert sha256(reference) == before
    assert sha256(second / "umap.joblib") == before  # a byte copy of the reference
    projected = pd.read_parquet(second / "coords.parquet")
    assert len(projected) == len(subset.tiles)
    np.testing.assert_array_equal(
        projected[["umap_x", "umap_y"]].to_numpy(), fitted.transform(subset.features)
    )


def test_import_umap_keeps_tensorflow_out():
    code = (
        "import sys, os; from histoatlas.analysis.umap_fit import import_umap; import_umap(); "
        "print('tensorflow' in sys.modules, bool(os.environ.get('NUMBA_CACHE_DIR')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == ["False", "True"]
