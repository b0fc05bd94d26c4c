"""Mosaic maps: vectorised grid selection, canvas composition, slides read back, outputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histoatlas.analysis.mosaic import Mosaic
from histoatlas.analysis.mosaic_grid import grid_cells, select_tiles, unit_square
from histoatlas.analysis.mosaic_stream import mosaic_from_coords
from histoatlas.analysis.slidemap import SlideMap
from histoatlas.errors import ConfigError, EmptyDatasetError, HistoatlasError
from histoatlas.io.tiff import write_pyramid_tiff
from histoatlas.io.wsi import WSI
from tests.scripts import run_script

REPO = Path(__file__).resolve().parents[1]
MPP = 0.5
TILE_UM = 128.0  # 256 level-0 pixels at MPP 0.5
PATCH = 256


def brute_force(coords: np.ndarray, n: int, tile_select: str) -> np.ndarray:
    """For each cell, loop over all points: the nearest to its centre, or the first."""
    i = np.minimum(np.floor(np.clip(coords[:, 0], 0, 1) * n), n - 1)
    j = np.minimum(np.floor(np.clip(coords[:, 1], 0, 1) * n), n - 1)
    out = np.full((n, n), -1)
    for cj in range(n):
        for ci in range(n):
            members = np.flatnonzero((i == ci) & (j == cj))
            if not len(members):
                continue
            if tile_select == "first":
                out[cj, ci] = members[0]
            else:
                centre = np.array([(ci + 0.5) / n, (cj + 0.5) / n])
                d2 = ((coords[members] - centre) ** 2).sum(axis=1)
                out[cj, ci] = members[np.argmin(d2)]  # argmin: first of equals
    return out


def random_points(seed: int, n_points: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # clumped points leave many cells empty
    centres = rng.random((4, 2))
    pts = centres[rng.integers(0, 4, n_points)] + rng.normal(0, 0.08, (n_points, 2))
    pts = np.clip(pts, 0, 1)
    # points exactly on cell borders, on the square's edges and corners
    border = rng.integers(0, n + 1, size=(n_points // 5, 2)) / n
    border[::2, 1] = rng.random(len(border[::2]))
    # exact duplicates (ties in distance) of some points
    dupes = pts[rng.integers(0, n_points, n_points // 10)]
    return np.concatenate([pts, border, dupes, [[0, 0], [1, 1], [0, 1], [1, 0]]])


@pytest.mark.parametrize("tile_select", ["nearest", "first"])
@pytest.mark.parametrize(("seed", "n"), [(0, 7), (1, 10), (2, 25), (3, 1)])
def test_selection_equals_brute_force(seed, n, tile_select):
    coords = random_points(seed, 400, n)
    grid = select_tiles(coords, n, tile_select=tile_select)
    expected = brute_force(coords, n, tile_select)
    assert grid.shape == (n, n)
    np.testing.assert_array_equal(grid, expected)
    if n > 1:
        assert (grid == -1).any() or seed == 3  # clumps leave empty cells


def test_selection_ties_pick_the_lower_index_and_skip_nan():
    coords = np.array([[0.25, 0.25], [0.75, 0.75], [0.25, 0.25], [np.nan, 0.5], [0.8, 0.8]])
    grid = select_tiles(coords, 2)
    assert grid.tolist() == [[0, -1], [-1, 1]]
    assert select_tiles(coords[::-1], 2).tolist() == [[2, -1], [-1, 3]]
    assert select_tiles(coords, 2, tile_select="first").tolist() == [[0, -1], [-1, 1]]


def test_grid_cells_border_convention():
    coords = np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0], [0.4999, 0.75]])
    i, j = grid_cells(coords, 2)
    assert i.tolist() == [0, 1, 1, 0]
    assert j.tolist() == [0, 1, 1, 1]


def test_unit_square_scales_only_coordinates_outside_it():
    inside = np.array([[0.1, 0.2], [0.3, 0.9]])
    assert unit_square(inside) is not None and np.array_equal(unit_square(inside), inside)
    raw = np.array([[-5.0, 10.0], [5.0, 30.0], [0.0, 20.0]])
    np.testing.assert_allclose(unit_square(raw), [[0, 0], [1, 1], [0.5, 0.5]])


def test_invalid_options():
    import histoatlas

    assert histoatlas.Mosaic is Mosaic
    with pytest.raises(ConfigError, match="tile_select must be 'nearest' or 'first'"):
        select_tiles(np.zeros((2, 2)), 3, tile_select="random")
    with pytest.raises(EmptyDatasetError, match="no points"):
        Mosaic(np.zeros((0, 4, 4, 3), np.uint8), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="3 images for 2 coordinates"):
        Mosaic(np.zeros((3, 4, 4, 3), np.uint8), np.zeros((2, 2)))


# -- images in memory ------------------------------------------------------------------


def test_mosaic_of_images_draws_each_selected_image_resized(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(300, 20, 20, 3), dtype=np.uint8)
    coords = rng.random((300, 2)) ** 2  # denser near the origin: some cells empty
    mosaic = Mosaic(images, coords, num_tiles_x=8, tile_px=12, background=(10, 20, 30))
    canvas = mosaic.image
    assert canvas.shape == (8 * 12, 8 * 12, 3) and canvas.dtype == np.uint8
    np.testing.assert_array_equal(mosaic.grid, brute_force(coords, 8, "nearest"))
    table = mosaic.manifest()
    assert list(table.columns) == [
        "cell_i", "cell_j", "canvas_x", "canvas_y", "index", "umap_x", "umap_y"
    ]  # fmt: skip
    assert len(table) == int((mosaic.grid >= 0).sum()) and len(table) < 64
    for row in table.itertuples():
        block = canvas[row.canvas_y : row.canvas_y + 12, row.canvas_x : row.canvas_x + 12]
        expected = Image.fromarray(images[row.index]).resize((12, 12), Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(block, np.asarray(expected))
        assert mosaic.grid[row.cell_j, row.cell_i] == row.index
        # picture is oriented as the scatter plot: cell_j = 0 is the bottom row
        assert row.canvas_y == (7 - row.cell_j) * 12 and row.canvas_x == row.cell_i * 12
    empty_j, empty_i = np.nonzero(mosaic.grid < 0)
    for j, i in zip(empty_j, empty_i, strict=True):
        block = canvas[(7 - j) * 12 : (8 - j) * 12, i * 12 : (i + 1) * 12]
        assert (block == [10, 20, 30]).all()

    mosaic.save(tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), canvas)
    mosaic.save(tmp_path / "m.jpg")
    mosaic.save(tmp_path / "m.tiff")
    assert Image.open(tmp_path / "m.jpg").format == "JPEG"
    assert Image.open(tmp_path / "m.tiff").size == (96, 96)
    with pytest.raises(ValueError, match="'.gif'"):
        mosaic.save(tmp_path / "m.gif")
    assert not list(tmp_path.glob(".*partial*"))


def test_mosaic_accepts_lists_of_gray_and_rgba_images():
    gray = np.full((6, 6), 200, np.uint8)
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 0] = 255
    mosaic = Mosaic([gray, rgba], np.array([[0.1, 0.1], [0.9, 0.9]]), num_tiles_x=2, tile_px=6)
    assert (mosaic.image[6:, :6] == 200).all()  # bottom-left cell: the gray image
    assert (mosaic.image[:6, 6:] == [255, 0, 0]).all()  # top-right: red, alpha dropped
    assert (mosaic.image[:6, :6] == 255).all()  # empty cell: white background
    with pytest.raises(ValueError, match="uint8"):
        Mosaic([np.zeros((4, 4, 3))], np.zeros((1, 2))).render()


# -- tiles read from a slide -----------------------------------------------------------


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 2048 x 1536 pyramidal slide of random blocks, and its dataset tables."""
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((32, 32, 1), np.uint8))
    path = tmp_path_factory.mktemp("slide") / "synthetic.tiff"
    write_pyramid_tiff(path, image, mpp=MPP, n_levels=3)
    gx, gy = np.meshgrid(np.arange(8), np.arange(6))
    tiles = pd.DataFrame(
        {
            "slide": "syn",
            "tile": np.arange(48),
            "x": gx.ravel() * PATCH,
            "y": gy.ravel() * PATCH,
        }
    )
    slides = pd.DataFrame(
        {
            "slide": ["syn"],
            "path": [str(path)],
            "mpp": [MPP],
            "tile_px": [224],
            "tile_um": [TILE_UM],
            "patch_size_level0": [PATCH],
            "n_tiles": [48],
        }
    )
    return path, tiles, slides


