"""The device half of the GPU reading path: JPEG tiles decoded in one batch, regions cut there.

``histoatlas.io.readers.jpeg_streams.plan_device_batch`` (the CPU half, no framework)
gives a batch's complete JPEG streams and the copies that cut each region from the decoded
tiles; :func:`read_regions_on` decodes the streams in one call (nvJPEG through
``torchvision.io.decode_jpeg`` on CUDA, libjpeg-turbo on the CPU), cuts the regions on the
device and resizes them there. Regions the plan leaves to the CPU (filtered at fractional
offsets, or touching an unreadable tile) are read by the CPU reader and copied over.

On the CPU the result is the CPU reader's, bit for bit; nvJPEG may round its IDCT and
colour conversion differently from libjpeg-turbo by a grey level or two (see the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def decode_batch(streams: Sequence[bytes], *, device: Any = "cpu") -> list:
    """Decode complete JPEG streams in one call: nvJPEG on CUDA, libjpeg-turbo on CPU.

    Parameters
    ----------
    streams : sequence of bytes
        Complete streams (``jpeg_streams.complete_stream``).
    device : str or torch.device
        Where to decode and keep the pixels.

    Returns
    -------
    list of torch.Tensor, each (3, H, W) uint8 on ``device``
    """
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
    if not data:
        return []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec's
        warnings.simplefilter("ignore", DeprecationWarning)
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(out)


def read_regions_on(batch: Any, *, out_px: int | None = None, device: Any = "cpu") -> Any:
    """A planned batch of square regions, decoded and cut on ``device``.

    Parameters
    ----------
    batch : histoatlas.io.readers.jpeg_streams.DeviceBatch
        From ``plan_device_batch(reader, coords, level, size)``.
    out_px : int, optional
        Resize the regions to this side on the device (:func:`resize_bilinear`).
    device : str or torch.device

    Returns
    -------
    torch.Tensor, shape (M, 3, out_px or size, out_px or size), dtype uint8
    """
    import torch

    decoded = decode_batch(batch.streams, device=device)
    shape = (3, *batch.tile_shape)
    size = batch.size
    regions = torch.empty((len(batch.copies), 3, size, size), dtype=torch.uint8, device=device)
    background = torch.tensor(batch.background, dtype=torch.uint8, device=device)
    for k, copies in enumerate(batch.copies):
        if copies is None or any(tuple(decoded[c[0]].shape) != shape for c in copies):
            cpu = np.ascontiguousarray(batch.read_on_cpu(k).transpose(2, 0, 1))
            regions[k] = torch.from_numpy(cpu).to(device)
            continue
        regions[k] = background[:, None, None]
        for i, r0, r1, c0, c1, y0, y1, x0, x1 in copies:
            regions[k, :, y0:y1, x0:x1] = decoded[i][:, r0:r1, c0:c1]
    if out_px is not None and out_px != size:
        regions = resize_bilinear(regions, out_px)
    return regions


def resize_bilinear(images: Any, out_px: int) -> Any:
    """Resize (N, 3, H, W) uint8 images to ``out_px`` square, antialiased as PIL's BILINEAR
    (within a grey level of it, see the tests)."""
    import torch

    scaled = torch.nn.functional.interpolate(
        images.float(), size=(out_px, out_px), mode="bilinear", antialias=True, align_corners=False
    )
    return scaled.round_().clamp_(0, 255).to(torch.uint8)
