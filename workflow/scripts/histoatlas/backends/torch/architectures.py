"""Network architectures by name: histoatlas's own, torchvision's and timm's.

A model directory's ``params.json`` names its ``architecture``; :func:`build_architecture`
builds it untrained (its state dict is loaded afterwards), with ``architecture_kwargs``
whose class names (``"mlp_layer": "swiglupacked"``) become classes. The encoders' own
modules (CONCH, CTransPath, the truncated ResNet) are built by
:mod:`histoatlas.backends.torch.encoders`.
"""

from __future__ import annotations

from collections.abc import Mapping

from histoatlas.backends.torch.classes import resolve_architecture_kwargs
from histoatlas.errors import ModelError


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


# name in params.json -> builder; torchvision and timm names are resolved by build_architecture
ARCHITECTURES = {"demo_cnn": demo_cnn}


def build_architecture(name: str, kwargs: Mapping | None = None):
    """Build an untrained network from its ``params.json`` architecture name.

    Parameters
    ----------
    name : str
        ``demo_cnn`` (histoatlas's own), ``torchvision:<name>``, ``timm:<name>``, or a
        bare name looked up in that order. Never downloads weights.
    kwargs : mapping, optional
        Passed to the builder (``num_classes``, timm's ``img_size``, ...); class names
        are resolved first (see :func:`resolve_architecture_kwargs`).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ModelError
        If no source knows the name, or the builder rejects ``kwargs``.
    """
    shown = dict(kwargs or {})
    kwargs = resolve_architecture_kwargs(shown)
    source, _, bare = name.rpartition(":")
    if source not in ("", "histoatlas", "torchvision", "timm"):
        raise ModelError(
            f"architecture {name!r}: unknown source {source!r}; use 'torchvision:<name>', "
            "'timm:<name>' or a histoatlas name"
        )
    if not source:
        source = _find_source(bare)
    try:
        return _build(source, name, bare, kwargs)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"cannot build architecture {name!r} with architecture_kwargs {shown}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _build(source: str, name: str, bare: str, kwargs: dict):
    if source == "histoatlas":
        if bare not in ARCHITECTURES:
            raise ModelError(
                f"architecture {name!r} is not a histoatlas architecture; "
                f"available: {', '.join(sorted(ARCHITECTURES))}"
            )
        return ARCHITECTURES[bare](**kwargs)
    if source == "torchvision":
        import torchvision

        if bare not in torchvision.models.list_models():
            raise ModelError(f"architecture {name!r}: torchvision has no model {bare!r}")
        return torchvision.models.get_model(bare, weights=None, **kwargs)
    import timm

    if not timm.is_model(bare):
        raise ModelError(f"architecture {name!r}: timm has no model {bare!r}")
    return timm.create_model(bare, pretrained=False, **kwargs)


def _find_source(name: str) -> str:
    if name in ARCHITECTURES:
        return "histoatlas"
    import torchvision

    if name in torchvision.models.list_models():
        return "torchvision"
    import timm

    if timm.is_model(name):
        return "timm"
    raise ModelError(
        f"architecture {name!r} is neither a histoatlas architecture "
        f"({', '.join(sorted(ARCHITECTURES))}), an encoder preset (python -m histoatlas "
        "presets lists them) nor a torchvision or timm model name"
    )
