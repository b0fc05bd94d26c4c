"""CTransPath (timm Swin-T with a convolutional stem) and CLAM's truncated ResNet-50.

Parameter names follow the published files: CTransPath's stem is ``patch_embed.proj``
(conv, BN, ReLU, conv, BN, ReLU, 1x1 conv) + ``patch_embed.norm``, as in TransPath's
``ctran.py``; the truncated ResNet keeps torchvision's names (``conv1``, ``bn1``,
``layer1``..``layer3``). Imports torch: the builder imports this module only when needed.
"""

from __future__ import annotations

import torch
from torch import nn

from histoatlas.errors import ModelError


class ConvStem(nn.Module):
    """TransPath's convolutional patch embedding, for timm's (NHWC) Swin.

    Two stride-2 3x3 conv + BN + ReLU stages (``embed_dim / 8``, then ``/ 4`` channels)
    and a 1x1 conv to ``embed_dim``: a 4x4 patch grid like Swin's linear patchify.
    Accepts the keyword arguments timm's ``SwinTransformer`` passes to ``embed_layer``.
    """

    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer=None,
        output_fmt: str = "NHWC",
        **_unused,
    ):
        super().__init__()
        size = img_size if isinstance(img_size, tuple | list) else (img_size, img_size)
        patch = patch_size if isinstance(patch_size, tuple | list) else (patch_size,) * 2
        if tuple(patch) != (4, 4) or embed_dim % 8:
            raise ModelError(
                f"ctranspath stem needs patch_size 4 and embed_dim divisible by 8, got "
                f"patch_size {patch_size}, embed_dim {embed_dim}"
            )
        if output_fmt != "NHWC":
            raise ModelError(f"ctranspath stem gives NHWC output, not {output_fmt!r}")
        self.img_size, self.patch_size = tuple(size), (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` to ``(B, H / 4, W / 4, embed_dim)``."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def ctranspath(*, img_size: int = 224, **kwargs) -> nn.Module:
    """CTransPath: timm's ``swin_tiny_patch4_window7_224`` with :class:`ConvStem`, headless.

    Its output is the mean of the final (normed) 7 x 7 tokens, 768-d, as TransPath's
    timm 0.5.4 Swin with ``head = Identity`` gives.
    """
    import timm

    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        embed_layer=ConvStem,
        img_size=img_size,
        num_classes=0,
        **kwargs,
    )


class ResNetTrunc(nn.Module):
    """ResNet-50 up to ``layer3``, global average pooled: CLAM's 1,024-d ``resnet50_trunc``."""

    def __init__(self):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``layer3`` map ``(B, 1024, H / 16, W / 16)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``(B, 1024)`` embedding."""
        return self.pool(self.forward_features(x)).flatten(1)


def resnet50_trunc() -> ResNetTrunc:
    """CLAM's truncated ResNet-50 (load torchvision's ImageNet weights into it)."""
    return ResNetTrunc()
