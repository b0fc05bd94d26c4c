"""SmoothGrad for every saliency method: the average map over noisy copies of the input."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from histoatlas.errors import ConfigError

# SmoothGrad: PAIR's defaults, except signed averaging (magnitude=False) so the map keeps
# its sign as every other map here does; "seed" makes the noise reproducible (None: not)
SMOOTH_DEFAULTS = {"stdev_spread": 0.15, "nsamples": 25, "magnitude": False, "seed": 0}


def smooth_options(smooth: bool | Mapping[str, Any]) -> dict[str, Any]:
    """SmoothGrad options: :data:`SMOOTH_DEFAULTS` updated by ``smooth`` when it is a dict.

    Raises
    ------
    ConfigError
        A key that SmoothGrad does not take.
    """
    opts = dict(SMOOTH_DEFAULTS)
    if isinstance(smooth, Mapping):
        unknown = sorted(set(smooth) - set(SMOOTH_DEFAULTS))
        if unknown:
            raise ConfigError(
                f"smooth option(s) {unknown} unknown; SmoothGrad takes {sorted(SMOOTH_DEFAULTS)}"
            )
        opts.update(smooth)
    return opts


def smoothed_mask(
    method: Any,
    x_value: np.ndarray,
    call_model_function: Callable,
    call_model_args: Any = None,
    *,
    stdev_spread: float = 0.15,
    nsamples: int = 25,
    magnitude: bool = False,
    seed: int | None = 0,
    **kwargs: Any,
) -> np.ndarray:
    """SmoothGrad: ``saliency.core``'s ``GetSmoothedMask``, for masks of any shape.

    The same average as ``method.GetSmoothedMask``, with the noise it would draw after
    ``np.random.seed(seed)``, but from a private ``RandomState`` (NumPy's global RNG is
    left alone), and summed from the first mask rather than ``zeros_like(x_value)``, so
    that it also works for Grad-CAM and XRAI, whose masks are not shaped like the input.

    Parameters
    ----------
    method : saliency.core.CoreSaliency
    x_value : ndarray
        Input.
    call_model_function, call_model_args
        As ``GetMask`` takes them.
    stdev_spread : float
        Noise standard deviation, as a fraction of ``max(x) - min(x)``.
    nsamples : int
        Noisy copies averaged.
    magnitude : bool
        Average squared masks (unsigned) instead of the masks.
    seed : int or None
        Seeds the noise; None draws fresh noise on every call.
    **kwargs
        Passed to ``method.GetMask``.

    Returns
    -------
    ndarray, dtype float32
    """
    if int(nsamples) < 1:
        raise ConfigError(f"smooth nsamples must be >= 1, got {nsamples}")
    # RandomState, not Generator: its stream is the one GetSmoothedMask draws from
    rng = np.random.RandomState(seed)
    stdev = stdev_spread * (np.max(x_value) - np.min(x_value))
    total = None
    for _ in range(int(nsamples)):
        noise = rng.normal(0, stdev, x_value.shape)
        mask = np.asarray(
            method.GetMask(x_value + noise, call_model_function, call_model_args, **kwargs),
            dtype=np.float32,
        )
        if magnitude:
            mask = mask * mask
        total = mask if total is None else total + mask
    return total / np.float32(nsamples)
