"""The atlas library without a browser: data files, labels, the Deep Zoom pyramid, the folder.

What the page does with these files is tested in a real browser in
tests/integration/test_atlas_browser.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histoatlas.analysis.plotting import MISSING_COLOUR, qualitative_colours
from histoatlas.atlas import AtlasSettings, build_atlas, draw_order, encode_label
from histoatlas.atlas.cohort import CohortFiles, build_cohort_atlas
from histoatlas.atlas.encode import (
    check_name,
    data_script,
    encode_array,
    quantize_unit,
    read_data_script,
)
from histoatlas.atlas.pyramid import level_size, max_level, write_pyramid
from histoatlas.errors import ConfigError, HistoatlasError
from tests.atlas_inputs import atlas_inputs

XSS = "<img src=x onerror=alert(1)></script>\u2028"

# -- data files ---------------------------------------------------------------


def test_data_script_is_ascii_and_round_trips(tmp_path):
    arrays = {
        "u16": np.array([0, 1, 65535], np.uint16),
        "i32": np.array([[-1, 2], [3, -4]], np.int32),
        "f32": np.array([0.5, np.pi], np.float32),
    }
    text = data_script("label-0", {"name": XSS, "n": 3, **arrays})
    assert text.isascii() and "</script>" not in text and "<img" not in text
    path = tmp_path / "x.js"
    path.write_text(text)
    name, values, decoded = read_data_script(path)
    assert name == "label-0" and values == {"name": XSS, "n": 3}
    for key, array in arrays.items():
        assert decoded[key].dtype == array.dtype
        np.testing.assert_array_equal(decoded[key], array)


def test_data_script_refuses_what_the_page_cannot_read():
    with pytest.raises(TypeError, match="dtype float64 .* use one of uint8"):
        encode_array(np.zeros(2))
    for name in ("../x", "Label", "", "a b"):
        with pytest.raises(ValueError, match="lower-case letters"):
            check_name(name)
    # NaN is not JSON: it becomes null
    assert data_script("meta", {"v": float("nan")}).startswith(
        'HistoAtlas.receive("meta",{"v":null}'
    )


def test_quantize_unit_maps_the_unit_interval_onto_uint16():
    q = quantize_unit(np.array([0.0, 1.0, 0.5, -0.2, 1.7, np.nan]))
    assert q.dtype == np.uint16
    assert q.tolist() == [0, 65535, 32768, 0, 65535, 0]


# -- labels -------------------------------------------------------------------


def test_categorical_label_uses_the_plots_order_and_palette():
    label = encode_label("grade", pd.Series([3, 1, None, 2, 1], dtype="Int64"))
    assert label.kind == "categorical"
    assert label.categories == ["1", "2", "3", "(missing)"]
    assert label.codes.tolist() == [2, 0, 3, 1, 0]
    assert label.counts == [2, 1, 1, 1]
    from matplotlib.colors import to_hex

    assert label.palette == [to_hex(c) for c in qualitative_colours(3)] + [MISSING_COLOUR]
    assert label.take(np.array([1, 4])).counts == [2, 0, 0, 0]


def test_continuous_label_spans_255_steps_and_marks_missing():
    values = np.array([0.0, 0.5, 1.0, np.nan, 0.25])
    label = encode_label("uncertainty", values)
    assert label.kind == "continuous" and (label.vmin, label.vmax) == (0.0, 1.0)
    assert label.codes.tolist() == [0, 127, 254, 255, 64]
    assert len(label.palette) == 256 and label.palette[255] == MISSING_COLOUR
    assert label.meta()["missing"] == 255


def test_many_categories_get_wider_codes():
    label = encode_label("slide", [f"slide-{k:04d}" for k in range(300)])
    assert label.codes.dtype == np.uint16 and label.codes.max() == 299
    assert len(label.palette) == 300  # the plots' palette (hsv beyond 60 values)


# -- Deep Zoom pyramid --------------------------------------------------------


def test_pyramid_levels_match_deep_zoom(tmp_path):
    tile, cols, rows = 16, 5, 3
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    picture = np.repeat(np.repeat(colours, tile, axis=0), tile, axis=1)
    width, height = cols * tile, rows * tile
    tiles = [
        [picture[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for c in range(cols)]
        for r in range(rows)
    ]
    n = write_pyramid(
        tmp_path, iter(tiles), width=width, height=height, tile_size=tile, quality=100
    )
    top = max_level(width, height)
    assert top == math.ceil(math.log2(80)) == 7
    expected = 0
    for level in range(top + 1):
        w, h = level_size(width, height, level)
        n_cols, n_rows = math.ceil(w / tile), math.ceil(h / tile)
        files = sorted(p.name for p in (tmp_path / str(level)).iterdir())
        assert len(files) == n_cols * n_rows, level
        expected += len(files)
        with Image.open(tmp_path / str(level) / f"{n_cols - 1}_{n_rows - 1}.jpeg") as im:
            assert im.size == (w - (n_cols - 1) * tile, h - (n_rows - 1) * tile), level
    assert n == expected
    # one level down is the picture halved (2 x 2 box average), up to JPEG error
    below = np.asarray(Image.fromarray(picture).reduce(2), dtype=np.float64)
    with Image.open(tmp_path / str(top - 1) / "1_0.jpeg") as im:
        got = np.asarray(im, dtype=np.float64)
    assert np.abs(got - below[0:tile, tile : 2 * tile]).mean() < 6  # JPEG chroma at edges


def test_pyramid_names_a_wrong_tile(tmp_path):
    tiles = [[np.zeros((16, 16, 3), np.uint8)] * 2, [np.zeros((8, 16, 3), np.uint8)]]
    with pytest.raises(ValueError, match=r"level 5, row 1: 1 tiles, expected 2"):
        write_pyramid(tmp_path, iter(tiles), width=32, height=32, tile_size=16)


# -- drawing order --------------------------------------------------------------


def test_draw_order_keeps_every_point_up_to_max_points():
    order = draw_order(100, 100, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    assert order.tolist() != list(range(100))  # shuffled: no category hides the others
    np.testing.assert_array_equal(order, draw_order(100, 100, seed=3))


def test_draw_order_samples_large_cohorts_keeping_the_given_points():
    keep = np.array([5, 17, 99_999])
    order = draw_order(100_000, 1_000, keep=keep, seed=0)
    assert len(order) == 1_000 and len(set(order.tolist())) == 1_000
    assert set(keep.tolist()) <= set(order.tolist())


def test_settings_name_the_bad_key():
    with pytest.raises(ConfigError, match="atlas.tile_px must be >= 1"):
        AtlasSettings(tile_px=0)
    with pytest.raises(ConfigError, match="atlas.jpeg_quality"):
        AtlasSettings(jpeg_quality=101)


# -- the atlas folder ---------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return atlas_inputs(tmp_path_factory.mktemp("atlas-inputs"))


def build(synthetic, out, **kwargs):
    options = {
        "points": synthetic.points,
        "labels": synthetic.labels,
        "slides": synthetic.slides,
        "mosaic": synthetic.mosaic,
        "mosaic_cols": synthetic.mosaic_cols,
        "cohort": "synthetic",
        "settings": AtlasSettings(tile_px=32, thumbnail_px=16, max_thumbnails=100),
    }
    return build_atlas(out, **{**options, **kwargs})


def test_atlas_folder_holds_page_data_pyramid_and_thumbnails(synthetic, tmp_path):
    summary = build(synthetic, tmp_path / "atlas")
    out = tmp_path / "atlas"
    n = len(synthetic.points)
    assert summary["n_points"] == summary["n_drawn"] == n
    assert summary["n_thumbnails"] == 100
    for path in (
        "index.html",
        "assets/js/main.js",
        "assets/atlas.css",
        "assets/vendor/openseadragon.min.js",
        "assets/vendor/openseadragon-LICENSE.txt",
    ):
        assert (out / path).is_file(), path
    assert not (out / "assets/vendor/README.md").exists()
    _, meta, _ = read_data_script(out / "data/meta.js")
    assert meta["cohort"] == "synthetic" and meta["n_total"] == n
    assert [label["name"] for label in meta["labels"]] == ["subtype", "slide", "prediction"]
    assert meta["labels"][0]["categories"] == ["a", "b", "c"]
    assert meta["slides"] == ["s1", "s2"]
    # every point once, at its quantised UMAP position, in the page's drawing order
    _, _, points = read_data_script(out / "data/points.js")
    _, _, tiles = read_data_script(out / "data/tiles.js")
    xy = points["xy"].reshape(-1, 2)
    page = pd.DataFrame(
        {
            "slide": np.asarray(meta["slides"])[tiles["slide"]],
            "tile": tiles["tile"],
            "qx": xy[:, 0],
            "qy": xy[:, 1],
        }
    )
    truth = synthetic.points.assign(
        qx=quantize_unit(synthetic.points["umap_x"]), qy=quantize_unit(synthetic.points["umap_y"])
    )
    merged = page.merge(truth, on=["slide", "tile"], suffixes=("", "_truth"), validate="1:1")
    assert len(merged) == n
    assert (merged["qx"] == merged["qx_truth"]).all() and (merged["qy"] == merged["qy_truth"]).all()
    _, _, label = read_data_script(out / "data/label-0.js")
    categories = np.asarray(meta["labels"][0]["categories"])
    assert (categories[label["codes"]] == page.merge(truth, on=["slide", "tile"])["subtype"]).all()
    # the mosaic: each filled cell points at its tile; the top level holds the cells
    _, _, mosaic = read_data_script(out / "data/mosaic.js")
    cols = synthetic.mosaic_cols
    for row in synthetic.mosaic.itertuples():
        point = mosaic["cells"][row.cell_j * cols + row.cell_i]
        assert (page.at[point, "slide"], page.at[point, "tile"]) == (row.slide, row.tile)
        assert tiles["cell"][point] == row.cell_j * cols + row.cell_i
    assert (mosaic["cells"] >= 0).sum() == len(synthetic.mosaic)
    top = meta["mosaic"]["top_level"]
    assert meta["mosaic"]["dzi"]["Image"]["TileSize"] == "32"
    assert len(list((out / "mosaic_files" / str(top)).iterdir())) == cols * cols
    with Image.open(out / "thumbs/0.jpeg") as im:
        assert im.size == (32 * 16, math.ceil(100 / 32) * 16)


def test_large_cohort_is_sampled_keeping_mosaic_tiles(synthetic, tmp_path):
    settings = AtlasSettings(tile_px=16, max_points=1000, max_thumbnails=0)
    points = pd.concat([synthetic.points] * 5, ignore_index=True)  # 1,200 rows
    labels = {"slide": points["slide"].to_numpy()}
    summary = build(synthetic, tmp_path / "atlas", points=points, labels=labels, settings=settings)
    assert (summary["n_points"], summary["n_drawn"], summary["n_thumbnails"]) == (1200, 1000, 0)
    _, meta, _ = read_data_script(tmp_path / "atlas/data/meta.js")
    assert meta["thumbs"] is None and meta["n_drawn"] == 1000
    _, _, mosaic = read_data_script(tmp_path / "atlas/data/mosaic.js")
    assert (mosaic["cells"] >= 0).sum() == len(synthetic.mosaic)  # every mosaic tile drawn


def test_atlas_refuses_a_mosaic_of_another_map(synthetic, tmp_path):
    wrong = synthetic.mosaic.assign(index=synthetic.mosaic["index"][::-1].to_numpy())
    with pytest.raises(HistoatlasError, match="does not match the UMAP .* rerun render_mosaic"):
        build(synthetic, tmp_path / "a", mosaic=wrong)
    with pytest.raises(HistoatlasError, match="8-column grid"):
        build(synthetic, tmp_path / "b", mosaic=synthetic.mosaic.assign(cell_i=8))
    with pytest.raises(HistoatlasError, match=r"lack column\(s\) \['umap_x'\]"):
        build(synthetic, tmp_path / "c", points=synthetic.points.drop(columns="umap_x"))
    (tmp_path / "d").mkdir()
    with pytest.raises(HistoatlasError, match="exists; remove it"):
        build(synthetic, tmp_path / "d")


def test_cohort_atlas_is_written_atomically(synthetic, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    coords = synthetic.points[["slide", "tile", "x", "y", "umap_x", "umap_y"]]
    coords.to_parquet(results / "coords.parquet")
    synthetic.points.drop(columns=["umap_x", "umap_y"]).to_parquet(results / "tiles.parquet")
    synthetic.slides.to_parquet(results / "slides.parquet")
    synthetic.mosaic.to_parquet(results / "mosaic.parquet")
    row = synthetic.points.iloc[0]
    pd.DataFrame(
        [
            {
                "slide": row.slide,
                "x": row.x,
                "y": row.y,
                "class_name": "a",
                "probability": 0.9,
                "method": "vanilla",
                "png": str(results / "missing.png"),
                "overlay": str(results / "missing_overlay.png"),
            }
        ]
    ).to_csv(results / "maps.csv")
    files = {f: results / f"{f}.parquet" for f in ("coords", "tiles", "slides", "mosaic")}
    files = {**files, "features": results / "features.h5", "log": "ignored"}  # as smk.input
    options = {
        "mosaic_cols": synthetic.mosaic_cols,
        "labels": ["subtype", "uncertainty"],
        "settings": AtlasSettings(tile_px=16, max_thumbnails=0),
    }
    with_maps = CohortFiles.from_mapping({**files, "saliency": results / "maps.csv"})
    with pytest.raises(HistoatlasError, match="missing.png listed in maps.csv does not exist"):
        build_cohort_atlas(results / "atlas", with_maps, **options)
    assert sorted(p.name for p in results.iterdir() if "atlas" in p.name) == []
    summary = build_cohort_atlas(results / "atlas", CohortFiles.from_mapping(files), **options)
    assert summary["n_points"] == len(coords)
    _, meta, _ = read_data_script(results / "atlas/data/meta.js")
    assert [(label["name"], label["kind"]) for label in meta["labels"]] == [
        ("subtype", "categorical"),
        ("uncertainty", "continuous"),
    ]
    assert meta["settings"]["tile_px"] == 16
