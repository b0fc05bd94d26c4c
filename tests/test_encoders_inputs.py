"""What a preset asks of the user and gives the workflow: params.json keys and their
errors, the model-input transform against the reference tools' PIL transform, the tiling
the featureset takes, and the command that lists the presets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histoatlas.backends import get_preprocess_fn, load_model, read_params
from histoatlas.backends.params import ModelParams
from histoatlas.backends.torch.encoders import PRESETS, eval_transform, get_preset
from histoatlas.backends.torch.transform import InputTransform, model_view
from histoatlas.errors import ConfigError, ModelError
from histoatlas.pipeline.config import model_tiling
from tests.conftest import TESTDATA
from tests.encoder_cases import write_preset_dir

CMU = TESTDATA / "CMU-1-Small-Region.svs"


def write_params(tmp_path, **params):
    (tmp_path / "params.json").write_text(json.dumps(params))
    return tmp_path / "params.json"


# ------------------------------------------------------------------------ params.json


def test_two_keys_are_a_whole_preset_params_json(tmp_path):
    write_params(tmp_path, architecture="uni2-h", weights="pytorch_model.bin")
    params, path = read_params(tmp_path)
    assert path == tmp_path / "params.json"
    assert (params.tile_px, params.tile_um, params.network_px) == (256, "20x", 224)
    assert (params.resize_to, params.interpolation, params.view_fraction) == (224, "bilinear", 1)
    assert params.output == "embedding" and params.class_names == ()
    assert params.mean == get_preset("uni2-h").mean and params.transforms_input
    # the file's keys win; without "weights" the preset's file name stands
    write_params(tmp_path, architecture="GigaPath", tile_px=512, mean=[0.5, 0.5, 0.5])
    params, _ = read_params(tmp_path)
    assert (params.tile_px, params.resize_to, params.network_px) == (512, 256, 224)
    assert params.weights == "pytorch_model.bin" and params.mean == (0.5, 0.5, 0.5)
    assert params.view_fraction == pytest.approx(224 / 256)
    # no preset: the old defaults, nothing resized
    write_params(tmp_path, architecture="timm:vit_small_patch16_224")
    params, _ = read_params(tmp_path)
    assert (params.tile_px, params.output, params.transforms_input) == (224, "softmax", False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"interpolation": "nearest"}, r"interpolation 'nearest' is not one of 'bilinear'"),
        ({"embedding": "mean"}, r"embedding 'mean' is not one of 'output', 'cls', 'patch_mean'"),
        ({"output": "logits"}, r"output 'logits' is not one of .*'embedding'"),
        ({"input_px": 224, "resize_px": 200}, r"resize_px 200 is smaller than input_px 224"),
        ({"input_px": "224"}, r"input_px must be a positive integer \(pixels\): '224'"),
        ({"ignore_keys": "head.*"}, r"ignore_keys must be a list of glob patterns"),
        ({"weights_key": 3}, r"weights_key must be a string or null"),
        ({"wieghts": "x.pt"}, r"unknown key\(s\) \['wieghts'\]; known keys: .*weights_prefix"),
    ],
)
def test_params_json_errors_name_the_file_key_and_fix(tmp_path, params, message):
    write_params(tmp_path, architecture="uni", **params)
    with pytest.raises(ModelError, match=message) as err:
        read_params(tmp_path)
    assert str(tmp_path / "params.json") in str(err.value)


def test_checkpoint_keys_are_checked_when_the_model_is_built(tmp_path):
    write_params(tmp_path, architecture="uni", key_conversion="hf_bert")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"params.json: key_conversion 'hf_bert' is not one"):
        load_model(tmp_path, device="cpu")


def test_weights_prefix_key_and_ignore_keys_from_params_json(tmp_path):
    """A DINO-style file: the weights under 'teacher', every key under 'backbone.', a head
    the encoder does not have."""
    ref = write_preset_dir(tmp_path, "uni", depth=1)
    state = {f"backbone.{k}": v for k, v in ref.published().items()}
    state["head.mlp.weight"] = torch.zeros(2, 2)
    torch.save({"teacher": state, "epoch": 100}, tmp_path / "checkpoint.pth")
    params = json.loads((tmp_path / "params.json").read_text())
    write_params(tmp_path, **{**params, "weights": "checkpoint.pth"})
    with pytest.raises(ModelError, match=r"top-level keys: epoch, teacher.*weights_key"):
        load_model(tmp_path, device="cpu")
    options = {"weights_key": "teacher", "weights_prefix": "backbone.", "ignore_keys": ["head.*"]}
    write_params(tmp_path, **{**params, "weights": "checkpoint.pth", **options})
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(tmp_path, device="cpu").model(x), ref.embed(x))


# ------------------------------------------------------------------ the input transform


def region(size: int) -> np.ndarray:
    import openslide

    if not CMU.is_file():
        pytest.skip(f"{CMU} not found")
    with openslide.OpenSlide(str(CMU)) as slide:
        return np.array(slide.read_region((800, 1200), 0, (size, size)).convert("RGB"))


@pytest.mark.parametrize("name", ["uni", "gigapath", "conch-v1", "ctranspath", "virchow2"])
def test_input_transform_is_the_reference_tools(name):
    """Tiles read at the preset's tile_px, through histoatlas's transform and through the
    reference tools' PIL transform: the same pixels to within 2 levels, 0.15 on average."""
    preset = get_preset(name)
    params = ModelParams(**{k: v for k, v in _defaults(name).items() if k != "weights"})
    tile = region(preset.tile_px)
    ref = eval_transform(name)(Image.fromarray(tile))  # normalised (3, h, w)
    view = model_view(InputTransform(params), tile)
    assert view.shape == (preset.input_px, preset.input_px, 3) and view.dtype == np.uint8
    ref_levels = ref.permute(1, 2, 0).numpy() * np.array(preset.std) + np.array(preset.mean)
    diff = np.abs(np.round(ref_levels * 255) - view.astype(np.float64))
    assert diff.max() <= 2 and diff.mean() <= 0.15, (diff.max(), diff.mean())


