"""Every preset against its reference: same embeddings on real H&E tiles, from the file
layout the authors publish.

For each preset the reference is built as the reference tool builds it (timm with
TRIDENT's kwargs, the authors' module structure for CONCH / CTransPath, transformers'
ViTModel / Dinov2Model for Phikon), with seeded random weights; its state dict is saved
in the published layout; histoatlas loads that file through the preset and must give
the reference's embedding (fp32, max abs diff <= 1e-5). Models of 300M+ parameters run at
reduced depth here; ``test_encoders_layouts.py`` checks their full-size keys and shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histoatlas.backends.torch.encoders import build_encoder, eval_transform, get_preset
from tests import encoder_refs as refs
from tests.encoder_cases import CASES, save_published, timm_reference

TILES = Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata" / "tiles"
TILE_NAMES = ("TUM-TCGA-DRHQMTQA.png", "LYM-TCGA-FTVCYFDV.png")
TOLERANCE = 1e-5


def tile_batch(preset: str, names=TILE_NAMES) -> torch.Tensor:
    """Real 224 px H&E tiles through the preset's reference transform (PIL resize, crop)."""
    folder = TILES / "crc_val_he_7k_32"
    if not folder.is_dir():
        pytest.skip(f"test tiles not found at {folder}")
    transform = eval_transform(preset)
    return torch.stack([transform(Image.open(folder / n).convert("RGB")) for n in names])


def test_every_preset_has_a_reference_case():
    from histoatlas.backends.torch.encoders import PRESETS

    assert set(CASES) == set(PRESETS)


@pytest.mark.parametrize("name", list(CASES))
def test_preset_matches_reference(name, tmp_path, record_property):
    make, depth = CASES[name]
    torch.manual_seed(0)
    ref = make(name, depth)
    weights = save_published(ref.published(), tmp_path / ref.file_name)
    overrides = {"architecture_kwargs": {"depth": depth}} if depth else {}
    model, info = build_encoder({"architecture": name, **overrides}, weights)
    x = tile_batch(name)
    with torch.inference_mode():
        want, got = ref.embed(x), model(x)
    preset = get_preset(name)
    assert x.shape[-1] == preset.input_px
    assert got.shape == (len(x), preset.dim)
    assert want.std() > 0.1  # a real embedding, not a constant
    diff = (got - want).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"\n{name}: depth {depth or 'full'}, max abs diff {diff:.2e}")
    assert diff <= TOLERANCE
    assert info.n_loaded == len(model.backbone.state_dict())


def test_file_layouts_are_what_the_reference_loaders_read(tmp_path):
    """The test's published layouts load in the reference tools' own loaders."""
    from transformers import ViTModel

    ref = refs.phikon(depth=1)
    save_published(ref.published(), tmp_path / "pytorch_model.bin")
    ref.module.config.save_pretrained(tmp_path)
    hf = ViTModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    x = tile_batch("phikon")[:1]
    with torch.inference_mode():
        assert torch.equal(hf(pixel_values=x).last_hidden_state, ref.module(x).last_hidden_state)

    # TRIDENT's CTransPath loader: under 'model', attn_mask dropped, strict=False
    ctp = refs.ctranspath()
    state = {k: v for k, v in ctp.published()["model"].items() if "attn_mask" not in k}
    missing, unexpected = ctp.module.load_state_dict(state, strict=False)
    assert not unexpected and len(missing) == 5 and all("attn_mask" in k for k in missing)


def test_conch_v15_file_with_a_448_grid_position_embedding(tmp_path):
    """A file whose pos_embed is for 448 px is resampled to 224 first, as the authors do."""
    from timm.layers import resample_abs_pos_embed

    ref = refs.conch_v15(depth=1)
    state = ref.published()
    big = torch.randn(1, 1 + 28 * 28, 1024, generator=torch.Generator().manual_seed(1))
    state["trunk.pos_embed"] = big
    weights = save_published(state, tmp_path / ref.file_name)
    with torch.no_grad():  # what TRIDENT's create_model_from_pretrained loads
        ref.module.trunk.pos_embed.copy_(resample_abs_pos_embed(
            big, new_size=(14, 14), num_prefix_tokens=1, interpolation="bilinear",
            antialias=False))  # fmt: skip
    model, _ = build_encoder({"architecture": "conch-v1.5", "architecture_kwargs": {"depth": 1}},
                             weights)  # fmt: skip
    x = tile_batch("conch-v1.5")[:1]
    with torch.inference_mode():
        assert (model(x) - ref.embed(x)).abs().max() <= TOLERANCE


def test_phikon_v2_file_for_another_grid_is_resampled_as_transformers_does(tmp_path):
    ref = refs.phikon_v2(depth=1, image_size=448)  # a 28 x 28 position embedding
    weights = save_published(ref.published(), tmp_path / ref.file_name)
    model, _ = build_encoder({"architecture": "phikon-v2", "architecture_kwargs": {"depth": 1}},
                             weights)  # fmt: skip
    x = tile_batch("phikon-v2")[:1]
    with torch.inference_mode():
        assert (model(x) - ref.embed(x)).abs().max() <= TOLERANCE


def test_features_of_a_preset_directory_on_normalised_tiles_give_the_embedding(tmp_path):
    """``Features(model_dir)`` on already-normalised tiles: postconv (the default layer)
    is the preset's embedding, and an encoder has no predictions."""
    import json

    from histoatlas.analysis.features import Features

    ref = timm_reference("virchow2", depth=1)
    save_published(ref.published(), tmp_path / ref.file_name)  # pytorch_model.bin
    params = {"architecture": "virchow2", "architecture_kwargs": {"depth": 1}}
    (tmp_path / "params.json").write_text(json.dumps(params))
    x = tile_batch("virchow2")
    feats = Features(tmp_path, device="cpu")(x)
    with torch.inference_mode():
        want = ref.embed(x).numpy()
    assert isinstance(feats, np.ndarray) and feats.shape == (2, 2560)
    np.testing.assert_allclose(feats, want, atol=TOLERANCE)
