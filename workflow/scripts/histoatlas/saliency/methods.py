"""The six saliency methods as one table: each is a ``saliency.core`` method, its options
with their defaults, and how those options become ``GetMask``'s keywords.

:class:`~histoatlas.saliency.SaliencyMap` runs any of them by name; adding a method is one
entry here. Options, by method (defaults as slideflow's):

- ``vanilla``: none; the gradient of the explained output with respect to the input.
- ``integrated_gradients``: ``x_steps`` (25 Riemann steps), ``batch_size`` (20 path points
  per forward pass), ``baseline`` (the path's start in preprocessed space; default zeros,
  i.e. the normalisation mean colour). The map sums to about ``f(img) - f(baseline)``.
- ``guided_integrated_gradients``: an adaptive path that avoids noisy regions; ``x_steps``
  (25, one forward pass each), ``max_dist`` (1.0: how far in [0, 1], relative L1, the path
  may leave the straight line), ``fraction`` (0.5 of the features moved per step),
  ``baseline``.
- ``blur_integrated_gradients``: a path of ever stronger Gaussian blur; ``max_sigma`` (50 px
  at the start), ``steps`` (100), ``grad_step`` (0.01), ``sqrt`` (False), ``batch_size``.
- ``xrai``: integrated gradients pooled over image segments, ranked by density; each pixel
  holds its segment's density. ``batch_size``, ``steps`` (100 per baseline), ``fast``
  (False: the full algorithm), ``area_threshold`` (1.0: the fraction ranked segment by
  segment), ``baselines`` (default XRAI's own black and white tiles).
- ``gradcam``: a layer's feature maps weighted by their mean gradient, then ReLU, at the
  layer's resolution, bilinearly upsampled to the tile (not normalised); ``layer`` (default
  the last convolutional feature map with h, w > 1, see the backend's ``resolve_layer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histoatlas.errors import ConfigError
from histoatlas.runtime import patch_guided_ig_quantile


@dataclass(frozen=True)
class Method:
    """One saliency method.

    Attributes
    ----------
    core : str
        The ``saliency.core`` class.
    options : dict
        The method's options and their defaults.
    keywords : callable
        ``(options, img) -> GetMask keywords``.
    """

    core: str
    options: dict = field(default_factory=dict)
    keywords: Callable[[dict, np.ndarray], dict] = lambda options, img: dict(options)


def _path(options: dict, img: np.ndarray) -> dict:
    """Integrated gradients' keywords: the options, the baseline made an array."""
    kwargs = {k: v for k, v in options.items() if k != "baseline"}
    return {"x_baseline": baseline_for(options["baseline"], img), **kwargs}


def _xrai(options: dict, img: np.ndarray) -> dict:
    import saliency.core as sc

    algorithm = "fast" if options["fast"] else "full"
    params = sc.XRAIParameters(
        steps=options["steps"], area_threshold=options["area_threshold"], algorithm=algorithm
    )
    return {
        "batch_size": options["batch_size"],
        "baselines": options["baselines"],
        "extra_parameters": params,
    }


METHOD_TABLE = {
    "vanilla": Method("GradientSaliency"),
    "integrated_gradients": Method(
        "IntegratedGradients", {"x_steps": 25, "batch_size": 20, "baseline": None}, _path
    ),
    "guided_integrated_gradients": Method(
        "GuidedIG", {"x_steps": 25, "max_dist": 1.0, "fraction": 0.5, "baseline": None}, _path
    ),
    "blur_integrated_gradients": Method(
        "BlurIG",
        {"max_sigma": 50, "steps": 100, "grad_step": 0.01, "sqrt": False, "batch_size": 20},
    ),
    "xrai": Method(
        "XRAI",
        {"batch_size": 20, "steps": 100, "fast": False, "area_threshold": 1.0, "baselines": None},
        _xrai,
    ),
    "gradcam": Method("GradCam", {"layer": None}),
}
METHODS = tuple(METHOD_TABLE)


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else ConfigError listing them."""
    if method not in METHOD_TABLE:
        raise ConfigError(f"unknown saliency method {method!r}; choose from {', '.join(METHODS)}")
    return method


def method_options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's options: its defaults updated by ``given``.

    Raises
    ------
    ConfigError
        An option the method does not take (the message lists those it does).
    """
    spec = METHOD_TABLE[check_method(method)]
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        accepted = ", ".join([*spec.options, "smooth"])
        raise ConfigError(
            f"saliency method {method!r} takes no option(s) {unknown}; its options: {accepted}"
        )
    return {**spec.options, **given}


def core_method(method: str):
    """A new ``saliency.core`` object of the method (Guided IG patched for NumPy 2.4)."""
    import saliency.core as sc

    if method == "guided_integrated_gradients":
        patch_guided_ig_quantile()
    return getattr(sc, METHOD_TABLE[method].core)()


def get_mask_keywords(method: str, options: dict, img: np.ndarray) -> dict:
    """``GetMask``'s keywords for the method's options (see :data:`METHOD_TABLE`)."""
    return METHOD_TABLE[method].keywords(options, img)


def check_image(img) -> np.ndarray:
    """One preprocessed tile ``(H, W, 3)`` as float32; ValueError for anything else."""
    img = np.asarray(img)
    if img.ndim != 3:
        raise ValueError(f"img must be one preprocessed tile (H, W, 3), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(
            f"img has dtype {img.dtype}; pass the preprocessed tile (float32), e.g. "
            "histoatlas.get_preprocess_fn(model_path)(tile)"
        )
    return img.astype(np.float32, copy=False)


def baseline_for(baseline: np.ndarray | float | None, img: np.ndarray) -> np.ndarray:
    """The start of an integration path: zeros, or ``baseline`` broadcast to ``img``."""
    if baseline is None:
        return np.zeros_like(img)
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), img.shape)
    return np.array(base)