def test_mosaic_from_slidemap_draws_tiles_read_from_the_slide(slide):
    path, tiles, slides = slide
    coords = np.random.default_rng(0).random((48, 2))
    sm = SlideMap.from_xy(coords[:, 0], coords[:, 1], tiles=tiles, slides=slides)
    mosaic = sm.generate_mosaic(num_tiles_x=5, tile_px=32, num_workers=3)
    canvas = mosaic.image
    assert canvas.shape == (5 * 32, 5 * 32, 3)
    table = mosaic.manifest()
    assert {"slide", "tile", "x", "y"} <= set(table.columns)
    assert len(table) == int((mosaic.grid >= 0).sum()) > 5
    with WSI(path, 32, TILE_UM, mpp=MPP) as wsi:
        for row in table.itertuples():
            assert (row.x, row.y) == tuple(tiles.loc[row.index, ["x", "y"]])
            block = canvas[row.canvas_y : row.canvas_y + 32, row.canvas_x : row.canvas_x + 32]
            np.testing.assert_array_equal(block, wsi.read_tile(row.x, row.y))
    # the slide's blocks differ from tile to tile: the comparison above was not trivial
    assert len({canvas[r.canvas_y, r.canvas_x].tobytes() for r in table.itertuples()}) > 3


def test_mosaic_of_slide_tile_tuples_matches_slidemap_mosaic(slide):
    _, tiles, slides = slide
    coords = np.random.default_rng(1).random((48, 2))
    pairs = [("syn", int(t)) for t in tiles["tile"]]
    by_tuple = Mosaic(pairs, coords, tiles=tiles, slides=slides, num_tiles_x=4, tile_px=16)
    sm = SlideMap.from_xy(coords[:, 0], coords[:, 1], tiles=tiles, slides=slides)
    np.testing.assert_array_equal(
        by_tuple.image, sm.generate_mosaic(num_tiles_x=4, tile_px=16).image
    )
    with pytest.raises(HistoatlasError, match=r"\('syn', 99\)"):
        Mosaic([("syn", 99)], np.zeros((1, 2)), tiles=tiles, slides=slides)
    with pytest.raises(HistoatlasError, match="slides table"):
        Mosaic(pairs, coords, tiles=tiles)


