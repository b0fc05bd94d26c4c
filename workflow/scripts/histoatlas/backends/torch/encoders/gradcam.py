"""Layer layouts: which outputs are ViT tokens or channels-last maps, and Grad-CAM's layer.

A module inside a ViT (an ancestor with timm's ``num_prefix_tokens`` and a
``patch_embed``) gives tokens ``(B, T, D)``: the class and register tokens first, then one
per patch. A module inside a timm model that declares ``output_fmt = "NHWC"`` (Swin, so
CTransPath) gives ``(B, H, W, C)`` maps. :func:`layer_layout` says which, so that pooling
skips the prefix tokens and averages the right axes, and Grad-CAM reshapes the patch
tokens into their grid.

Grad-CAM's default layer on a ViT is the **last block's** ``norm1`` (its output: the
tokens entering the last attention). Not the last block's output: the final norm acts on
each token alone, so with a ``cls`` embedding the patch tokens of the last block's output
never reach the embedding, their gradient is exactly zero and Grad-CAM gives a constant
map. At ``norm1`` of the last block every patch token still reaches every recipe's
embedding (through the last attention), which is why pytorch-grad-cam uses it too. Swin
(CTransPath): the last stage's output. Truncated ResNet: ``layer3``, its last stage.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from histoatlas.errors import LayerError, ModelError

LAYOUTS = ("tokens", "nhwc", "nchw")


def find_module(modules: dict, name: str | None):
    """``(full name, module)`` of the layer called ``name`` in ``named_modules()``, or
    None: an encoder's network sits under ``backbone.``, so its layers are also found by
    their name in the network alone (``blocks.11`` for ``backbone.blocks.11``)."""
    for candidate in (name, f"backbone.{name}"):
        if name and candidate in modules:
            return candidate, modules[candidate]
    return None


class GradCamTarget(NamedTuple):
    """Where Grad-CAM reads activations, and their layout.

    Attributes
    ----------
    layer : str
        Module name in the model (``dict(model.named_modules())``).
    layout : {"tokens", "nhwc", "nchw"}
        ``tokens``: ``(B, T, D)`` with ``num_prefix_tokens`` class/register tokens first.
    num_prefix_tokens : int
    """

    layer: str
    layout: str
    num_prefix_tokens: int = 0


def is_vit(module) -> bool:
    """Whether ``module`` is a ViT whose outputs are tokens with prefix tokens first."""
    return isinstance(getattr(module, "num_prefix_tokens", None), int) and hasattr(
        module, "patch_embed"
    )


def layer_layout(model, layer: str) -> GradCamTarget:
    """The layout of the output of module ``layer`` of ``model``, from its ancestors.

    Inside a ViT: ``tokens`` with its ``num_prefix_tokens``; inside a timm model that
    declares ``output_fmt == "NHWC"`` (Swin): ``nhwc``; else ``nchw`` (what a 4-D output
    of anything else is taken to be).
    """
    modules = dict(model.named_modules())
    parts = layer.split(".") if layer else []
    for depth in range(len(parts), -1, -1):
        ancestor = modules.get(".".join(parts[:depth]))
        if ancestor is None:
            continue
        if is_vit(ancestor):
            return GradCamTarget(layer, "tokens", ancestor.num_prefix_tokens)
        if getattr(ancestor, "output_fmt", None) == "NHWC":
            return GradCamTarget(layer, "nhwc")
    return GradCamTarget(layer, "nchw")


def gradcam_target(model) -> GradCamTarget:
    """The default Grad-CAM layer of an encoder (or a bare ViT / Swin / truncated ResNet).

    Raises
    ------
    ModelError
        If the network is none of these; name a layer and its layout yourself.
    """
    from histoatlas.backends.torch.encoders._cnn import ResNetTrunc

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_vit(module) and hasattr(module, "blocks"):
            last = len(module.blocks) - 1
            return GradCamTarget(f"{prefix}blocks.{last}.norm1", "tokens", module.num_prefix_tokens)
        if _is_swin(module):
            return GradCamTarget(f"{prefix}layers.{len(module.layers) - 1}", "nhwc")
        if isinstance(module, ResNetTrunc):
            return GradCamTarget(f"{prefix}layer3", "nchw")
    raise ModelError(
        f"no default Grad-CAM layer for {type(model).__name__}: it has no timm ViT, Swin or "
        "truncated ResNet; choose a convolutional layer or a ViT block by name"
    )


def _is_swin(module) -> bool:
    # a network built before timm was imported is no timm Swin: skip importing it
    if "timm" not in sys.modules:
        return False
    from timm.models.swin_transformer import SwinTransformer

    return isinstance(module, SwinTransformer)


def to_grid(activation, target: GradCamTarget, grid_size=None):
    """Turn the target layer's output into a ``(B, C, h, w)`` map (a view where it can).

    Raises
    ------
    LayerError
        If the output is no map and no tokens (``(B, D)``, say): Grad-CAM has nothing to
        weigh.
    """
    if isinstance(activation, tuple | list):
        activation = activation[0]
    if activation.ndim == 3:
        prefix = target.num_prefix_tokens if target.layout == "tokens" else 0
        return tokens_to_grid(activation, num_prefix_tokens=prefix, grid_size=grid_size)
    if activation.ndim != 4:
        raise LayerError(
            f"Grad-CAM needs a feature map (B, K, h, w) or ViT tokens (B, T, D), but layer "
            f"{target.layer!r} returns {tuple(activation.shape)}; choose a convolutional "
            "layer or a ViT block"
        )
    if target.layout == "nhwc":
        return activation.permute(0, 3, 1, 2)
    return activation


def tokens_to_grid(tokens, *, num_prefix_tokens: int, grid_size=None):
    """``(B, T, D)`` ViT tokens to a ``(B, D, h, w)`` patch grid, prefix tokens dropped.

    Parameters
    ----------
    tokens : torch.Tensor, shape (B, T, D)
    num_prefix_tokens : int
        Class + register tokens at the start (timm's ``num_prefix_tokens``).
    grid_size : (int, int), optional
        ``(h, w)``; by default the patch grid is taken to be square.

    Raises
    ------
    ModelError
        If the patch tokens do not fill the grid.

    Examples
    --------
    >>> import torch
    >>> t = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)  # 1 class token + 2 x 2 patches
    >>> tokens_to_grid(t, num_prefix_tokens=1).shape
    torch.Size([2, 3, 2, 2])
    """
    patches = tokens[:, num_prefix_tokens:]
    n = patches.shape[1]
    if grid_size is None:
        side = round(n**0.5)
        grid_size = (side, side)
    h, w = grid_size
    if h * w != n:
        raise ModelError(
            f"{n} patch tokens (of {tokens.shape[1]}, {num_prefix_tokens} prefix) do not fill "
            f"a {h} x {w} grid; pass grid_size (input size / patch size)"
        )
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
