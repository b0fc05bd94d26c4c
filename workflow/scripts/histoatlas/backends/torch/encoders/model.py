"""The module :func:`build_encoder` returns: a backbone whose embedding has a name.

``EncoderModel.forward(x)`` returns the preset's embedding, and passes it through an
``nn.Identity`` called ``embedding`` that ``get_classifier()`` returns. So the input of
the "final classifier" -- histoatlas's ``postconv`` -- is the embedding, with no change
to the feature hooks, and a forward hook on ``embedding`` sees it too. Every layer of the
network stays reachable under ``backbone.`` (``backbone.blocks.11``). Imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

from histoatlas.backends.torch.encoders.recipes import embed, find_num_prefix_tokens


class EncoderModel(nn.Module):
    """A network and the recipe that turns its output into the embedding.

    Parameters
    ----------
    backbone : nn.Module
        The network as its authors build it (the weights file loads into it).
    recipe : str
        ``output``: ``backbone(x)`` is the embedding. A token recipe (``cls``,
        ``patch_mean``, ``cls+patch_mean``): applied to ``backbone.forward_features(x)``,
        skipping the ``num_prefix_tokens`` class/register tokens when averaging.
    name : str
        The preset or architecture, for ``repr``.

    Attributes
    ----------
    num_prefix_tokens : int or None
        Class + register tokens of the backbone's token outputs (None for CNNs).
    """

    def __init__(self, backbone: nn.Module, *, recipe: str = "output", name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.embedding = nn.Identity()
        self.recipe = recipe
        self.name = name
        self.num_prefix_tokens = find_num_prefix_tokens(backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding ``(B, dim)`` of preprocessed tiles ``(B, 3, H, W)``."""
        if self.recipe == "output":
            out = self.backbone(x)
        else:
            tokens = self.backbone.forward_features(x)
            out = embed(tokens, self.recipe, num_prefix_tokens=self.num_prefix_tokens)
        return self.embedding(out)

    def get_classifier(self) -> nn.Module:
        """The module whose input is ``postconv``: the ``embedding`` identity."""
        return self.embedding

    def extra_repr(self) -> str:
        return f"name={self.name!r}, recipe={self.recipe!r}"
