"""Presets through the workflow's library steps: every preset through ``extract_slide`` on
one small slide of real H&E, layer selectors inside a ViT, and one preset of each family
through the saliency rule's work (dataset, tile selection, all six methods).

Each model directory is what a user writes: the reference's file in its published layout
and ``{"architecture": <preset>, "weights": <file>}``, with ``architecture_kwargs: {depth:
1}`` for the transformers (their reference is built at that depth too).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histoatlas.analysis.extract import RunOptions, extract_slide
from histoatlas.analysis.features import Features
from histoatlas.analysis.merge import merge_dataset
from histoatlas.backends import load_model, read_params
from histoatlas.backends.torch.encoders import PRESETS, eval_transform, get_preset
from histoatlas.io.slide_h5 import read_slide_h5
from histoatlas.io.tiling import TileOptions
from histoatlas.io.wsi import WSI
from histoatlas.saliency import write_saliency_maps
from histoatlas.saliency.methods import METHODS
from histoatlas.saliency.select import select_tiles_to_csv
from tests.conftest import TESTDATA, make_synthetic_slide
from tests.encoder_cases import write_preset_dir

# The fast tier runs one preset of each kind (a timm ViT read at 256 and resized,
# registers with cls||patch_mean, CONCH's pooler, a Hugging Face safetensors file); the
# rest, and the full-size CNNs, are marked slow (about 10-30 s each on 2 busy cores).
FAST_EXTRACT = ("uni", "virchow2", "conch-v1", "phikon-v2")
EXTRACT_PRESETS = [
    name if name in FAST_EXTRACT else pytest.param(name, marks=pytest.mark.slow) for name in PRESETS
]
# one preset per family through saliency: timm ViT (resize), registers + cls||patch_mean,
# crop, CONCH's pooler, Hugging Face layout, Swin, CNN; only the first in the fast tier
SALIENCY_PRESETS = ["uni"] + [
    pytest.param(name, marks=pytest.mark.slow)
    for name in ("virchow2", "gigapath", "conch-v1", "phikon", "ctranspath", "resnet50_trunc")
]
FEW_STEPS = {
    "integrated_gradients": {"x_steps": 4, "batch_size": 4},
    "guided_integrated_gradients": {"x_steps": 4},
    "blur_integrated_gradients": {"steps": 4, "batch_size": 4},
    "xrai": {"steps": 4, "batch_size": 4},
}


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory):
    """1024 x 1024 px at 0.5 um/px, its top half real H&E (OpenSlide's CMU-1 slide)."""
    import openslide

    cmu = TESTDATA / "CMU-1-Small-Region.svs"
    if not cmu.is_file():
        pytest.skip(f"{cmu} not found (shared/testdata)")
    with openslide.OpenSlide(str(cmu)) as s:
        he = np.array(s.read_region((768, 1024), 0, (1024, 512)).convert("RGB"))
    path = tmp_path_factory.mktemp("he") / "s1.tiff"
    return make_synthetic_slide(path, size=(1024, 1024), tissue=((0, 0, 1024, 512),),
                                texture=lambda h, w, rng: he[:h, :w], n_levels=2)  # fmt: skip


def extract(model_dir, slide, out, **features):
    from histoatlas.analysis.extract import FeatureOptions

    params, _ = read_params(model_dir)
    return extract_slide(
        slide.path,
        out,
        model=model_dir,
        tiles=TileOptions(px=params.tile_px, um=params.tile_um),
        features=FeatureOptions(**features),
        run=RunOptions(num_workers=1, batch_size=4, device="cpu"),
    )


@pytest.mark.parametrize("name", EXTRACT_PRESETS)
def test_preset_through_extract_slide(name, he_slide, tmp_path):
    preset = get_preset(name)
    ref = write_preset_dir(tmp_path / "model", name, depth=1)
    out = tmp_path / "s1.h5"
    qc = extract(tmp_path / "model", he_slide, out)
    sf = read_slide_h5(out)
    n = len(sf)
    assert n == qc["n_kept"] >= 2 and sf.predictions is None  # an encoder: no predictions
    assert sf.features.shape == (n, preset.dim) and np.isfinite(sf.features).all()
    assert (sf.attrs["tile_px"], sf.attrs["input_px"]) == (preset.tile_px, preset.input_px)
    assert sf.attrs["tile_um"] == pytest.approx(preset.tile_um)
    assert sf.attrs["view_fraction"] == pytest.approx(preset.input_px / preset.resize_px)
    assert sf.attrs["layers"] == ["postconv"]
    # the reference's embedding of the same tiles, seen as histoatlas's transform sees them
    with WSI(he_slide.path, preset.tile_px, preset.tile_um) as wsi:
        raw = np.stack([wsi.read_tile(x, y) for x, y in sf.coords])
    x = torch.from_numpy(load_model(tmp_path / "model", device="cpu").preprocess(raw))
    with torch.inference_mode():
        want = ref.embed(x.permute(0, 3, 1, 2)).numpy()
        pil = torch.stack([eval_transform(name)(Image.fromarray(t)) for t in raw])
        want_pil = ref.embed(pil).numpy()
    np.testing.assert_allclose(sf.features, want, rtol=1e-4, atol=1e-4)
    # and the reference tools' own PIL transform (pixels within 2 levels) gives the same
    cosine = (sf.features * want_pil).sum(1) / np.linalg.norm(sf.features, axis=1)
    assert (cosine / np.linalg.norm(want_pil, axis=1)).min() > 0.999


def test_layer_selectors_inside_a_vit(tmp_path):
    """``blocks.0:cls``, ``norm:patch_mean``, plain ``avg`` on tokens (registers skipped)
    and ``postconv``, from one forward pass, against timm's own modules."""
    ref = write_preset_dir(tmp_path, "virchow2", depth=1)
    vit = ref.module
    layers = ["blocks.0:cls", "norm:patch_mean", "backbone.blocks.0", "postconv"]
    features = Features(tmp_path, layers, pooling="avg", device="cpu")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    got = features(x)
    assert features.include_preds is False  # virchow2 is an encoder
    store = {}
    vit.blocks[0].register_forward_hook(lambda m, i, o: store.update(block=o))
    with torch.inference_mode():
        tokens = vit.forward_features(x)  # after the final norm; 1 class + 4 registers first
        embedding = ref.embed(x)
    block = store["block"]
    want = [block[:, 0], tokens[:, 5:].mean(1), block[:, 5:].mean(1), embedding]
    widths = [1280, 1280, 1280, 2560]
    assert [b - a for a, b in features.layer_slices.values()] == widths
    np.testing.assert_allclose(got, torch.cat(want, 1).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got[:, 2560:3840], block[:, 1:].mean(1).numpy(), atol=1e-3)


@pytest.mark.parametrize("name", SALIENCY_PRESETS)
def test_preset_through_the_saliency_rule(name, he_slide, tmp_path):
    """The dataset, an explicit tile (an encoder has no classes to pick tiles by: ``class``
    is an embedding dimension), and every method: each map on the network's input grid,
    finite and not constant."""
    preset = get_preset(name)
    model_dir = tmp_path / "model"
    write_preset_dir(model_dir, name, depth=1)
    h5 = tmp_path / "features" / "s1.h5"
    extract(model_dir, he_slide, h5)
    sheet = pd.DataFrame({"slide": ["s1"], "path": [str(he_slide.path)]})
    dataset = {k: tmp_path / f"{k}.parquet" for k in ("tiles", "slides")}
    merge_dataset([h5], sheet, tiles_path=dataset["tiles"], slides_path=dataset["slides"],
                  features_path=tmp_path / "features.h5")  # fmt: skip
    spec = [{"slide": "s1", "x": 300, "y": 100, "class": 0}]
    tiles = select_tiles_to_csv(dataset["tiles"], dataset["slides"], spec, tmp_path / "t.csv")
    table = write_saliency_maps(
        tiles, load_model(model_dir, device="cpu"), maps_dir=tmp_path / "maps",
        manifest=tmp_path / "maps.csv", overview_png=tmp_path / "overview.png",
        method_params=FEW_STEPS,
    )  # fmt: skip
    assert list(table["method"]) == list(METHODS)
    for row in table.itertuples():
        mask = np.load(row.npy)
        assert mask.shape == (preset.input_px, preset.input_px), row.method
        assert np.isfinite(mask).all() and mask.std() > 0, row.method
        assert Image.open(row.overlay).size == (preset.input_px, preset.input_px)
    assert not table["constant"].any()
