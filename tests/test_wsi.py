"""WSI: tiling geometry, tissue detection, tile reading, filters and errors (synthetic slides)."""

from __future__ import annotations

import threading

import numpy as np
import openslide
import pytest
from PIL import Image

from histoatlas.errors import ConfigError, MPPError, SlideError, TileReadError
from histoatlas.io import tissue
from histoatlas.io.tiff import write_pyramid_tiff
from histoatlas.io.wsi import WSI, TileBatch, parse_tile_um

# The default synthetic slide: 2048 x 1536 px at 0.5 um/px, three pyramid levels
# (downsample 1, 2, 4) and tissue on two grid-aligned rectangles. tile_um=64 gives
# 128 px tiles: a 16 x 12 grid whose tissue tiles are columns 2-7 x rows 2-5 and
# columns 10-13 x rows 7-10.
DEFAULT_TISSUE = ((256, 256, 1024, 768), (1280, 896, 1792, 1408))  # as in conftest
TISSUE_TILES = {(i, j) for i in range(2, 8) for j in range(2, 6)} | {
    (i, j) for i in range(10, 14) for j in range(7, 11)
}


@pytest.fixture
def slide(synthetic_slide):
    return synthetic_slide()


def _expected_tiles(slide, patch, stride, min_fraction):
    """Grid tiles whose footprint is at least ``min_fraction`` tissue, row by row."""
    width, height = slide.size
    return [
        (i, j)
        for j in range((height - patch) // stride + 1)
        for i in range((width - patch) // stride + 1)
        if slide.covers(i * stride, j * stride, patch) >= min_fraction
    ]


# -- geometry ---------------------------------------------------------------------


def test_grid_geometry_and_tissue_tiles(slide):
    wsi = WSI(slide.path, tile_px=64, tile_um=64)
    assert wsi.mpp == pytest.approx(0.5)
    assert wsi.dimensions == (2048, 1536)
    assert wsi.tile_um == 64.0
    assert (wsi.patch_size_level0, wsi.stride_level0) == (128, 128)
    assert wsi.grid_shape == (16, 12)
    assert wsi.tissue_mask.shape == (16, 12) and wsi.tissue_mask.dtype == bool

    cand = wsi.candidates
    assert cand.dtype == np.int32 and cand.shape == (len(TISSUE_TILES), 2)
    # Exactly the tiles inside tissue, row by row (j, then i).
    assert [tuple(ij) for ij in cand] == _expected_tiles(slide, 128, 128, 0.5)
    assert set(map(tuple, cand.tolist())) == TISSUE_TILES
    coords = wsi.coords_of(cand)
    assert coords.dtype == np.int64
    np.testing.assert_array_equal(coords, cand.astype(np.int64) * 128)
    assert all(slide.covers(x, y, 128) == 1.0 for x, y in coords)


def test_partial_tiles_follow_tissue_fraction(synthetic_slide):
    # Tissue covering 3/4 of the tiles of column 3 (x 384..480 of 384..512).
    slide = synthetic_slide(tissue=[(128, 128, 480, 640)])
    full = {(i, j) for i in (1, 2) for j in range(1, 5)}
    partial = {(3, j) for j in range(1, 5)}
    at_half = WSI(slide.path, 64, 64, tissue_fraction=0.5)
    at_90 = WSI(slide.path, 64, 64, tissue_fraction=0.9)
    assert set(map(tuple, at_half.candidates.tolist())) == full | partial
    assert set(map(tuple, at_90.candidates.tolist())) == full


@pytest.mark.parametrize(
    ("tile_um", "tile_px", "um", "patch"),
    [(64, 64, 64.0, 128), (33.3, 64, 33.3, 67), ("10x", 64, 64.0, 128), ("20x", 64, 32.0, 64),
     ("40x", 64, 16.0, 32), ("20X", 224, 112.0, 224), ("112", 224, 112.0, 224)],
)  # fmt: skip
def test_tile_um_in_microns_and_magnification(slide, tile_um, tile_px, um, patch):
    assert parse_tile_um(tile_um, tile_px) == pytest.approx(um)
    wsi = WSI(slide.path, tile_px, tile_um)
    assert wsi.tile_um == pytest.approx(um)
    assert wsi.patch_size_level0 == patch  # round(tile_um / 0.5)


@pytest.mark.parametrize("bad", ["abc", "0x", "-10x", -5, 0, float("nan"), None, True])
def test_bad_tile_um_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"tile_um=.* is not a tile size"):
        parse_tile_um(bad, 224)


def test_stride_div_2_doubles_grid_density(slide):
    one = WSI(slide.path, 64, 64, tissue_fraction=0.9)
    two = WSI(slide.path, 64, 64, stride_div=2, tissue_fraction=0.9)
    assert two.stride_level0 == 64 and two.patch_size_level0 == 128
    assert two.grid_shape == (31, 23)  # (2048 - 128) // 64 + 1, (1536 - 128) // 64 + 1
    expected = _expected_tiles(slide, 128, 64, 0.9)
    assert [tuple(ij) for ij in two.candidates] == expected
    assert len(expected) == 11 * 7 + 7 * 7
    # Every stride-1 tile is the stride-2 tile at twice the index, at the same place.
    doubled = {(2 * i, 2 * j) for i, j in one.candidates.tolist()}
    assert doubled <= set(map(tuple, two.candidates.tolist()))
    np.testing.assert_array_equal(two.coords_of([4, 6]), one.coords_of([2, 3]))


def test_read_level_is_coarsest_adequate(slide):
    cases = {32: (0, 64), 64: (1, 64), 96: (1, 96), 128: (2, 64), 256: (2, 128)}
    for tile_um, (level, region) in cases.items():
        wsi = WSI(slide.path, tile_px=64, tile_um=tile_um, otsu=False)
        assert wsi.read_level == level, tile_um
        assert wsi.read_downsample == pytest.approx(2.0**level)
        assert wsi.read_tile(256, 256).shape == (64, 64, 3)
        assert wsi._region_px == region


def test_small_slide_has_an_empty_grid(synthetic_slide):
    slide = synthetic_slide(size=(120, 100), tissue=[(0, 0, 120, 100)], n_levels=1, tile=64)
    wsi = WSI(slide.path, 64, 64)
    assert wsi.grid_shape == (0, 0)
    assert wsi.candidates.shape == (0, 2)
    assert list(wsi.iter_batches(8)) == []
    assert wsi.qc == {"n_grid": 0, "n_candidates": 0, "n_kept": 0, "n_filtered": 0}


# -- tissue detection ---------------------------------------------------------------


def test_blank_slide_has_no_candidates(synthetic_slide, tmp_path):
    for background in [(255, 255, 255), (236, 236, 236), (0, 0, 0)]:
        slide = synthetic_slide(name=f"blank{background[0]}", tissue=[], background=background)
        wsi = WSI(slide.path, 64, 64)
        assert wsi.candidates.shape == (0, 2), background
        assert list(wsi.iter_batches(16)) == []
        assert wsi.qc["n_grid"] == 192 and wsi.qc["n_kept"] == 0
    # Glass with colour blotches (saturation up to 0.04): Otsu alone would split them.
    rng = np.random.default_rng(1)
    blotches = rng.integers(-5, 6, (12, 16, 3))
    glass = (240 + np.repeat(np.repeat(blotches, 64, axis=0), 64, axis=1)).astype(np.uint8)
    write_pyramid_tiff(tmp_path / "glass.tiff", glass, 0.5, n_levels=2)
    assert len(WSI(tmp_path / "glass.tiff", 64, 64).candidates) == 0


def test_dark_background_slide_finds_the_bright_tissue(tmp_path):
    # A one-channel fluorescence scan (as the NDPI DAPI test slide): every non-black
    # pixel has saturation 1, so only brightness tells the tissue (dim
    # autofluorescence with bright nuclei) from the noisy black background.
    rng = np.random.default_rng(2)
    image = rng.integers(0, 6, (1536, 2048, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in DEFAULT_TISSUE:
        height, width = y1 - y0, x1 - x0
        region = rng.integers(14, 22, (height, width, 3), dtype=np.uint8)
        nuclei = rng.random((height // 8, width // 8)) < 0.25
        region[np.repeat(np.repeat(nuclei, 8, axis=0), 8, axis=1)] = 230
        image[y0:y1, x0:x1] = region
    image[..., :2] = 0
    write_pyramid_tiff(tmp_path / "dapi.tiff", image, 0.5)
    wsi = WSI(tmp_path / "dapi.tiff", 64, 64)
    assert set(map(tuple, wsi.candidates.tolist())) == TISSUE_TILES
    assert wsi.qc is None
    assert sum(len(b.tiles) for b in wsi.iter_batches(16)) == len(TISSUE_TILES)


def test_otsu_false_makes_every_tile_a_candidate(slide):
    wsi = WSI(slide.path, 64, 64, otsu=False)
    assert wsi.tissue_mask.all() and len(wsi.candidates) == 16 * 12
    assert [tuple(ij) for ij in wsi.candidates[:3]] == [(0, 0), (1, 0), (2, 0)]


def test_grid_fractions_on_a_known_mask():
    mask = np.zeros((30, 40), bool)  # 10 level-0 px per mask px
    mask[:, :15] = True
    frac = tissue.grid_fractions(mask, (10.0, 10.0), patch=100, stride=100, grid_shape=(4, 3))
    np.testing.assert_allclose(frac[:, 0], [1.0, 0.5, 0.0, 0.0])
    assert np.all(frac == frac[:, :1])


# -- reading --------------------------------------------------------------------------


def test_tile_pixels_equal_the_level0_region_resized_by_hand(slide):
    level0 = WSI(slide.path, tile_px=128, tile_um=64)  # reads level 0, no resize
    hand = openslide.OpenSlide(str(slide.path))
    i, j = 3, 4
    x, y = 3 * 128, 4 * 128
    by_hand = np.asarray(hand.read_region((x, y), 0, (128, 128)).convert("RGB"))
    np.testing.assert_array_equal(level0[i, j], by_hand)
    np.testing.assert_array_equal(level0.read_tile(x, y), by_hand)
    # JPEG only: close to the pixels written.
    written = slide.image[y : y + 128, x : x + 128].astype(int)
    assert np.abs(level0[i, j].astype(int) - written).mean() < 3

    # 64 px tiles of the same footprint come from level 1: close to level 0 resized.
    small = WSI(slide.path, tile_px=64, tile_um=64)
    assert small.read_level == 1
    resized = np.asarray(Image.fromarray(by_hand).resize((64, 64), Image.Resampling.BILINEAR))
    diff = np.abs(small[i, j].astype(int) - resized.astype(int))
    assert diff.mean() < 4 and small[i, j].dtype == np.uint8
    # ...and a different tile is clearly different (the comparison has power).
    assert np.abs(small[i + 1, j].astype(int) - resized.astype(int)).mean() > 10

    # 192 px footprints at 64 px: level 1 (96 px regions), resized with PIL's bilinear.
    odd = WSI(slide.path, tile_px=64, tile_um=96)
    assert (odd.read_level, odd.patch_size_level0) == (1, 192)
    x, y = odd.coords_of((i, j))
    region = hand.read_region((int(x), int(y)), 1, (96, 96)).convert("RGB")
    by_hand = np.asarray(region.resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(odd[i, j], by_hand)


def test_getitem_outside_grid(slide):
    wsi = WSI(slide.path, 64, 64)
    with pytest.raises(IndexError, match=r"'slide'.*\(16, 0\).*\(16, 12\)"):
        wsi[16, 0]


def test_tile_at(slide):
    wsi = WSI(slide.path, 64, 48)  # 96 px tiles: 21 x 16 grid covering x < 2016
    assert wsi.grid_shape == (21, 16)
    assert wsi.tile_at(0, 0) == (0, 0)
    assert wsi.tile_at(95, 96) == (0, 1)
    assert wsi.tile_at(2015.5, 1535) == (20, 15)
    with pytest.raises(SlideError, match=r"'slide'.*\(2030, 10\).*outside the tile grid"):
        wsi.tile_at(2030, 10)
    for x, y in [(2048, 0), (-1, 5), (0, 1536)]:
        with pytest.raises(SlideError, match=rf"'slide'.*\({x}, {y}\).*outside the slide"):
            wsi.tile_at(x, y)
    # Overlapping tiles: the last-starting tile that contains the point.
    half = WSI(slide.path, 64, 64, stride_div=2)
    assert half.tile_at(130, 70) == (2, 1)
    assert half.tile_at(2040, 1530) == (30, 22)  # beyond the last start, still inside
    i, j = half.tile_at(1000, 700)
    x0, y0 = half.coords_of((i, j))
    assert x0 <= 1000 < x0 + 128 and y0 <= 700 < y0 + 128


def test_mpp_from_file_and_argument(synthetic_slide):
    slide = synthetic_slide(mpp=0.25)
    assert WSI(slide.path, 64, 64).mpp == pytest.approx(0.25)
    assert WSI(slide.path, 64, 64).patch_size_level0 == 256
    given = WSI(slide.path, 64, 64, mpp=0.5)
    assert given.mpp == 0.5 and given.patch_size_level0 == 128
    # An empty sheet cell (NaN) falls back to the file.
    assert WSI(slide.path, 64, 64, mpp=float("nan")).mpp == pytest.approx(0.25)
    assert WSI(slide.path, 64, 64, mpp="0.4").mpp == 0.4


def test_repr_and_context_manager(slide):
    with WSI(slide.path, 64, "20x", name="s01") as wsi:
        text = repr(wsi)
    assert text.startswith("WSI('s01', path=")
    for part in ["mpp=0.5", "dimensions=(2048, 1536)", "tile_um=32", "grid_shape=(32, 24)"]:
        assert part in text


# -- errors ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match=r"'ghost'.*file not found.*ghost\.svs"):
        WSI(tmp_path / "ghost.svs", 64, 64)


def test_not_a_slide(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("not a slide\n")
    with pytest.raises(SlideError, match=r"'notes': OpenSlide cannot open .*notes\.svs"):
        WSI(path, 64, 64)


def test_no_mpp(synthetic_slide):
    slide = synthetic_slide(name="nompp", mpp=None)
    with pytest.raises(MPPError, match=r"'nompp'.*no MPP in the file.*sheet's `mpp` column"):
        WSI(slide.path, 64, 64)
    assert WSI(slide.path, 64, 64, mpp=0.5).patch_size_level0 == 128


@pytest.mark.parametrize(("file_mpp", "given"), [(500.0, None), (0.5, 0), (0.5, -0.25), (0.5, 101)])
def test_absurd_mpp(synthetic_slide, file_mpp, given):
    slide = synthetic_slide(name="absurd", mpp=file_mpp, tissue=[], size=(512, 512))
    shown = "500" if given is None else str(given)
    with pytest.raises(MPPError, match=rf"'absurd'.*{shown}.*\(0, 100\].*`mpp` column"):
        WSI(slide.path, 64, 64, mpp=given)


def test_bad_options(slide):
    with pytest.raises(ConfigError, match="tile_px=0"):
        WSI(slide.path, 0, 64)
    with pytest.raises(ConfigError, match="stride_div=1.5"):
        WSI(slide.path, 64, 64, stride_div=1.5)
    with pytest.raises(ConfigError, match="tissue_fraction=2"):
        WSI(slide.path, 64, 64, tissue_fraction=2)
    with pytest.raises(ConfigError, match="grid step under one pixel"):
        WSI(slide.path, 64, 0.1)
    with pytest.raises(ConfigError, match="batch_size=0"):
        WSI(slide.path, 64, 64).iter_batches(0)


def _corrupt_first_tile(path):
    """Overwrite the JPEG data of the slide's first level-0 TIFF tile with zeros."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * count)


def test_unreadable_tile(synthetic_slide):
    slide = synthetic_slide(name="corrupt", tissue=[(0, 0, 2048, 1536)])
    _corrupt_first_tile(slide.path)
    wsi = WSI(slide.path, tile_px=128, tile_um=64, otsu=False)
    assert wsi.read_tile(512, 512).shape == (128, 128, 3)  # other tiles still read
    wsi = WSI(slide.path, tile_px=128, tile_um=64, otsu=False)
    with pytest.raises(TileReadError, match=r"'corrupt'.*\(x, y\) = \(128, 0\)"):
        wsi.read_tile(128, 0)
    threaded = WSI(slide.path, tile_px=128, tile_um=64, otsu=False)
    with pytest.raises(TileReadError, match=r"'corrupt'.*\(x, y\) = \(0, 0\)"):
        list(threaded.iter_batches(4, num_workers=2))


# -- filters -------------------------------------------------------------------------------


def _tile_with(fraction, colour, rest=(200, 100, 160), px=40):
    """A px x px tile whose first ``fraction`` of rows are ``colour``, the rest ``rest``."""
    tile = np.empty((px, px, 3), np.uint8)
    tile[:] = rest
    tile[: round(fraction * px)] = colour
    return tile


def test_grayspace_filter():
    gray = (180, 182, 178)  # saturation 0.022 < 0.05
    assert tissue.saturation(np.array(gray, np.uint8)) < 0.05
    tiles = np.stack([_tile_with(f, gray) for f in (0.0, 0.5, 0.6, 0.65, 1.0)])
    np.testing.assert_allclose(tissue.grayspace_fraction(tiles, 0.05), [0, 0.5, 0.6, 0.65, 1])
    np.testing.assert_array_equal(tissue.passes_filters(tiles), [1, 1, 1, 0, 0])
    assert tissue.passes_filters(tiles, grayspace_fraction_max=1.0).all()  # disabled
    # Black counts as gray (saturation 0), as in skimage.
    assert tissue.grayspace_fraction(_tile_with(1.0, (0, 0, 0)), 0.05) == 1.0


def test_grayspace_matches_skimage_hsv():
    from skimage.color import rgb2hsv

    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    tiles[..., 1] = np.clip(tiles[..., 0].astype(int) + rng.integers(-12, 13, (4, 32, 32)), 0, 255)
    tiles[..., 2] = np.clip(tiles[..., 0].astype(int) + rng.integers(-12, 13, (4, 32, 32)), 0, 255)
    expected = np.stack([rgb2hsv(t)[..., 1] for t in tiles])
    np.testing.assert_allclose(tissue.saturation(tiles), expected, atol=1e-6)
    for threshold in (0.03, 0.0731, 0.2):
        np.testing.assert_allclose(
            tissue.grayspace_fraction(tiles, threshold),
            (expected < threshold).mean(axis=(1, 2)),
            atol=2 / 1024,  # a pixel exactly on the threshold may round either way
        )


def test_whitespace_filter_uses_mean_brightness():
    # Mean of (250, 250, 200) is 233 > 230: white in slideflow's sense, though B < 230.
    assert tissue.whitespace_fraction(_tile_with(1.0, (250, 250, 200)), 230) == 1.0
    assert tissue.whitespace_fraction(_tile_with(1.0, (240, 230, 220)), 230) == 0.0  # mean 230
    tiles = np.stack([_tile_with(f, (245, 245, 245)) for f in (0.0, 0.4, 0.6, 1.0)])
    np.testing.assert_allclose(tissue.whitespace_fraction(tiles, 230), [0, 0.4, 0.6, 1])
    keep = tissue.passes_filters(tiles, grayspace_fraction_max=1.0, whitespace_fraction_max=0.5)
    np.testing.assert_array_equal(keep, [1, 1, 0, 0])
    # The default whitespace fraction 1.0 never rejects (slideflow's "disabled").
    assert tissue.passes_filters(tiles, grayspace_fraction_max=1.0).all()


def test_wsi_passes_filters_uses_its_settings(slide):
    white_half = _tile_with(0.5, (250, 250, 250))
    assert WSI(slide.path, 64, 64).passes_filters(white_half) is True
    assert WSI(slide.path, 64, 64, grayspace_fraction=0.4).passes_filters(white_half) is False
    strict = WSI(slide.path, 64, 64, grayspace_fraction=1.0, whitespace_fraction=0.3)
    assert strict.passes_filters(white_half) is False


# -- iter_batches -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iter_batches_yields_kept_tiles_in_order(slide, num_workers):
    # Every grid tile is a candidate; the grayspace filter drops the white ones.
    wsi = WSI(slide.path, 64, 64, otsu=False)
    batches = list(wsi.iter_batches(7, num_workers=num_workers))
    assert all(isinstance(b, TileBatch) for b in batches)
    assert [len(b.tiles) for b in batches] == [7] * 5 + [5]  # 40 kept
    grid = np.concatenate([b.grid for b in batches])
    coords = np.concatenate([b.coords for b in batches])
    tiles = np.concatenate([b.tiles for b in batches])
    assert grid.dtype == np.int32 and coords.dtype == np.int64 and tiles.dtype == np.uint8
    assert [tuple(ij) for ij in grid] == _expected_tiles(slide, 128, 128, 1.0)
    np.testing.assert_array_equal(coords, grid.astype(np.int64) * 128)
    sequential = np.stack([wsi.read_tile(x, y) for x, y in coords])
    np.testing.assert_array_equal(tiles, sequential)
    assert wsi.qc == {"n_grid": 192, "n_candidates": 192, "n_kept": 40, "n_filtered": 152}


def test_iter_batches_with_otsu_keeps_candidates(slide):
    wsi = WSI(slide.path, 64, 64)
    batches = list(wsi.iter_batches(64))
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0].grid, wsi.candidates)
    assert wsi.qc == {"n_grid": 192, "n_candidates": 40, "n_kept": 40, "n_filtered": 0}


def test_iter_batches_prefetch_is_bounded_and_closes(slide, monkeypatch):
    wsi = WSI(slide.path, 64, 64)
    calls = []
    original = WSI._read

    def counting_read(self, handle, x, y):
        calls.append((x, y))
        return original(self, handle, x, y)

    monkeypatch.setattr(WSI, "_read", counting_read)
    threads_before = threading.active_count()
    batches = wsi.iter_batches(4, num_workers=2)
    first = next(batches)
    assert len(first.tiles) == 4
    assert len(calls) <= 8 < len(wsi.candidates)  # two batches ahead, not the slide
    batches.close()  # stopping early shuts the pool down
    assert threading.active_count() == threads_before
    assert wsi.qc is None  # counts only for a complete pass
