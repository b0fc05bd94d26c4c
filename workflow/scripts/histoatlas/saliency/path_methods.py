"""The path-integral saliency methods of :class:`~histoatlas.saliency.SaliencyMap`:
integrated gradients (straight, guided, blur) and XRAI, which pools them over segments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from histoatlas.runtime import patch_guided_ig_quantile


class PathMethods:
    """Mixed into :class:`~histoatlas.saliency.SaliencyMap` (uses its ``_run``)."""

    def integrated_gradients(
        self,
        img: np.ndarray,
        *,
        x_steps: int = 25,
        batch_size: int = 20,
        baseline: np.ndarray | float | None = None,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """Integrated gradients along the straight line from ``baseline`` to ``img``.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        x_steps : int
            Riemann steps along the path.
        batch_size : int
            Path points per forward pass.
        baseline : ndarray or float, optional
            Start of the path, in preprocessed space; default zeros, i.e. the
            normalisation mean colour (a flat grey tile for ImageNet statistics).
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
            Sums to about ``f(img) - f(baseline)`` for the explained output.
        """
        import saliency.core as sc

        img = check_image(img)
        return self._run(
            sc.IntegratedGradients(),
            img,
            smooth,
            x_baseline=baseline_for(baseline, img),
            x_steps=x_steps,
            batch_size=batch_size,
        )

    def guided_integrated_gradients(
        self,
        img: np.ndarray,
        *,
        x_steps: int = 25,
        max_dist: float = 1.0,
        fraction: float = 0.5,
        baseline: np.ndarray | float | None = None,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """Guided integrated gradients (an adaptive path that avoids noisy regions).

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        x_steps : int
            Steps along the path (one forward pass each).
        max_dist : float
            How far in [0, 1] (relative L1) the path may leave the straight line.
        fraction : float
            Fraction of features moved at each step.
        baseline : ndarray or float, optional
            Start of the path; default zeros (see :meth:`integrated_gradients`).
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
        """
        import saliency.core as sc

        patch_guided_ig_quantile()
        img = check_image(img)
        return self._run(
            sc.GuidedIG(),
            img,
            smooth,
            x_baseline=baseline_for(baseline, img),
            x_steps=x_steps,
            max_dist=max_dist,
            fraction=fraction,
        )

    def blur_integrated_gradients(
        self,
        img: np.ndarray,
        *,
        max_sigma: float = 50,
        steps: int = 100,
        grad_step: float = 0.01,
        sqrt: bool = False,
        batch_size: int = 20,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """Integrated gradients along a path of ever stronger Gaussian blur.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        max_sigma : float
            Blur (pixels) at the start of the path.
        steps, grad_step, sqrt
            Path resolution, as ``saliency.core.BlurIG``.
        batch_size : int
            Path points per forward pass.
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
        """
        import saliency.core as sc

        return self._run(
            sc.BlurIG(),
            img,
            smooth,
            max_sigma=max_sigma,
            steps=steps,
            grad_step=grad_step,
            sqrt=sqrt,
            batch_size=batch_size,
        )

    def xrai(
        self,
        img: np.ndarray,
        *,
        batch_size: int = 20,
        steps: int = 100,
        fast: bool = False,
        area_threshold: float = 1.0,
        baselines: Sequence[np.ndarray] | None = None,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """XRAI: integrated gradients pooled over image segments, ranked by density.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        batch_size : int
            Path points per forward pass.
        steps : int
            Integrated-gradients steps per baseline.
        fast : bool
            The approximate algorithm (segments ranked once, ignoring overlaps).
        area_threshold : float
            Fraction of the image ranked segment by segment (the rest is one segment).
        baselines : list of ndarray, optional
            IG baselines; default XRAI's own, a black and a white tile (the minimum and
            maximum of ``img``).
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
            Each pixel holds the attribution density of its segment.
        """
        import saliency.core as sc

        params = sc.XRAIParameters(
            steps=steps, area_threshold=area_threshold, algorithm="fast" if fast else "full"
        )
        return self._run(
            sc.XRAI(),
            img,
            smooth,
            batch_size=batch_size,
            baselines=baselines,
            extra_parameters=params,
        )


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
