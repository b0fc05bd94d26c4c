"""Dataset table: tiles/slides parquet, the virtual features dataset, DatasetFeatures."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from histoatlas.analysis.dataset import DatasetFeatures, merge_dataset
from histoatlas.errors import EmptyDatasetError, HistoatlasError
from histoatlas.io.slide_h5 import write_slide_h5

CLASSES = ["tumor", "stroma"]


def attrs(slide, n_classes=2, layers=("postconv",)):
    return {
        "slide": slide,
        "slide_path": f"/data/{slide}.svs",
        "mpp": 0.5,
        "level0_width": 4000,
        "level0_height": 3000,
        "tile_px": 224,
        "tile_um": 112.0,
        "patch_size_level0": 224,
        "stride_div": 1,
        "grid_shape": (17, 13),
        "layers": list(layers),
        "layer_slices": {layers[0]: [0, 4]},
        "pooling": "avg",
        "model": "m",
        "model_sha256": "0" * 64,
        "class_names": CLASSES[:n_classes],
        "histoatlas_version": "0.1.0",
    }


def make_slide(folder, slide, n, rng, width=4, **kw):
    path = folder / f"{slide}.h5"
    grid = np.stack([np.arange(n) % 5, np.arange(n) // 5], axis=1).astype(np.int32)
    preds = rng.dirichlet([1, 1], size=n).astype(np.float32)
    write_slide_h5(
        path,
        features=rng.normal(size=(n, width)).astype(np.float32),
        coords=(grid * 224).astype(np.int64),
        grid=grid,
        predictions=preds,
        attrs=attrs(slide, **kw),
    )
    return path


@pytest.fixture
def cohort(tmp_path):
    rng = np.random.default_rng(0)
    feats = tmp_path / "features" / "fs"
    feats.mkdir(parents=True)
    sheet = pd.DataFrame(
        {
            "slide": ["s2", "s1", "empty"],
            "path": ["s2.svs", "s1.svs", "e.svs"],
            "subtype": ["a", "b", "a"],
        }
    )
    paths = [make_slide(feats, "s2", 7, rng), make_slide(feats, "s1", 12, rng)]
    paths.append(make_slide(feats, "empty", 0, rng))
    out = tmp_path / "cohort" / "dataset"
    slides = merge_dataset(
        paths,
        sheet,
        tiles_path=out / "tiles.parquet",
        slides_path=out / "slides.parquet",
        features_path=out / "features.h5",
    )
    return paths, out, pd.read_parquet(out / "tiles.parquet"), slides


def test_tables_follow_sheet_order_with_labels_and_predictions(cohort):
    paths, out, tiles, slides = cohort
    # written slide by slide, equal to the table built in one piece from the slide files
    in_one_piece = pd.concat(
        [
            DatasetFeatures.from_h5_dir(paths[0].parent, slides=[s]).tiles.assign(subtype=sub)
            for s, sub in (("s2", "a"), ("s1", "b"))
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(tiles[in_one_piece.columns], in_one_piece)
    assert list(tiles.columns[:7]) == ["slide", "tile", "x", "y", "grid_i", "grid_j", "subtype"]
    assert tiles["slide"].tolist() == ["s2"] * 7 + ["s1"] * 12
    assert tiles["tile"].tolist() == list(range(7)) + list(range(12))
    assert set(tiles.columns) >= {"x", "y", "grid_i", "grid_j", "subtype", "pred_label"}
    with h5py.File(paths[1]) as f:
        np.testing.assert_array_equal(tiles.loc[tiles.slide == "s1", ["x", "y"]], f["coords"])
        preds = f["predictions"][()]
    s1 = tiles[tiles.slide == "s1"]
    np.testing.assert_allclose(s1[["pred_tumor", "pred_stroma"]], preds)
    assert s1["pred_label"].tolist() == [CLASSES[k] for k in preds.argmax(1)]
    assert slides["slide"].tolist() == ["s2", "s1", "empty"]
    assert slides["n_tiles"].tolist() == [7, 12, 0]
    assert slides["subtype"].tolist() == ["a", "b", "a"]
    assert slides["path"].iloc[0] == "/data/s2.svs" and slides["patch_size_level0"].iloc[0] == 224


def test_virtual_features_equal_concatenated_slide_rows(cohort):
    paths, out, *_ = cohort
    rows = []
    for p in paths:
        with h5py.File(p) as f:
            rows.append(f["features"][()])
    with h5py.File(out / "features.h5") as f:
        assert f["features"].is_virtual
        np.testing.assert_array_equal(f["features"][()], np.concatenate(rows))
        means = f["slide_features"][()]
    np.testing.assert_allclose(means[0], rows[0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(means[1], rows[1].mean(0), rtol=1e-6)
    assert np.isnan(means[2]).all()  # a slide without tissue has no mean


def test_merging_again_writes_the_same_bytes(cohort):
    """No timestamps in the dataset files: the same slides give the same features.h5."""
    paths, out, *_ = cohort
    first = (out / "features.h5").read_bytes()
    sheet = pd.DataFrame({"slide": ["s2", "s1", "empty"], "path": ["a", "b", "c"]})
    again = out.parent / "again"
    time.sleep(1.1)  # HDF5's object timestamps count seconds: the next one differs
    merge_dataset(
        paths,
        sheet,
        tiles_path=again / "tiles.parquet",
        slides_path=again / "slides.parquet",
        features_path=again / "features.h5",
    )
    assert (again / "features.h5").read_bytes() == first


def test_virtual_dataset_survives_moving_the_results_folder(cohort, tmp_path):
    paths, out, *_ = cohort
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    tmp_path.rename(moved)
    df = DatasetFeatures.from_dataset(moved / "cohort" / "dataset")
    assert df.features.shape == (19, 4)
    assert not np.isnan(df.features).any()


def test_dataset_features_dicts_and_exports(cohort, tmp_path):
    paths, out, tiles, _ = cohort
    df = DatasetFeatures.from_dataset(out)
    assert df.slide_names == ["s2", "s1", "empty"]
    assert df.class_names == CLASSES
    with h5py.File(paths[0]) as f:
        np.testing.assert_array_equal(df.activations["s2"], f["features"])
        np.testing.assert_array_equal(df.locations["s2"], f["coords"])
        np.testing.assert_allclose(df.predictions_by_slide["s2"], f["predictions"])
    assert df.activations["empty"].shape == (0, 4)
    table = df.to_df()
    np.testing.assert_array_equal(np.stack(table["activations"]), df.features)
    written = df.to_torch(tmp_path / "pt")
    assert [p.name for p in written] == ["s2.pt", "s1.pt", "empty.pt"]
    tensor = torch.load(written[1], weights_only=True)
    np.testing.assert_array_equal(tensor.numpy(), df.activations["s1"])
    index = np.load(tmp_path / "pt" / "s1.index.npz")
    np.testing.assert_array_equal(index["coords"], df.locations["s1"])


def test_from_h5_dir_matches_from_dataset(cohort):
    paths, out, *_ = cohort
    direct = DatasetFeatures.from_h5_dir(paths[0].parent, slides=["s2", "s1", "empty"])
    merged = DatasetFeatures.from_dataset(out)
    np.testing.assert_array_equal(direct.features, merged.features)
    np.testing.assert_allclose(direct.predictions, merged.predictions)
    assert direct.slides["path"].tolist() == merged.slides["path"].tolist()


def test_mixed_featuresets_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    a = make_slide(tmp_path, "a", 3, rng)
    b = make_slide(tmp_path, "b", 3, rng, layers=("block4",))
    sheet = pd.DataFrame({"slide": ["a", "b"], "path": ["a", "b"]})
    with pytest.raises(HistoatlasError, match=r"b\.h5 has layers.*one featureset"):
        merge_dataset(
            [a, b],
            sheet,
            tiles_path=tmp_path / "t.parquet",
            slides_path=tmp_path / "s.parquet",
            features_path=tmp_path / "f.h5",
        )
    assert not (tmp_path / "t.parquet").exists()


def test_all_empty_cohort_merges_and_says_so_when_used(tmp_path):
    rng = np.random.default_rng(2)
    paths = [make_slide(tmp_path, s, 0, rng) for s in ("a", "b")]
    sheet = pd.DataFrame({"slide": ["a", "b"], "path": ["a", "b"]})
    out = tmp_path / "ds"
    merge_dataset(
        paths,
        sheet,
        tiles_path=out / "tiles.parquet",
        slides_path=out / "slides.parquet",
        features_path=out / "features.h5",
    )
    df = DatasetFeatures.from_dataset(out)
    assert df.features.shape == (0, 4)
    with pytest.raises(EmptyDatasetError, match="fit_umap: the cohort has no tiles"):
        df.require_tiles("fit_umap")


def test_labels_take_their_type_from_the_whole_sheet(tmp_path):
    # the first slide has no grade, the last no tiles: the column is still the sheet's
    rng = np.random.default_rng(3)
    paths = [make_slide(tmp_path, s, n, rng) for s, n in (("a", 3), ("b", 4), ("c", 0))]
    sheet = pd.DataFrame(
        {"slide": ["a", "b", "c"], "path": ["a", "b", "c"], "grade": [None, "high", "low"]}
    )
    out = tmp_path / "ds"
    slides = merge_dataset(
        paths,
        sheet,
        tiles_path=out / "tiles.parquet",
        slides_path=out / "slides.parquet",
        features_path=out / "features.h5",
    )
    tiles = pd.read_parquet(out / "tiles.parquet")
    assert tiles["grade"].tolist() == [None] * 3 + ["high"] * 4
    assert tiles["pred_label"].tolist()[:3] == [
        CLASSES[k] for k in tiles[["pred_tumor", "pred_stroma"]].to_numpy()[:3].argmax(1)
    ]
    assert slides["n_tiles"].tolist() == [3, 4, 0]
    assert pq.ParquetFile(out / "tiles.parquet").metadata.num_row_groups == 3  # slide by slide
