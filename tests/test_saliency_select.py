"""Choosing the tiles to explain: explicit points snapped to tiles, top k per class."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from histoatlas.errors import ConfigError, EmptyDatasetError, SheetError
from histoatlas.saliency.select import (
    COLUMNS,
    class_columns,
    select_tiles,
    select_tiles_to_csv,
    tile_dir_name,
)

CLASSES = ["tumor", "stroma", "immune cells"]
PATCH = {"s1": 100, "s2": 200}
SCRIPT = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "select_saliency_tiles.py"


def make_tables(seed: int = 0, stride: dict | None = None):
    """Two slides on regular grids (s1: 5 x 4 tiles of 100 px, s2: 3 x 3 of 200 px),
    with the tile at grid (2, 1) of s1 missing (filtered out as background)."""
    rng = np.random.default_rng(seed)
    stride = stride or PATCH
    rows = []
    for slide, (nx, ny) in {"s1": (5, 4), "s2": (3, 3)}.items():
        k = 0
        for j in range(ny):
            for i in range(nx):
                if slide == "s1" and (i, j) == (2, 1):
                    continue
                rows.append(
                    {
                        "slide": slide,
                        "tile": k,
                        "x": i * stride[slide],
                        "y": j * stride[slide],
                        "grid_i": i,
                        "grid_j": j,
                        "subtype": "A" if slide == "s1" else "B",
                    }
                )
                k += 1
    tiles = pd.DataFrame(rows)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(tiles)).astype(np.float32)
    for c, name in enumerate(CLASSES):
        tiles[f"pred_{name}"] = probs[:, c]
    tiles["pred_label"] = np.asarray(CLASSES, dtype=object)[probs.argmax(1)]
    slides = pd.DataFrame(
        {
            "slide": ["s1", "s2"],
            "path": ["/data/s1.svs", "/data/s2.tiff"],
            "mpp": [0.5, 0.25],
            "tile_px": [64, 64],
            "tile_um": [50.0, 50.0],
            "patch_size_level0": [PATCH["s1"], PATCH["s2"]],
            "n_tiles": [19, 9],
            "subtype": ["A", "B"],
        }
    )
    return tiles, slides


def test_class_columns_in_order():
    tiles, _ = make_tables()
    assert class_columns(tiles) == [f"pred_{c}" for c in CLASSES]


def test_explicit_point_snaps_to_its_tile():
    tiles, slides = make_tables()
    out = select_tiles(tiles, slides, [{"slide": "s1", "x": 350, "y": 199.5}])
    assert list(out.columns) == COLUMNS
    row = out.iloc[0]
    (expected,) = tiles.index[(tiles.slide == "s1") & (tiles.x == 300) & (tiles.y == 100)]
    probs = tiles.loc[expected, [f"pred_{c}" for c in CLASSES]].to_numpy(float)
    assert (row.slide, row.x, row.y, row.tile) == ("s1", 300, 100, tiles.tile[expected])
    assert row.class_idx == int(np.argmax(probs))
    assert row.class_name == CLASSES[row.class_idx] == tiles.pred_label[expected]
    assert row.probability == pytest.approx(probs.max())
    assert (row.path, row.mpp, row.tile_px, row.tile_um) == ("/data/s1.svs", 0.5, 64, 50.0)
    assert row["name"] == f"s1_300_100_{row.class_name}"


def test_explicit_point_on_tile_edges_and_chosen_class():
    tiles, slides = make_tables()
    spec = [
        {"slide": "s2", "x": 400, "y": 0, "class": "stroma"},  # left/top edges belong to the tile
        {"slide": "s2", "x": 399.9, "y": 599.9, "class": 2},
    ]
    out = select_tiles(tiles, slides, spec)
    assert out[["x", "y", "class_idx", "class_name"]].values.tolist() == [
        [400, 0, 1, "stroma"],
        [200, 400, 2, "immune cells"],
    ]
    (i,) = tiles.index[(tiles.slide == "s2") & (tiles.x == 400) & (tiles.y == 0)]
    assert out.probability[0] == pytest.approx(tiles["pred_stroma"][i])
    assert out["name"][1] == "s2_200_400_immune_cells"


def test_overlapping_tiles_pick_the_nearest_centre():
    tiles, slides = make_tables(stride={"s1": 50, "s2": 100})  # stride_div 2
    spec = [{"slide": "s1", "x": 90, "y": 90}, {"slide": "s1", "x": 90, "y": 60}]
    out = select_tiles(tiles, slides, spec)
    # tiles at x, y in {0, 50} contain both points; the nearest centres are (100, 100) and
    # (100, 50)
    assert out[["x", "y"]].values.tolist() == [[50, 50], [50, 0]]


def test_point_off_tissue_names_slide_and_point():
    tiles, slides = make_tables()
    with pytest.raises(ConfigError, match=r"\(250, 150\) of slide 's1' is not inside any kept"):
        select_tiles(tiles, slides, [{"slide": "s1", "x": 250, "y": 150}])  # the missing tile
    with pytest.raises(ConfigError, match=r"\(5000, 10\) of slide 's2'.*nearest kept tile"):
        select_tiles(tiles, slides, [{"slide": "s2", "x": 5000, "y": 10}])


def test_explicit_spec_errors():
    tiles, slides = make_tables()
    with pytest.raises(ConfigError, match="slide 's9' is not in the dataset; slides: s1, s2"):
        select_tiles(tiles, slides, [{"slide": "s9", "x": 0, "y": 0}])
    with pytest.raises(ConfigError, match=r"tiles\[0\] must be a mapping with slide, x and y"):
        select_tiles(tiles, slides, [{"slide": "s1", "x": 0}])
    with pytest.raises(ConfigError, match="class 'normal' unknown; classes: tumor, stroma"):
        select_tiles(tiles, slides, [{"slide": "s1", "x": 0, "y": 0, "class": "normal"}])
    with pytest.raises(ConfigError, match="class 3 unknown"):
        select_tiles(tiles, slides, [{"slide": "s1", "x": 0, "y": 0, "class": 3}])
    no_preds = tiles.drop(columns=[f"pred_{c}" for c in CLASSES])
    with pytest.raises(ConfigError, match="no class and the dataset has no predictions"):
        select_tiles(no_preds, slides, [{"slide": "s1", "x": 0, "y": 0}])
    out = select_tiles(no_preds, slides, [{"slide": "s1", "x": 0, "y": 0, "class": 1}])
    assert (out.class_idx[0], out.class_name[0]) == (1, "1") and np.isnan(out.probability[0])


def test_same_tile_twice_is_kept_once():
    tiles, slides = make_tables()
    spec = [{"slide": "s1", "x": 10, "y": 10}, {"slide": "s1", "x": 90, "y": 90}]
    assert len(select_tiles(tiles, slides, spec)) == 1


@pytest.mark.parametrize("k", [1, 3, "2"])
def test_top_k_per_class_picks_the_highest_probabilities(k):
    tiles, slides = make_tables(seed=1)
    out = select_tiles(tiles, slides, {"top_k_per_class": k})
    k = int(k)
    assert len(out) == k * len(CLASSES)
    for c, name in enumerate(CLASSES):
        mine = out[out.class_idx == c]
        assert (mine.class_name == name).all()
        probs = tiles[f"pred_{name}"].to_numpy()
        best = np.sort(probs)[::-1][:k]
        np.testing.assert_allclose(mine.probability, best, rtol=1e-6)  # in descending order
        chosen = tiles.loc[np.argsort(-probs, kind="stable")[:k]]
        assert list(zip(mine.slide, mine.x, mine.y, strict=True)) == list(
            zip(chosen.slide, chosen.x, chosen.y, strict=True)
        )
        assert (probs[tiles.index.difference(chosen.index)] <= best[-1]).all()
    assert set(out.path) <= {"/data/s1.svs", "/data/s2.tiff"}


def test_top_k_errors():
    tiles, slides = make_tables()
    with pytest.raises(ConfigError, match=">= 1, got 0"):
        select_tiles(tiles, slides, {"top_k_per_class": 0})
    with pytest.raises(ConfigError, match="must be an integer, got 'many'"):
        select_tiles(tiles, slides, {"top_k_per_class": "many"})
    with pytest.raises(ConfigError, match="no pred_<class> columns"):
        select_tiles(tiles[["slide", "tile", "x", "y"]], slides, {"top_k_per_class": 1})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['top'\]"):
        select_tiles(tiles, slides, {"top_k_per_class": 1, "top": 2})
    with pytest.raises(ConfigError, match="must be a list of"):
        select_tiles(tiles, slides, "all")
    with pytest.raises(EmptyDatasetError):
        select_tiles(tiles.iloc[:0], slides, {"top_k_per_class": 1})
    with pytest.raises(SheetError, match=r"slides table lacks column\(s\) \['patch_size_level0'\]"):
        select_tiles(tiles, slides.drop(columns="patch_size_level0"), {"top_k_per_class": 1})
    with pytest.raises(SheetError, match=r"no row for slide\(s\) \['s2'\]"):
        select_tiles(tiles, slides.iloc[:1], {"top_k_per_class": 2})


def test_tile_dir_name_is_path_safe():
    assert tile_dir_name("s1", 10, 20, "immune cells/B") == "s1_10_20_immune_cells_B"


def test_csv_round_trip_and_script(tmp_path):
    tiles, slides = make_tables()
    tiles.to_parquet(tmp_path / "tiles.parquet")
    slides.to_parquet(tmp_path / "slides.parquet")
    spec = {"top_k_per_class": 2}
    out = tmp_path / "saliency" / "tiles.csv"
    written = select_tiles_to_csv(
        tmp_path / "tiles.parquet", tmp_path / "slides.parquet", spec, out
    )
    back = pd.read_csv(out)
    assert list(back.columns) == COLUMNS
    pd.testing.assert_frame_equal(back, written, check_dtype=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiles.csv"]

    # the rule's entry script, called as Snakemake would
    module_spec = importlib.util.spec_from_file_location("select_saliency_tiles", SCRIPT)
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)
    smk = SimpleNamespace(
        input=SimpleNamespace(
            tiles=str(tmp_path / "tiles.parquet"), slides=str(tmp_path / "slides.parquet")
        ),
        output=SimpleNamespace(csv=str(tmp_path / "rule" / "tiles.csv")),
        params=SimpleNamespace(tiles=[{"slide": "s2", "x": 250, "y": 250}]),
        log=[str(tmp_path / "rule.log")],
    )
    script.main(smk)
    rule = pd.read_csv(tmp_path / "rule" / "tiles.csv")
    assert rule[["slide", "x", "y"]].values.tolist() == [["s2", 200, 200]]
    assert "selected 1 tile(s) from 1 slide(s)" in (tmp_path / "rule.log").read_text()


@pytest.mark.parametrize(
    "spec",
    [
        {"top_k_per_class": 1},
        {"top_k_per_class": 3},
        [{"slide": "s2", "x": 250, "y": 10}, {"slide": "s1", "x": 0, "y": 0, "class": 2}],
    ],
)
def test_tiles_read_in_batches_give_the_whole_table_s_choice(spec, tmp_path):
    tiles, slides = make_tables(seed=4)
    # ties across batches: equal probabilities must still go to the earlier tile
    tiles.loc[[3, 20], "pred_tumor"] = tiles["pred_tumor"].max()
    tiles.to_parquet(tmp_path / "tiles.parquet", index=False)
    slides.to_parquet(tmp_path / "slides.parquet", index=False)
    expected = select_tiles(tiles, slides, spec)
    written = select_tiles_to_csv(
        tmp_path / "tiles.parquet",
        tmp_path / "slides.parquet",
        spec,
        tmp_path / "t.csv",
        batch_rows=4,
    )
    pd.testing.assert_frame_equal(written, expected)
