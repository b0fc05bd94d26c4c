"""Key conversions from a published checkpoint layout to the module histoatlas builds.

Each conversion takes the state dict (after ``weights_key``/``weights_prefix``) and the
module it is for, renames what it knows and passes every other key through unchanged,
so strict loading still reports anything unexpected. They work on meta tensors too.

``hf_vit`` / ``hf_dinov2``
    Hugging Face ``ViTModel`` / ``Dinov2Model`` (transformers 4 names, as published, or
    transformers 5 names) to timm's ``VisionTransformer``: q, k, v concatenated into
    ``qkv``; a position embedding for another grid resampled as transformers does.
``transpath_swin``
    TransPath's timm 0.5.4 Swin to timm 1.x: patch merging moves from the end of stage
    i to the start of stage i + 1.
``conch_v15``
    CONCH v1.5's trunk position embedding (224 px grid) interpolated once to the input
    size, as the authors' iBOT ViT does on every forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from histoatlas.errors import ModelError

_HF_BLOCK = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_HF_BLOCK_PARTS = {
    "layernorm_before": "norm1",
    "norm1": "norm1",
    "layernorm_after": "norm2",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_QKV = {
    "attention.attention.query": 0, "attention.attention.key": 1,
    "attention.attention.value": 2, "attention.q_proj": 0, "attention.k_proj": 1,
    "attention.v_proj": 2,
}  # fmt: skip
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def hf_to_timm_vit(state: Mapping, model) -> dict:
    """Hugging Face ViT / DINOv2 keys to timm ``VisionTransformer`` keys.

    A ``vit.`` or ``dinov2.`` base-model prefix is stripped first, as ``from_pretrained``
    does. Keys it does not know (``pooler.*``, ``embeddings.mask_token``) pass through.
    """
    import torch

    state = _strip_base_prefix(dict(state), ("vit.", "dinov2."))
    out, qkv = {}, {}
    for key, value in state.items():
        found = _HF_BLOCK.match(key)
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif found:
            block, rest = found.groups()
            part, _, kind = rest.rpartition(".")
            if part in _HF_QKV:
                qkv.setdefault((block, kind), [None] * 3)[_HF_QKV[part]] = value
            elif part in _HF_BLOCK_PARTS:
                out[f"blocks.{block}.{_HF_BLOCK_PARTS[part]}.{kind}"] = value
            elif rest in _HF_BLOCK_PARTS:  # layer_scale*.lambda1 has no .weight/.bias
                out[f"blocks.{block}.{_HF_BLOCK_PARTS[rest]}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise ModelError(f"Hugging Face block {block}: query, key and value {kind} incomplete")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    if "pos_embed" in out and hasattr(model, "patch_embed"):
        out["pos_embed"] = _resample_hf_pos_embed(out["pos_embed"], model)
    return out


def _strip_base_prefix(state: dict, prefixes) -> dict:
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _resample_hf_pos_embed(pos, model):
    """A position embedding for another patch grid, resampled as transformers 5 does."""
    import torch
    import torch.nn.functional as F

    grid = tuple(model.patch_embed.grid_size)
    n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    old = round((pos.shape[1] - n_prefix) ** 0.5)
    if (old, old) == grid:
        return pos
    prefix, patches = pos[:, :n_prefix], pos[:, n_prefix:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1]).to(pos.dtype)
    return torch.cat([prefix, patches], dim=1)


def transpath_to_timm_swin(state: Mapping, model) -> dict:
    """TransPath's timm 0.5.4 Swin keys to timm 1.x ``SwinTransformer`` keys.

    The old layout is recognised, as timm's own filter does, by a downsample in stage 0.
    """
    if "layers.0.downsample.reduction.weight" not in state:
        return dict(state)
    out = {}
    for key, value in state.items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample",
                     key)  # fmt: skip
        out[key.replace("head.", "head.fc.", 1) if key.startswith("head.") else key] = value
    return out


def conch_v15_pos_embed(state: Mapping, model) -> dict:
    """Interpolate ``trunk.pos_embed`` as CONCH v1.5's reference code does.

    The authors build the trunk at 224 px (a 14 x 14 grid): a file embedding for another
    grid is first resampled to it (bilinear, as their loader does), then, because the
    input is 448 px, interpolated bicubically with DINO's ``scale_factor = (g + 0.1) /
    14`` on every forward pass. Doing that once here gives the same numbers.
    """
    import torch
    import torch.nn.functional as F
    from timm.layers import resample_abs_pos_embed

    state = dict(state)
    pos = state.get("trunk.pos_embed")
    ref = getattr(model, "pos_embed_ref_grid", None)
    if pos is None or ref is None:
        return state
    grid = model.trunk.patch_embed.grid_size
    n_prefix = model.trunk.num_prefix_tokens
    if pos.shape[1] - n_prefix != ref * ref:
        pos = resample_abs_pos_embed(pos, new_size=(ref, ref), num_prefix_tokens=n_prefix,
                                     interpolation="bilinear", antialias=False)  # fmt: skip
    if tuple(grid) != (ref, ref):
        prefix, patches = pos[:, :n_prefix], pos[:, n_prefix:]
        patches = patches.reshape(1, ref, ref, -1).permute(0, 3, 1, 2)
        scale = ((grid[0] + 0.1) / ref, (grid[1] + 0.1) / ref)
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic")
        if tuple(patches.shape[-2:]) != tuple(grid):
            raise ModelError(f"CONCH v1.5 pos_embed interpolated to {patches.shape[-2:]}")
        pos = torch.cat([prefix, patches.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], 1)
    state["trunk.pos_embed"] = pos
    return state


CONVERSIONS: dict[str, Callable[[Mapping, object], dict]] = {
    "hf_vit": hf_to_timm_vit,
    "hf_dinov2": hf_to_timm_vit,
    "transpath_swin": transpath_to_timm_swin,
    "conch_v15": conch_v15_pos_embed,
}


def convert_state_dict(name: str | None, state: Mapping, model) -> dict:
    """Apply the conversion called ``name`` (None: none) for ``model``.

    Raises
    ------
    ModelError
        For an unknown name; the message lists the conversions.
    """
    if name is None:
        return dict(state)
    if name not in CONVERSIONS:
        raise ModelError(f"unknown key conversion {name!r}; conversions: {', '.join(CONVERSIONS)}")
    return CONVERSIONS[name](state, model)
