"""Full-size published layouts: every key and shape of each authors' file fits its preset.

The references are built at full size on the meta device (no memory; CTransPath and the
ResNet, small, for real), their state dicts
written in the published layout, then selected and converted exactly as a real file
would be, and compared key by key and shape by shape with the module the preset builds.
"""

from __future__ import annotations

import pytest
import timm
import torch

from histoatlas.backends.torch.checkpoints import fit_problems
from histoatlas.backends.torch.encoders import (
    PRESETS,
    build_encoder,
    prepare_state_dict,
    resolve_spec,
)
from tests import encoder_refs as refs
from tests.encoder_cases import TIMM_REFERENCES

REFERENCES = {
    **{name: None for name in TIMM_REFERENCES},
    "conch-v1": refs.conch_v1,
    "conch-v1.5": refs.conch_v15,
    "phikon": refs.phikon,
    "phikon-v2": refs.phikon_v2,
    "ctranspath": refs.ctranspath,
    "resnet50_trunc": refs.resnet50_trunc,
}

# published facts the layouts must show (full size)
EXPECTED_SHAPES = {
    "uni": {"pos_embed": (1, 197, 1024), "blocks.23.ls2.gamma": (1024,)},
    "uni2-h": {"reg_token": (1, 8, 1536), "pos_embed": (1, 256, 1536),
               "blocks.23.mlp.fc1.weight": (8192, 1536)},
    "virchow": {"pos_embed": (1, 257, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)},
    "virchow2": {"reg_token": (1, 4, 1280), "pos_embed": (1, 261, 1280)},
    "h-optimus-0": {"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536),
                    "blocks.39.ls1.gamma": (1536,)},
    "gigapath": {"pos_embed": (1, 197, 1536), "patch_embed.proj.weight": (1536, 3, 16, 16),
                 "blocks.39.mlp.fc2.weight": (1536, 4096)},
    "gpfm": {"pos_embed": (1, 257, 1024), "blocks.23.ls1.gamma": (1024,)},
    "conch-v1": {"trunk.pos_embed": (1, 785, 768), "attn_pool_contrast.attn.k_proj_weight":
                 (512, 768), "ln_contrast.weight": (512,)},
    "conch-v1.5": {"trunk.pos_embed": (1, 785, 1024), "attn_pool_contrast.to_kv.weight":
                   (1536, 1024), "ln_contrast.weight": (768,)},
    "phikon": {"pos_embed": (1, 197, 768), "blocks.11.attn.qkv.weight": (2304, 768)},
    "phikon-v2": {"pos_embed": (1, 197, 1024), "blocks.23.ls2.gamma": (1024,)},
    "ctranspath": {"patch_embed.proj.6.weight": (96, 24, 1, 1),
                   "layers.3.downsample.reduction.weight": (768, 1536), "norm.weight": (768,)},
    "resnet50_trunc": {"layer3.5.conv3.weight": (1024, 256, 1, 1)},
}  # fmt: skip


SMALL = ("ctranspath", "resnet50_trunc")  # built for real (timm 0.5.4 cannot use meta)


def published_full_size(name: str) -> dict:
    make = REFERENCES[name]
    if name in SMALL:
        return make().published()
    with torch.device("meta"):
        if make is None:
            arch, kwargs = TIMM_REFERENCES[name]
            state = timm.create_model(arch, pretrained=False, **kwargs).state_dict()
            return {"state_dict": state} if name == "gpfm" else state
        return make().published()


def test_every_preset_has_a_layout_case():
    assert set(REFERENCES) == set(PRESETS) and set(EXPECTED_SHAPES) >= set(PRESETS) - {
        "h-optimus-1"
    }


@pytest.mark.parametrize("name", list(REFERENCES))
def test_full_size_layout_fits(name):
    published = published_full_size(name)
    model, _ = build_encoder(name, device="meta")
    spec = resolve_spec(name)
    state = prepare_state_dict(published, spec, model.backbone, source=f"{name} (meta)")
    expected = model.backbone.state_dict()
    missing, unexpected, mismatched = fit_problems(expected, state)
    assert (missing, unexpected, mismatched) == ([], [], [])
    for key, shape in EXPECTED_SHAPES.get(name, {}).items():
        assert tuple(expected[key].shape) == shape, key


def test_uni_file_has_48_layerscale_keys():
    keys = published_full_size("uni")
    assert sum(".ls1.gamma" in k or ".ls2.gamma" in k for k in keys) == 48


def test_conch_v1_file_keeps_only_the_image_tower():
    published = published_full_size("conch-v1")
    model, info = build_encoder("conch-v1", device="meta")
    state = prepare_state_dict(published, resolve_spec("conch-v1"), model.backbone, info=info)
    assert all(k.startswith(("text", "logit_scale")) for k in info.outside_prefix)
    assert any(k.startswith("text_decoder.") for k in info.outside_prefix)
    assert {k.split(".")[0] for k in info.ignored} == {
        "proj_contrast",
        "attn_pool_caption",
        "ln_caption",
    }
    assert len(state) == len(model.backbone.state_dict())
