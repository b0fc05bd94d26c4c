"""The reference of every preset, shared by the encoder tests: how to build it, at which
depth, and how to write a model directory holding its published file."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from histoatlas.backends.torch.encoders import get_preset
from tests import encoder_refs as refs
from tests.encoder_refs import Reference, randomize

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


def write_preset_dir(directory: Path, name: str, *, depth: int | None = 1) -> Reference:
    """A model directory as a user writes it for preset ``name``: the reference's file in
    its published layout and a params.json naming the preset (and, for a transformer,
    ``architecture_kwargs: {depth: depth}``, matching the reference built at that depth).
    """
    make, default_depth = CASES[name]
    depth = depth if default_depth else None
    torch.manual_seed(0)
    ref = make(name, depth)
    directory.mkdir(parents=True, exist_ok=True)
    save_published(ref.published(), directory / ref.file_name)
    params = {"architecture": name, "weights": ref.file_name}
    if depth:
        params["architecture_kwargs"] = {"depth": depth}
    (directory / "params.json").write_text(json.dumps(params))
    return ref
