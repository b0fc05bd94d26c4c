"""Pathology foundation-model encoders from local checkpoints (the torch backend's).

Presets (``uni``, ``virchow2``, ``conch-v1``, ...) say how each encoder is built, fed and
loaded (:mod:`.presets`); :func:`build_encoder` builds any model directory's network and
loads its weights file (:mod:`.builder`); recipes turn ViT tokens into embeddings
(:mod:`.recipes`); key conversions read the authors' file layouts (:mod:`.convert`);
:mod:`.gradcam` finds the layer Grad-CAM reads and turns tokens into a patch grid.
Importing this package does not import torch.

Examples
--------
>>> from histoatlas.backends.torch.encoders import list_presets
>>> [row["preset"] for row in list_presets()][:2]
['uni', 'uni2-h']
>>> model, info = build_encoder("uni", "pytorch_model.bin")  # doctest: +SKIP
>>> model(x).shape  # doctest: +SKIP
torch.Size([8, 1024])
"""

from __future__ import annotations

from histoatlas.backends.torch.encoders.builder import (
    EncoderInfo,
    EncoderSpec,
    build_backbone,
    build_encoder,
    load_weights,
    prepare_state_dict,
    resolve_spec,
)
from histoatlas.backends.torch.encoders.convert import convert_state_dict
from histoatlas.backends.torch.encoders.gradcam import (
    GradCamTarget,
    gradcam_target,
    layer_layout,
    to_grid,
    tokens_to_grid,
)
from histoatlas.backends.torch.encoders.presets import (
    PRESETS,
    Preset,
    eval_transform,
    get_preset,
    list_presets,
    params_defaults,
    presets_markdown,
)
from histoatlas.backends.torch.encoders.recipes import (
    RECIPES,
    LayerSelector,
    embed,
    parse_layer_selector,
    pool_tokens,
)

__all__ = [
    "PRESETS",
    "RECIPES",
    "EncoderInfo",
    "EncoderSpec",
    "GradCamTarget",
    "LayerSelector",
    "Preset",
    "build_backbone",
    "build_encoder",
    "convert_state_dict",
    "embed",
    "eval_transform",
    "get_preset",
    "gradcam_target",
    "layer_layout",
    "list_presets",
    "load_weights",
    "params_defaults",
    "parse_layer_selector",
    "pool_tokens",
    "prepare_state_dict",
    "presets_markdown",
    "resolve_spec",
    "to_grid",
    "tokens_to_grid",
]
