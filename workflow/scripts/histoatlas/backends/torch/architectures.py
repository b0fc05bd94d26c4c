"""histoatlas's own network architectures (built in Python, loaded from a state dict)."""

from __future__ import annotations


def demo_cnn(num_classes: int = 2, width: int = 16):
    """Build the small CNN the demo trains on its synthetic slides.

    Four conv blocks (conv 3x3, ReLU, 2x2 max-pool), global average pooling and a
    linear classifier named ``fc``, so ``postconv`` is the pooled 4*width vector.

    Parameters
    ----------
    num_classes : int
        Outputs of the classifier.
    width : int
        Channels of the first block; blocks have width, 2*width, 4*width, 4*width.

    Returns
    -------
    torch.nn.Module
        Named children: ``block1`` .. ``block4``, ``pool``, ``flatten``, ``fc``.
    """
    from torch import nn

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2),
        )

    widths = [3, width, 2 * width, 4 * width, 4 * width]
    layers = {f"block{i + 1}": block(widths[i], widths[i + 1]) for i in range(4)}
    return nn.Sequential(
        _ordered(
            **layers,
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(widths[-1], num_classes),
        )
    )


def _ordered(**modules):
    from collections import OrderedDict

    return OrderedDict(modules)


# name in params.json -> builder; torchvision and timm names are resolved in models.torch_model
ARCHITECTURES = {"demo_cnn": demo_cnn}
