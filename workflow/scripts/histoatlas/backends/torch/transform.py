"""The model-input transform: tiles resized and centre-cropped on their way into a network.

A model whose ``params.json`` gives ``input_px`` (an encoder preset does) sees each tile
as the reference tools feed it: resized so its shorter side is ``resize_px`` with the
``interpolation`` (bilinear or bicubic, antialiased, as PIL and torchvision's ``Resize``
do), then centre-cropped to ``input_px`` (torchvision's ``CenterCrop`` offsets). PIL
resizes a uint8 image in two passes, width then height, rounding and clipping to whole
8-bit levels after each; so does this, in float32 on any device: the result is within 2
levels of PIL's, 0.1 on average (bicubic in one float pass overshoots by up to 12 at sharp
edges, measured on real H&E). The same function runs in extraction
(on the model's device, inside ``to_tensor``), in saliency (``preprocess``) and for the
pictures (``model_view``), so all three see the same pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histoatlas.backends.base import Normalizer
from histoatlas.backends.params import ModelParams


class InputTransform:
    """Resize and centre crop of ``(B, 3, H, W)`` float tiles holding 0-255 values.

    Parameters
    ----------
    params : ModelParams
        ``input_px``, ``resize_px`` and ``interpolation`` (see
        :attr:`ModelParams.transforms_input`).

    Examples
    --------
    >>> import torch
    >>> t = InputTransform(ModelParams(tile_px=256, input_px=224))
    >>> t(torch.zeros(2, 3, 256, 256)).shape
    torch.Size([2, 3, 224, 224])
    """

    def __init__(self, params: ModelParams) -> None:
        self.resize_to = params.resize_to
        self.input_px = params.network_px
        self.mode = params.interpolation
        self.active = params.transforms_input

    def __call__(self, x: Any) -> Any:
        """Resize (if the tile is not ``resize_px`` already), then crop to ``input_px``."""
        if not self.active:
            return x
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        new_h, new_w = resized_size(h, w, self.resize_to)
        for size in ((h, new_w), (new_h, new_w)):  # width, then height, as PIL
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode=self.mode, antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255)  # whole levels, as PIL's uint8 passes
        return center_crop(x, self.input_px)

    def __repr__(self) -> str:
        return f"InputTransform(resize {self.resize_to} {self.mode}, centre crop {self.input_px})"


def resized_size(h: int, w: int, shorter: int) -> tuple[int, int]:
    """``(h, w)`` scaled so the shorter side is ``shorter`` (torchvision's ``Resize(int)``)."""
    if h <= w:
        return shorter, int(shorter * w / h)
    return int(shorter * h / w), shorter


def center_crop(x: Any, size: int) -> Any:
    """The central ``size x size`` of ``(..., H, W)``, offsets as torchvision's ``CenterCrop``."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


class Preprocess:
    """uint8 tiles ``(..., H, W, 3)`` to the network's float32 input, channels last: the
    transform on the CPU, then ``(x / 255 - mean) / std``. A class, so that it pickles.

    Parameters
    ----------
    params : ModelParams
    """

    def __init__(self, params: ModelParams) -> None:
        self.transform = InputTransform(params)
        self.normalize = Normalizer(params.mean, params.std)

    def __call__(self, images) -> np.ndarray:
        return self.normalize(model_view(self.transform, images))

    def __repr__(self) -> str:
        return f"Preprocess({self.transform!r}, {self.normalize!r})"


def model_view(transform: InputTransform, images) -> np.ndarray:
    """uint8 tiles ``(..., H, W, 3)`` through ``transform``, on the CPU, still uint8."""
    import torch

    tiles = np.asarray(images)
    if not transform.active:
        return tiles
    single = tiles.ndim == 3
    batch = torch.from_numpy(np.array(tiles[None] if single else tiles))  # a writable copy
    out = transform(batch.permute(0, 3, 1, 2).float())
    view = out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return view[0] if single else view