def _defaults(name):
    from histoatlas.backends.torch.encoders import params_defaults

    out = params_defaults(name)
    for key in ("mean", "std", "class_names"):
        out[key] = tuple(out[key])
    return out


def test_device_transform_preprocess_and_model_view_agree(tmp_path):
    """Extraction (to_tensor, on the device), saliency (preprocess) and the pictures
    (model_view) see one transform; a float batch is taken as the network's input."""
    write_preset_dir(tmp_path, "gigapath", depth=1)
    model = load_model(tmp_path, device="cpu")
    tiles = np.stack([region(256), region(256)[::-1].copy()])
    x = model.to_tensor(tiles)
    assert x.shape == (2, 3, 224, 224)
    pre = model.preprocess(tiles)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), pre, atol=1e-6)
    view = model.model_view(tiles)
    np.testing.assert_array_equal(view[0], tiles[0, 16:240, 16:240])  # a crop, no resize
    assert model.to_tensor(x).shape == x.shape and torch.equal(model.to_tensor(x), x)
    # the preprocessing function of the model path does the same, without loading the model
    np.testing.assert_allclose(get_preprocess_fn(tmp_path)(tiles), pre, atol=1e-6)


def test_keras_models_refuse_the_resize(tmp_path):
    write_params(tmp_path, backend="tensorflow", weights="m.keras", tile_px=256, input_px=224)
    (tmp_path / "m.keras").write_bytes(b"")
    with pytest.raises(ModelError, match="input_px/resize_px .* torch-backend option"):
        load_model(tmp_path)


# ------------------------------------------------------------------------- the tiling


def test_null_tiling_is_the_models():
    tiles = {"px": None, "um": None, "stride_div": 1}
    assert model_tiling(tiles, 256, "20x", model="m", source="p") == {
        "px": 256,
        "um": "20x",
        "stride_div": 1,
    }
    assert model_tiling({"px": 224, "um": None}, 256, "20x", model="m", source="p")["um"] == 128
    assert model_tiling({"px": 64, "um": 32}, 256, "20x", model="m", source=None)["px"] == 64
    with pytest.raises(ConfigError, match="the model m.pt has no params.json .* set tiles.px"):
        model_tiling(tiles, 224, 112, model="m.pt", source=None)


# ------------------------------------------------------------------------ the command


def test_command_lists_every_preset_and_its_file():
    out = subprocess.run(
        [sys.executable, "-m", "histoatlas", "presets"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0].split()[:3] == ["preset", "dim", "embedding"] and len(out) == 1 + len(PRESETS)
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == set(PRESETS)
    assert "pytorch_model_vision.bin" in rows["conch-v1.5"] and "2560" in rows["virchow2"]
    assert "huggingface.co/MahmoodLab/UNI2-h" in rows["uni2-h"]
    assert "centre crop 224" in rows["gigapath"] and "256 px @10x" in rows["ctranspath"]


# ------------------------------------------------------------------------ the mosaic


def test_mosaic_draws_the_centre_the_model_saw(synthetic_slide):
    """A model that crops its tiles (``view_fraction`` < 1 in slides.parquet, as GigaPath's
    224 of 256 px): the mosaic draws that centre, read from the slide, not the whole tile."""
    from histoatlas.analysis.mosaic import Mosaic
    from histoatlas.io.wsi import WSI

    slide = synthetic_slide("s1", size=(1024, 768), tissue=((256, 128, 768, 512),), n_levels=2)
    slides = pd.DataFrame({"slide": ["s1"], "path": [str(slide.path)], "mpp": [0.5],
                           "tile_um": [64.0], "patch_size_level0": [128]})  # fmt: skip
    refs = pd.DataFrame({"slide": ["s1"], "x": [384], "y": [256]})
    coords = np.array([[0.5, 0.5]])
    with WSI(slide.path, 32, 32.0) as centre, WSI(slide.path, 32, 64.0) as whole:
        want_centre, want_whole = centre.read_tile(384 + 32, 256 + 32), whole.read_tile(384, 256)
    for fraction, want in ((0.5, want_centre), (1.0, want_whole)):
        table = slides.assign(view_fraction=fraction)
        image = Mosaic(refs, coords, slides=table, num_tiles_x=1, tile_px=32).render()
        np.testing.assert_array_equal(image, want)
    assert not np.array_equal(want_centre, want_whole)
