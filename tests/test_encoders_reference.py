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
import timm
import torch
from PIL import Image

from histoatlas.backends.torch.encoders import build_encoder, eval_transform, get_preset
from tests import encoder_refs as refs
from tests.encoder_refs import Reference, randomize

TILES = Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata" / "tiles"
TILE_NAMES = ("TUM-TCGA-DRHQMTQA.png", "LYM-TCGA-FTVCYFDV.png")
TOLERANCE = 1e-5
SWIGLU = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}

# TRIDENT's timm kwargs, written out again (with classes, not names) so that the preset
# table is checked against them
TIMM_REFERENCES = {
    "uni": ("vit_large_patch16_224", dict(img_size=224, patch_size=16, init_values=1e-5,
            num_classes=0, dynamic_img_size=True)),
    "uni2-h": ("vit_giant_patch14_224", dict(img_size=224, patch_size=14, depth=24,
               num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2,
               num_classes=0, no_embed_class=True, reg_tokens=8, dynamic_img_size=True,
               **SWIGLU)),
    "virchow": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, num_classes=0,
                mlp_ratio=5.3375, global_pool="", dynamic_img_size=True, **SWIGLU)),
    "virchow2": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, num_classes=0,
                 reg_tokens=4, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True,
                 **SWIGLU)),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", dict(num_classes=0, img_size=224,
                    global_pool="token", init_values=1e-5, dynamic_img_size=True)),
    "h-optimus-1": ("vit_giant_patch14_reg4_dinov2", dict(num_classes=0, img_size=224,
                    global_pool="token", init_values=1e-5, dynamic_img_size=True)),
    "gigapath": ("vit_giant_patch14_dinov2", dict(img_size=224, in_chans=3, patch_size=16,
                 embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334, num_classes=0,
                 dynamic_img_size=True)),
    "gpfm": ("vit_large_patch14_dinov2.lvd142m", dict(img_size=224, init_values=1e-5,
             dynamic_img_size=True)),
}  # fmt: skip


def virchow_embed(model, n_prefix):
    """TRIDENT's Virchow forward: CLS || mean of tokens[n_prefix:]."""

    def embed(x):
        out = model(x)
        return torch.cat([out[:, 0], out[:, n_prefix:].mean(1)], dim=-1)

    return embed


def timm_reference(name: str, depth: int | None) -> Reference:
    arch, kwargs = TIMM_REFERENCES[name]
    kwargs = {**kwargs, **({"depth": depth} if depth else {})}
    model = randomize(timm.create_model(arch, pretrained=False, **kwargs))
    embed = {"virchow": virchow_embed(model, 1), "virchow2": virchow_embed(model, 5)}.get(
        name, model
    )
    if name == "gpfm":  # TRIDENT also reads GPFM.pth wrapped under 'state_dict'
        return Reference(model, embed, lambda: {"state_dict": model.state_dict()}, "GPFM.pth")
    file = get_preset(name).weights_file
    return Reference(model, embed, model.state_dict, file)


# preset -> (reference builder, depth used here; None: full size)
CASES = {
    **{name: (timm_reference, 2) for name in TIMM_REFERENCES},
    "conch-v1": (lambda name, depth: refs.conch_v1(depth=depth or 12), 2),
    "conch-v1.5": (lambda name, depth: refs.conch_v15(depth=depth), 2),
    "phikon": (lambda name, depth: refs.phikon(depth=depth or 12), 2),
    "phikon-v2": (lambda name, depth: refs.phikon_v2(depth=depth), 2),
    "ctranspath": (lambda name, depth: refs.ctranspath(), None),
    "resnet50_trunc": (lambda name, depth: refs.resnet50_trunc(), None),
}


def save_published(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


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