def test_mosaic_refuses_slides_table_that_does_not_match_the_slide(slide):
    _, tiles, slides = slide
    wrong = slides.assign(patch_size_level0=300)
    mosaic = Mosaic(tiles, np.random.default_rng(2).random((48, 2)), slides=wrong, tile_px=8)
    with pytest.raises(HistoatlasError, match="256 level-0 px, the dataset says 300"):
        mosaic.render()


def test_slide_level_average_map_has_no_tiles_for_a_mosaic():
    sm = SlideMap.from_xy([0.1, 0.5], [0.1, 0.5], tiles=pd.DataFrame({"slide": ["a", "b"]}))
    with pytest.raises(HistoatlasError, match="needs tiles"):
        sm.generate_mosaic()


def test_render_mosaic_script(slide, tmp_path, monkeypatch):
    _, tiles, slides = slide
    coords = np.random.default_rng(3).random((48, 2))
    SlideMap.from_xy(coords[:, 0], coords[:, 1], tiles=tiles).save_coords(
        tmp_path / "coords.parquet"
    )
    slides.to_parquet(tmp_path / "slides.parquet")
    out = tmp_path / "mosaic"
    smk = SimpleNamespace(
        input=SimpleNamespace(
            coords=str(tmp_path / "coords.parquet"), slides=str(tmp_path / "slides.parquet")
        ),
        output=SimpleNamespace(png=str(out / "mosaic.png"), manifest=str(out / "mosaic.parquet")),
        params=SimpleNamespace(num_tiles_x=6, tile_select="first", tile_px=20),
        threads=2,
        log=[str(tmp_path / "render_mosaic.log")],
    )
    run_script("render_mosaic", smk)
    assert Image.open(out / "mosaic.png").size == (120, 120)
    manifest = pd.read_parquet(out / "mosaic.parquet")
    grid = select_tiles(coords, 6, tile_select="first")
    assert len(manifest) == int((grid >= 0).sum())
    assert manifest["tile"].tolist() == [grid[r.cell_j, r.cell_i] for r in manifest.itertuples()]
    assert "mosaic of" in (tmp_path / "render_mosaic.log").read_text()


@pytest.mark.parametrize("tile_select", ["nearest", "first"])
@pytest.mark.parametrize("scale", [1.0, 7.0])  # a layout inside [0, 1], and one outside
def test_streamed_mosaic_equals_the_in_memory_one(slide, tmp_path, tile_select, scale):
    _, tiles, slides = slide
    coords = np.random.default_rng(4).random((48, 2)) * scale
    coords[5] = np.nan  # never chosen
    SlideMap.from_xy(coords[:, 0], coords[:, 1], tiles=tiles).save_coords(tmp_path / "c.parquet")
    options = {"num_tiles_x": 5, "tile_select": tile_select, "tile_px": 8}
    whole = SlideMap.load(tmp_path / "c.parquet", slides=slides).generate_mosaic(**options)
    # batches of 7 rows: the cells' winners come from different batches
    streamed = mosaic_from_coords(tmp_path / "c.parquet", slides, batch_rows=7, **options)
    np.testing.assert_array_equal(streamed.grid >= 0, whole.grid >= 0)
    pd.testing.assert_frame_equal(streamed.manifest(), whole.manifest())
    np.testing.assert_array_equal(streamed.image, whole.image)
