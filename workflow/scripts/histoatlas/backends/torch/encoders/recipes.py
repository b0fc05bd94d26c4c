"""Embedding recipes for token outputs, and the ``"<layer>:<recipe>"`` layer selector.

A ViT layer gives tokens ``(B, T, D)``: first its prefix tokens (the class token, then
any register tokens; timm's ``num_prefix_tokens`` counts them), then one token per
patch. The recipes:

``cls``
    the class token, ``t[:, 0]``;
``patch_mean``
    the mean of the patch tokens, ``t[:, num_prefix_tokens:].mean(1)``;
``cls+patch_mean``
    both, concatenated (Virchow's 2,560-d embedding);
``avg`` / ``max``
    pooling: over patch tokens for ``(B, T, D)`` (prefix tokens skipped, as timm's
    ``global_pool='avg'`` does), over H, W for ``(B, C, H, W)`` maps.

All are pure functions of tensors, so feature hooks can call them.
"""

from __future__ import annotations

from typing import NamedTuple

from histoatlas.backends.params import EMBEDDINGS
from histoatlas.errors import ConfigError

TOKEN_RECIPES = tuple(e for e in EMBEDDINGS if e != "output")  # cls, patch_mean, cls+patch_mean
POOLINGS = ("avg", "max")
RECIPES = TOKEN_RECIPES + POOLINGS
_ALIASES = {"cls_patch_mean": "cls+patch_mean", "token": "cls"}


class LayerSelector(NamedTuple):
    """A parsed ``"<layer>:<recipe>"``: the layer name and the recipe (None: default)."""

    layer: str
    recipe: str | None


def parse_layer_selector(text: str) -> LayerSelector:
    """Split ``"blocks.11:cls"`` into the layer and the recipe.

    Module names never contain ``:``, so the text after the last ``:`` is the recipe.

    Raises
    ------
    ConfigError
        If the layer is empty or the recipe is not one of :data:`RECIPES`.

    Examples
    --------
    >>> parse_layer_selector("blocks.11:cls")
    LayerSelector(layer='blocks.11', recipe='cls')
    >>> parse_layer_selector("postconv")
    LayerSelector(layer='postconv', recipe=None)
    """
    layer, sep, recipe = text.rpartition(":")
    if not sep:
        return LayerSelector(text, None)
    if not layer:
        raise ConfigError(f"layer selector {text!r} names no layer; write '<layer>:<recipe>'")
    return LayerSelector(layer, check_recipe(recipe, where=f"layer selector {text!r}"))


def check_recipe(recipe: str, *, where: str = "recipe") -> str:
    """Return ``recipe`` in lower case (``cls_patch_mean`` means ``cls+patch_mean``); else raise."""
    name = recipe.strip().lower()
    name = _ALIASES.get(name, name)
    if name in RECIPES:
        return name
    raise ConfigError(f"{where}: unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")


def embed(t, recipe: str, *, num_prefix_tokens: int | None = None):
    """Apply a recipe to a layer's output.

    Parameters
    ----------
    t : torch.Tensor
        Tokens ``(B, T, D)``, a map ``(B, C, H, W)`` (pooling recipes only) or an
        already pooled ``(B, D)`` (returned as is by ``avg``/``max``).
    recipe : str
        One of :data:`RECIPES`.
    num_prefix_tokens : int
        Class + register tokens at the start of T. Needed for every recipe on tokens:
        guessing it wrong silently mixes register tokens into the patch mean.

    Returns
    -------
    torch.Tensor, shape (B, D) or (B, 2 * D) for ``cls+patch_mean``

    Raises
    ------
    ConfigError
        For an unknown recipe, a token recipe on a tensor that is not ``(B, T, D)``, or
        tokens without ``num_prefix_tokens``.

    Examples
    --------
    >>> import torch
    >>> t = torch.tensor([[[9.0], [100.0], [1.0], [3.0]]])  # CLS, 1 register, 2 patches
    >>> embed(t, "cls+patch_mean", num_prefix_tokens=2).tolist()
    [[9.0, 2.0]]
    """
    recipe = check_recipe(recipe)
    if t.ndim == 4 and recipe in POOLINGS:
        return t.mean(dim=(2, 3)) if recipe == "avg" else t.amax(dim=(2, 3))
    if t.ndim == 2 and recipe in POOLINGS:
        return t
    if t.ndim != 3:
        raise ConfigError(
            f"recipe {recipe!r} needs tokens (B, T, D), got a tensor of shape "
            f"{tuple(t.shape)}; use 'avg' or 'max' for (B, C, H, W) maps"
        )
    if num_prefix_tokens is None or not 0 <= num_prefix_tokens < t.shape[1]:
        raise ConfigError(
            f"recipe {recipe!r} on tokens of shape {tuple(t.shape)} needs num_prefix_tokens "
            f"(class + register tokens) between 0 and {t.shape[1] - 1}, got {num_prefix_tokens}"
        )
    if recipe == "cls":
        if num_prefix_tokens == 0:
            raise ConfigError("recipe 'cls' on a network without a class token; use 'avg'")
        return t[:, 0]
    patches = t[:, num_prefix_tokens:]
    if recipe == "max":
        return patches.amax(dim=1)
    mean = patches.mean(dim=1)
    if recipe == "cls+patch_mean":
        import torch

        return torch.cat([t[:, 0], mean], dim=-1)
    return mean


def pool_tokens(t, pooling: str | None, *, num_prefix_tokens: int = 0):
    """``avg``/``max`` pooling to ``(B, n)``, skipping prefix tokens of ``(B, T, D)``.

    The drop-in for feature pooling: 4-D maps over H, W, tokens over the patch tokens,
    2-D unchanged, None flattens. Half-precision input is pooled in float32.
    """
    t = t.float()
    if pooling is None:
        return t.reshape(t.shape[0], -1)
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)} or None")
    if t.ndim == 3:
        return embed(t, pooling, num_prefix_tokens=num_prefix_tokens)
    return embed(t, pooling).reshape(t.shape[0], -1)


def find_num_prefix_tokens(module) -> int | None:
    """``num_prefix_tokens`` of the first submodule that declares it (timm ViTs), or None."""
    for sub in module.modules():
        n = getattr(sub, "num_prefix_tokens", None)
        if isinstance(n, int):
            return n
    return None
